"""Installing from a release page as real fleets do: the lab mirror publishes its build the way Ollama's page
does (`v<version>/ollama-linux-amd64.tar.zst` from 0.14, `.tgz` before, overlays, `sha256sum.txt`), and the
lab's settings differ from the defaults only in `ollama_release_url`.

Releases used: the lab's 0.24.0; 0.24.1 (the same source relabelled, also test_day2's upgrade) with a
stand-in `-rocm` overlay; 0.13.9 (relabelled) for a page of the `.tgz` days; 0.24.6, which no page has.
Every host is back on a plain 0.24.0 with nothing else installed when the module ends.
"""

from __future__ import annotations

import json
import re
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from verify_fleet import DeployedFleet, deploy_fleet

from ollama_fleet.lab import artifacts
from ollama_fleet.lab.plan import MIRROR_PORT
from ollama_fleet.lab.state import LabState
from ollama_fleet.localfiles import sha256_of

pytestmark = pytest.mark.e2e

BASE, UPGRADE, OLD, ABSENT = "0.24.0", "0.24.1", "0.13.9", "0.24.6"
MAIN, ROCM, TGZ = artifacts.ZST_NAME, "ollama-linux-amd64-rocm.tar.zst", artifacts.TGZ_NAME
STORE = "/var/lib/ollama-fleet/releases"
SEED_LOG = "/var/log/nginx/ollama-fleet-models.access.log"
BLOCK = f"OUTPUT -p tcp --dport {MIRROR_PORT} -j REJECT -m comment --comment ollama-fleet-test-no-page"


@pytest.fixture(scope="module")
def fleet(lab: LabState) -> Iterator[DeployedFleet]:
    deployed = deploy_fleet(lab)
    yield deployed
    artifacts.publish_release(artifacts.ensure_ollama_release(), BASE)  # the plain page again
    artifacts.publish_release(artifacts.ensure_relabelled_release(UPGRADE, base=BASE), UPGRADE)
    back = deployed.deploy()
    assert back.returncode == 0, back.stderr[-3000:]
    for host in deployed.hosts:
        deployed.ssh_ok(host, f"rm -rf /opt/ollama/{UPGRADE} /opt/ollama/{OLD} {STORE}")


@pytest.fixture(scope="module")
def upgrade() -> Path:
    return artifacts.ensure_relabelled_release(UPGRADE, base=BASE)


def marker(fleet: DeployedFleet, host: str, version: str) -> dict[str, str]:
    """archive name -> sha256, as the release directory records what it was unpacked from."""
    text = fleet.ssh_ok(host, f"cat /opt/ollama/{version}/.ollama-fleet-sha256")
    return {name: digest for digest, name in (line.split() for line in text.splitlines())}


def current(fleet: DeployedFleet, host: str) -> str:
    return fleet.ssh_ok(host, "readlink /opt/ollama/current").strip()


def api_version(fleet: DeployedFleet, host: str) -> str:
    reply = fleet.ssh_ok(host, "curl -fsS http://127.0.0.1:11434/api/version")
    version: str = json.loads(reply)["version"]
    return version


def main_pid(fleet: DeployedFleet, host: str) -> str:
    return fleet.ssh_ok(host, "systemctl show -p MainPID --value ollama.service").strip()


def mirror_log(lab: LabState) -> Path:
    return Path(lab.key_path).parent / "logs" / "mirror.log"


def test_the_lab_installs_the_tar_zst_from_its_page_with_only_the_url_set(fleet: DeployedFleet) -> None:
    page = artifacts.read_sums(artifacts.pages_dir() / f"v{BASE}")
    assert page == {MAIN: artifacts.read_sums(artifacts.ensure_ollama_release())[MAIN]}  # no .tgz on it
    inventory = Path(fleet.lab.inventory_path).read_text()
    assert "ollama_release_url" in inventory
    assert "ollama_source" not in inventory and "ollama_archive_format" not in inventory
    for host in fleet.hosts:
        assert marker(fleet, host, BASE) == page, host


def test_a_release_the_page_does_not_have_stops_before_any_host_changes(fleet: DeployedFleet) -> None:
    refused = fleet.deploy("--data", f"ollama_version={ABSENT}")
    assert refused.returncode != 0
    url = f"{fleet.lab.mirror_url}/ollama/v{ABSENT}/{MAIN}"
    assert "the Ollama release cannot be downloaded; nothing was changed on any host" in refused.stderr
    assert f"hosts {', '.join(fleet.hosts)}: {url} answers 404" in refused.stderr
    assert "Starting operation" not in refused.stdout + refused.stderr
    assert [current(fleet, host) for host in fleet.hosts] == [BASE] * len(fleet.hosts)


