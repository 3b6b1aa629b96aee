"""Rolling a change out: `--serial --fail-percent 0` stops at the first host that fails.

The canary (first host) is made to fail the change (its nginx main config no longer passes `nginx -t`), then
a change of the nginx site is rolled out: the canary refuses it and keeps serving its old site, and the rest
of the fleet never receives it. Without `--fail-percent 0`, pyinfra's serial mode would carry on to them.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from verify_fleet import SITE, DeployedFleet, deploy_fleet, statuses

from ollama_fleet.lab.state import LabState

pytestmark = pytest.mark.e2e

NGINX_CONF = "/etc/nginx/nginx.conf"
CHANGE = "nginx_read_timeout=1200"


@pytest.fixture(scope="module")
def fleet(lab: LabState) -> DeployedFleet:
    return deploy_fleet(lab)


@pytest.fixture
def broken_canary(fleet: DeployedFleet) -> Iterator[str]:
    canary = fleet.hosts[0]
    break_it = f"cp {NGINX_CONF} /root/nginx.conf.good && echo 'no_such_directive on;' >> {NGINX_CONF}"
    fleet.ssh_ok(canary, break_it)
    try:
        yield canary
    finally:
        fleet.ssh_ok(canary, f"mv /root/nginx.conf.good {NGINX_CONF}")


def read_timeouts(fleet: DeployedFleet) -> dict[str, str]:
    return {host: fleet.ssh_ok(host, f"grep -h proxy_read_timeout {SITE}").strip() for host in fleet.hosts}


def test_rollout_stops_at_the_first_failing_host(fleet: DeployedFleet, broken_canary: str) -> None:
    before = read_timeouts(fleet)
    assert set(before.values()) == {"proxy_read_timeout 900s;"}

    done = fleet.deploy("--serial", "--fail-percent", "0", "--data", CHANGE)

    assert done.returncode != 0
    assert "nginx rejected the new site; the live configuration is unchanged" in done.stdout + done.stderr
    assert read_timeouts(fleet) == before  # the canary refused it; the others never got it
    code, report = fleet.verify()
    assert code == 0, report
    assert all(status == "pass" for checks in statuses(report).values() for status in checks.values())


def test_rollout_reaches_every_host_once_the_canary_is_healthy(fleet: DeployedFleet) -> None:
    done = fleet.deploy("--serial", "--fail-percent", "0", "--data", CHANGE)
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-4000:]
    assert set(read_timeouts(fleet).values()) == {"proxy_read_timeout 1200s;"}

    back = fleet.deploy("--serial", "--fail-percent", "0")
    assert back.returncode == 0, back.stdout[-4000:] + back.stderr[-4000:]
    assert set(read_timeouts(fleet).values()) == {"proxy_read_timeout 900s;"}
