"""`ollama-fleet doctor` on the lab: three faults injected (Ollama's port taken by another process and the
models directory owned by root on one host, the disk where models live nearly full on another: a 64 MB
tmpfs mounted on the models directory stands in for a small disk) are each named on the host that has them,
with a fix, and the healthy host gets nothing; a deploy repairs what it owns."""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator

import pytest
from verify_fleet import DeployedFleet, deploy_fleet

from ollama_fleet.lab.state import LabState

pytestmark = pytest.mark.e2e

MODELS = "/usr/share/ollama/.ollama/models"
SQUATTER = "doctor-test-squatter"


def doctor(fleet: DeployedFleet) -> tuple[int, dict[str, list[str]]]:
    done = fleet.run([sys.executable, "-m", "ollama_fleet.cli", "doctor", fleet.lab.inventory_path, "--json"])
    assert done.returncode in (0, 1), done.stderr
    report = json.loads(done.stdout)
    return done.returncode, {h["host"]: [f["what"] for f in h["findings"]] for h in report["hosts"]}


@pytest.fixture(scope="module")
def fleet(lab: LabState) -> DeployedFleet:
    return deploy_fleet(lab)


def test_a_healthy_fleet_has_nothing_to_report(fleet: DeployedFleet) -> None:
    code, findings = doctor(fleet)
    assert (code, findings) == (0, {host: [] for host in fleet.hosts})


@pytest.fixture
def faults(fleet: DeployedFleet) -> Iterator[None]:
    _, squatted, full = fleet.hosts
    fleet.ssh_ok(squatted, "systemctl stop ollama.service")
    fleet.ssh_ok(squatted, f"systemd-run --unit={SQUATTER} python3 -m http.server 11434 --bind 127.0.0.1")
    fleet.ssh_ok(squatted, f"chown root:root {MODELS}")
    fleet.ssh_ok(
        full,
        f"mount -t tmpfs -o size=64m,mode=755 tmpfs {MODELS} && chown ollama:ollama {MODELS} && "
        f"fallocate -l 63m {MODELS}/filler",
    )
    try:
        yield
    finally:
        fleet.ssh(squatted, f"systemctl stop {SQUATTER}")
        fleet.ssh(full, f"umount {MODELS}")
        repaired = fleet.deploy()
        assert repaired.returncode == 0, repaired.stderr[-3000:]


def test_each_fault_is_named_on_its_host_and_nothing_on_the_healthy_one(
    fleet: DeployedFleet, faults: None
) -> None:
    healthy, squatted, full = fleet.hosts
    code, findings = doctor(fleet)
    assert code == 1
    assert findings[healthy] == []
    assert any(
        "Ollama's port 11434 is taken by another process" in f and "python3" in f for f in findings[squatted]
    )
    assert any(f"{MODELS} is owned by root:root, not ollama:ollama" in f for f in findings[squatted])
    assert any("MB free" in f and MODELS in f for f in findings[full]), findings[full]
    assert not any("MB free" in f for f in findings[squatted])
    assert not any("taken" in f or "owned" in f for f in findings[full])
