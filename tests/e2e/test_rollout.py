"""Rolling a change out: the canary group first, then the rest with `--serial --fail-percent 0`.

The canary is made to fail the change (its nginx main config no longer passes `nginx -t`). Rolled out the
README's way (`ollama-fleet rollout`, the canary group first), the canary fails and the rollout halts, so
the rest, which it would have deployed next, never receive the change; rolled out to everyone with
`--serial --fail-percent 0`, pyinfra stops at the failing host (it takes hosts in no fixed order, so hosts it
reached before the canary may have the change, never all of them after it). The fleet keeps serving.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from pathlib import Path

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


OLD, NEW = "proxy_read_timeout 900s;", "proxy_read_timeout 1200s;"


def assert_fleet_serves(fleet: DeployedFleet) -> None:
    code, report = fleet.verify()
    assert code == 0, report
    # Every check passes; gpu says n/a (gpu_vendor auto on the lab's CPU hosts: nothing required).
    assert all(
        status == "pass" or (check, status) == ("gpu", "n/a")
        for checks in statuses(report).values()
        for check, status in checks.items()
    )


def test_a_failing_canary_stops_the_rollout(fleet: DeployedFleet, broken_canary: str, tmp_path: Path) -> None:
    assert set(read_timeouts(fleet).values()) == {OLD}
    change = tmp_path / "group_data"
    change.mkdir()
    (change / "all.py").write_text(f"{CHANGE}\n")

    # One rollout of every host: the canary alone first, then the rest in one batch, had it passed.
    done = fleet.run(
        [sys.executable, "-m", "ollama_fleet.cli", "rollout", fleet.lab.inventory_path,
         "--canary", "lab_canary", "--batch", "100%", "--group-data", str(change),
         "--state", str(tmp_path / "rollout.json"), "--json"],
        timeout=900,
    )  # fmt: skip

    assert done.returncode == 1, done.stdout[-3000:] + done.stderr[-4000:]
    assert "nginx rejected the new site; the live configuration is unchanged" in done.stderr
    report = json.loads(done.stdout)
    results = {h["host"]: h["result"] for h in report["hosts"]}
    assert results == {broken_canary: "failed", **{h: "untouched" for h in fleet.hosts if h != broken_canary}}
    assert report["halt_reason"].startswith(f"batch 1 failed on {broken_canary}"), report["halt_reason"]
    # The canary refused it, and the rollout, which would have deployed the rest next, stopped there.
    assert set(read_timeouts(fleet).values()) == {OLD}
    assert_fleet_serves(fleet)


def test_a_serial_rollout_stops_at_the_failing_host(fleet: DeployedFleet, broken_canary: str) -> None:
    done = fleet.deploy("--serial", "--fail-percent", "0", "--data", CHANGE)

    assert done.returncode != 0
    assert "Over 0% of hosts failed" in done.stdout + done.stderr
    # pyinfra raised at the canary's failure and ran nothing after it ("Over 0% of hosts failed").
    assert read_timeouts(fleet)[broken_canary] == OLD
    assert_fleet_serves(fleet)


def test_rollout_reaches_every_host_once_the_canary_is_healthy(fleet: DeployedFleet) -> None:
    canary = fleet.deploy("--limit", "lab_canary", "--data", CHANGE)
    assert canary.returncode == 0, canary.stdout[-4000:] + canary.stderr[-4000:]
    done = fleet.deploy("--serial", "--fail-percent", "0", "--data", CHANGE)
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-4000:]
    assert set(read_timeouts(fleet).values()) == {NEW}

    back = fleet.deploy("--serial", "--fail-percent", "0")
    assert back.returncode == 0, back.stdout[-4000:] + back.stderr[-4000:]
    assert set(read_timeouts(fleet).values()) == {OLD}
