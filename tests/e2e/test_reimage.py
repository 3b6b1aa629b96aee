"""A host re-imaged from Debian 12 to 13 under the same name: the next deploy takes it like a new host.

On the session's deployed fleet, seen through an inventory that pins SSH host keys as an operator's does
(a known_hosts file, accept-new: the lab's own inventory pins nothing), the Debian 12 host is re-installed
in place (`lab reimage`: same name and IP, a fresh Debian 13 root, so no state and a new SSH host key).
The same deploy command then refuses it, naming the host, both key fingerprints and the one command that
says it was re-imaged; after `ollama-fleet hosts forget`, the same command deploys it from bare while the
other hosts report no change, and it serves and verifies. The host's previous image is put back afterwards,
so the modules after this one find the session's fleet as it was.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from verify_fleet import PYINFRA, DeployedFleet, deploy_fleet, statuses

from ollama_fleet.lab import lifecycle
from ollama_fleet.lab.state import LabState
from ollama_fleet.verify.checks import CHECK_NAMES

pytestmark = pytest.mark.e2e

NEW_RELEASE = "trixie"


DeployRun = tuple[int, dict[str, Any], str]
"""A deploy's exit status, pyinfra's JSON results and its log."""

HEALTHY = dict.fromkeys(CHECK_NAMES, "pass") | {"gpu": "n/a"}
"""Every check passes (the lab's hosts have no GPU), as on the hosts that were never re-imaged."""


@dataclass(frozen=True)
class Reimaged:
    fleet: DeployedFleet
    inventory: Path
    """The lab's inventory with host keys pinned in `known_hosts`."""
    known_hosts: Path
    host: str
    others: list[str]

    def deploy(self) -> DeployRun:
        """The operator's one deploy command: exit status, pyinfra's JSON results, its log."""
        done = self.fleet.run([PYINFRA, "-y", "--json", str(self.inventory), "deploys/ollama.py"])
        results = json.loads(done.stdout)["results"] if done.stdout.strip() else {}
        return done.returncode, results, done.stderr


def pinned_inventory(lab: LabState, directory: Path) -> tuple[Path, Path]:
    """An inventory file of the lab's hosts whose SSH host keys are pinned in a known_hosts file."""
    known_hosts = directory / "known_hosts"
    inventory = directory / "pinned.py"
    pin = {"ssh_known_hosts_file": str(known_hosts), "ssh_strict_host_key_checking": "accept-new"}
    inventory.write_text(
        "import runpy\n"
        f"_lab = runpy.run_path({lab.inventory_path!r})\n"
        f"_pin = {pin!r}\n"
        "lab_canary = [(name, {**data, **_pin}) for name, data in _lab['lab_canary']]\n"
        "lab_rest = [(name, {**data, **_pin}) for name, data in _lab['lab_rest']]\n"
    )
    return inventory, known_hosts


def changed_by_host(results: dict[str, Any]) -> dict[str, int]:
    """Host -> how many operations changed it."""
    counts: dict[str, int] = {}
    for operation in results["operations"]:
        for name in operation["success"]:
            counts[name] = counts.get(name, 0) + 1
    return counts


@pytest.fixture(scope="module")
def reimaged(lab: LabState, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Reimaged]:
    fleet = deploy_fleet(lab)
    inventory, known_hosts = pinned_inventory(lab, tmp_path_factory.mktemp("reimage"))
    # The Debian 12 host of the mixed session lab (the last host when the lab runs one release).
    old = next((h for h in lab.hosts if h.release == "bookworm"), lab.hosts[-1])
    others = [h.name for h in lab.hosts if h.name != old.name]
    case = Reimaged(fleet, inventory, known_hosts, old.name, others)
    status, results, log = case.deploy()  # the keys are pinned at first contact; nothing else changes
    assert status == 0 and changed_by_host(results) == {}, log[-3000:]
    assert len(known_hosts.read_text().splitlines()) == len(lab.hosts)
    lifecycle.reimage(lab.slot, old.name, NEW_RELEASE, keep=True, log=False)
    try:
        yield case
    finally:
        lifecycle.restore(lab.slot, old.name)
        assert lab.host(old.name).release == old.release


@pytest.fixture(scope="module")
def refused(reimaged: Reimaged) -> DeployRun:
    return reimaged.deploy()


@pytest.fixture(scope="module")
def redeployed(reimaged: Reimaged, refused: DeployRun) -> DeployRun:
    forget = reimaged.fleet.run(
        [sys.executable, "-m", "ollama_fleet.cli", "hosts", "forget", str(reimaged.inventory), reimaged.host]
    )
    assert forget.returncode == 0, forget.stderr
    assert forget.stdout.startswith(f"{reimaged.host}: removed its old SSH host key"), forget.stdout
    return reimaged.deploy()


def test_the_host_is_bare_debian_13_with_a_new_ssh_host_key(reimaged: Reimaged) -> None:
    host = reimaged.host
    assert reimaged.fleet.ssh_ok(host, ". /etc/os-release; echo $VERSION_ID").strip() == "13"
    assert "bare" in reimaged.fleet.ssh_ok(host, "test -e /opt/ollama && echo deployed || echo bare")


def test_the_changed_key_is_refused_naming_the_host_and_the_fix(
    reimaged: Reimaged, refused: DeployRun
) -> None:
    status, results, log = refused
    assert status != 0
    assert results["failed_hosts"] == [reimaged.host]
    messages = [line.strip() for line in log.splitlines() if "its SSH host key changed" in line]
    assert len(messages) == 1, log[-3000:]  # once, however many hosts run the deploy file
    message = messages[0]
    assert message.startswith(f"{reimaged.host}: its SSH host key changed: {reimaged.known_hosts} pins ")
    assert f"`ollama-fleet hosts forget {reimaged.inventory} {reimaged.host}`" in message
    assert changed_by_host(results) == {}  # the others are deployed and unchanged
    assert "bare" in reimaged.fleet.ssh_ok(reimaged.host, "test -e /opt/ollama && echo deployed || echo bare")


def test_after_hosts_forget_the_same_deploy_takes_it_like_a_new_host(
    reimaged: Reimaged, redeployed: DeployRun
) -> None:
    status, results, log = redeployed
    assert status == 0, log[-4000:]
    assert results["failed_hosts"] == []
    changed = changed_by_host(results)
    assert set(changed) == {reimaged.host}, changed  # the others report no change
    assert changed[reimaged.host] > 20  # a deploy from bare, not a repair


def test_the_reimaged_host_serves_and_verifies(reimaged: Reimaged, redeployed: DeployRun) -> None:
    fleet = reimaged.fleet
    done = fleet.run(
        [sys.executable, "-m", "ollama_fleet.cli", "verify", str(reimaged.inventory), "--json"], timeout=600
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert statuses(json.loads(done.stdout))[reimaged.host] == HEALTHY
    reply = fleet.chat(reimaged.host, fleet.model)
    assert reply.status_code == 200, reply.text
    assert reply.json()["choices"][0]["message"]["content"]