def test_when_only_the_host_finds_the_archive_missing_it_fails_naming_url_and_status(
    fleet: DeployedFleet,
) -> None:
    host = fleet.hosts[2]
    failed = fleet.deploy(
        "--limit", host, "--data", f"ollama_version={ABSENT}", "--data", "ollama_check_url=false"
    )
    assert failed.returncode != 0
    url = f"{fleet.lab.mirror_url}/ollama/v{ABSENT}/{MAIN}"
    assert f"ollama-fleet: downloading {url} failed: HTTP 404" in failed.stdout + failed.stderr
    assert current(fleet, host) == BASE
    assert api_version(fleet, host) == BASE


def test_an_older_release_installs_from_the_tgz_its_page_has(fleet: DeployedFleet) -> None:
    artifacts.ensure_relabelled_release(OLD, base=BASE)
    assert sorted(artifacts.read_sums(artifacts.pages_dir() / f"v{OLD}")) == [TGZ]
    host = fleet.hosts[2]
    old = fleet.deploy("--limit", host, "--data", f"ollama_version={OLD}")
    assert old.returncode == 0, old.stdout[-2000:] + old.stderr[-3000:]
    assert list(marker(fleet, host, OLD)) == [TGZ]
    assert api_version(fleet, host) == OLD
    back = fleet.deploy("--limit", host)
    assert back.returncode == 0, back.stderr[-3000:]
    assert current(fleet, host) == BASE
    fleet.ssh_ok(host, f"rm -rf /opt/ollama/{OLD}")


def test_an_overlay_added_to_the_serving_release_is_unpacked_into_it_and_ollama_restarts(
    fleet: DeployedFleet,
) -> None:
    artifacts.publish_release(artifacts.ensure_ollama_release(), BASE, overlays=("rocm",))
    host = fleet.hosts[1]
    before = main_pid(fleet, host)
    added = fleet.deploy("--limit", host, "--data", 'ollama_overlays=["rocm"]')
    assert added.returncode == 0, added.stdout[-2000:] + added.stderr[-3000:]
    assert list(marker(fleet, host, BASE)) == [MAIN, ROCM]
    assert "rocm overlay" in fleet.ssh_ok(host, f"cat /opt/ollama/{BASE}/lib/ollama/rocm/STAND-IN")
    assert fleet.ssh_ok(host, "ls -A /opt/ollama").split() == [BASE, "current"]  # no copy left aside
    assert main_pid(fleet, host) != before  # the release it serves was replaced under the same path
    assert api_version(fleet, host) == BASE
    again = fleet.deploy(
        "--json", "--limit", host, "--data", 'ollama_overlays=["rocm"]', "--data", "deploy_fast_rerun=false"
    )
    assert again.returncode == 0, again.stderr[-3000:]
    changed = [op["name"] for op in json.loads(again.stdout)["results"]["operations"] if op["success"]]
    assert changed == [], changed


def test_an_upgrade_brings_the_overlay_and_a_rollback_restores_both(
    fleet: DeployedFleet, upgrade: Path
) -> None:
    artifacts.publish_release(upgrade, UPGRADE, overlays=("rocm",))
    host = fleet.hosts[1]
    up = fleet.deploy(
        "--limit", host, "--data", f"ollama_version={UPGRADE}", "--data", 'ollama_overlays=["rocm"]'
    )
    assert up.returncode == 0, up.stdout[-2000:] + up.stderr[-3000:]
    assert list(marker(fleet, host, UPGRADE)) == [MAIN, ROCM]
    assert api_version(fleet, host) == UPGRADE
    argv = [sys.executable, "-m", "ollama_fleet.cli", "rollback", fleet.lab.inventory_path, "--hosts", host]
    back = fleet.run(argv)
    assert back.returncode == 0, back.stderr[-3000:]
    assert current(fleet, host) == BASE
    assert list(marker(fleet, host, BASE)) == [MAIN, ROCM]
    fleet.ssh_ok(host, f"test -f /opt/ollama/{BASE}/lib/ollama/rocm/STAND-IN")
    assert api_version(fleet, host) == BASE


def test_a_corrupt_overlay_is_refused_by_name_and_digest_and_nothing_switches(
    fleet: DeployedFleet, upgrade: Path
) -> None:
    host = fleet.hosts[1]
    fleet.ssh_ok(host, f"rm -rf /opt/ollama/{UPGRADE}")  # as if it never had it
    page = artifacts.publish_release(upgrade, UPGRADE, overlays=("rocm",), corrupt=(ROCM,))
    actual = sha256_of(page / ROCM)
    refused = fleet.deploy(
        "--limit", host, "--data", f"ollama_version={UPGRADE}", "--data", 'ollama_overlays=["rocm"]'
    )
    assert refused.returncode != 0
    output = refused.stdout + refused.stderr
    assert f"checksum mismatch for {ROCM}: expected {'0' * 64} (sha256sum.txt), got {actual}" in output
    assert current(fleet, host) == BASE
    assert fleet.ssh_ok(host, "ls -A /opt/ollama").split() == [BASE, "current"]
    assert fleet.ssh_ok(host, "ls -A /var/lib/ollama-fleet/staging").strip() == ""
    assert api_version(fleet, host) == BASE
    # Back to the plain release, as the settings say by default.
    artifacts.publish_release(artifacts.ensure_ollama_release(), BASE)
    plain = fleet.deploy("--limit", host)
    assert plain.returncode == 0, plain.stderr[-3000:]
    assert list(marker(fleet, host, BASE)) == [MAIN]


@pytest.fixture
def seeded(fleet: DeployedFleet, upgrade: Path) -> Iterator[list[str]]:
    """0.24.1 on a plain page, on no host; the hosts but the seed cannot reach the mirror."""
    artifacts.publish_release(upgrade, UPGRADE)
    lab = fleet.lab
    for host in fleet.hosts:
        fleet.ssh_ok(host, f"rm -rf /opt/ollama/{UPGRADE} {STORE}")
    for host in fleet.hosts[1:]:
        fleet.ssh_ok(host, f"iptables -I {BLOCK} -d {lab.plan.gateway_ip}")
    try:
        yield [
            "--data", f"models_seed_host={fleet.hosts[0]}",
            "--data", f"models_lan_subnets={json.dumps([lab.plan.hosts_subnet])}",
            "--data", f"ollama_version={UPGRADE}",
        ]  # fmt: skip
    finally:
        for host in fleet.hosts[1:]:
            fleet.ssh(host, f"iptables -D {BLOCK} -d {lab.plan.gateway_ip}")


def page_fetches(log: Path, start: int) -> list[str]:
    with log.open("rb") as read:
        read.seek(start)
        lines = read.read().decode(errors="replace").splitlines()
    return [line for line in lines if re.search(rf'"GET /ollama/v{UPGRADE}/', line)]


def test_the_seed_fetches_the_release_once_for_the_fleet(fleet: DeployedFleet, seeded: list[str]) -> None:
    seed, others = fleet.hosts[0], fleet.hosts[1:]
    for host in others:
        probe = fleet.ssh(
            host, f"curl -sS --max-time 5 {fleet.lab.mirror_url}/ollama/v{UPGRADE}/sha256sum.txt"
        )
        assert probe.returncode == 7, (host, probe.stderr)  # no route to the page
    log = mirror_log(fleet.lab)
    start = log.stat().st_size
    done = fleet.deploy(*seeded)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    fetched = page_fetches(log, start)
    archive_fetches = [line for line in fetched if f"/{MAIN} " in line]
    assert len(archive_fetches) == 1, fetched
    assert all(line.startswith(f"{fleet.address(seed)} ") for line in fetched), fetched
    assert re.search(rf"{re.escape(MAIN)}: \d+ MB in \d+ s", done.stdout + done.stderr)  # progress shown
    served = fleet.ssh_ok(seed, f"cat {SEED_LOG}").splitlines()
    for host in others:
        mine = [line for line in served if line.startswith(f"{fleet.address(host)} ")]
        assert any(
            f"GET /ollama-fleet/releases/v{UPGRADE}/{MAIN} " in line and '" 200 ' in line for line in mine
        ), (
            host,
            mine,
        )
    for host in fleet.hosts:
        assert api_version(fleet, host) == UPGRADE, host
    # A second deploy moves no archive: neither the page nor the seed is asked for one.
    seed_lines, start = len(served), log.stat().st_size
    again = fleet.deploy(*seeded)
    assert again.returncode == 0, again.stderr[-3000:]
    assert [line for line in page_fetches(log, start) if f"/{MAIN} " in line] == []
    new = fleet.ssh_ok(seed, f"cat {SEED_LOG}").splitlines()[seed_lines:]
    assert not [line for line in new if "/ollama-fleet/releases/" in line], new
