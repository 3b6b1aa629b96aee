"""GPU settings on the lab's CPU-only hosts (after test_deploy: a deployed fleet).

A host declared `gpu_vendor = "nvidia"` has no NVIDIA driver here: its deploy must fail naming the driver
and the Debian packages, before changing anything on it. The same deploy with gpu_vendor auto is the
control: it does change the host, so the snapshot would have seen a change the failed run made.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from ollama_fleet.lab.state import LabState

pytestmark = pytest.mark.e2e

REPO = Path(__file__).resolve().parents[2]
PYINFRA = str(Path(sys.executable).parent / "pyinfra")
# A setting the deploy would write into Ollama's drop-in (and restart Ollama for).
CHANGED_ENV = json.dumps({"OLLAMA_KEEP_ALIVE": "7m"})
# Everything a deploy writes or starts: files with size, mtime and mode under the paths it manages, the
# deploy lock, ufw's rules, and the main PIDs of the services it restarts or reloads.
SNAPSHOT = (
    "find /etc /opt/ollama /usr/local /usr/share/ollama /run/ollama-fleet -xdev "
    "-printf '%p %s %T@ %m %l\\n' 2>/dev/null | sort; "
    "ufw status verbose; "
    "for unit in ollama nginx ollama-fleet-health.timer; do "
    "systemctl show $unit -p MainPID -p ActiveState -p ActiveEnterTimestampMonotonic; done"
)


def deploy(lab: LabState, host: str, *data: str) -> subprocess.CompletedProcess[str]:
    args = [arg for item in data for arg in ("--data", item)]
    return subprocess.run(
        [PYINFRA, "-y", "--limit", host, *args, lab.inventory_path, "deploys/ollama.py"],
        cwd=REPO,
        env={**os.environ, "PYINFRA_PROGRESS": "off"},
        capture_output=True,
        text=True,
        timeout=900,
        check=False,
    )


def snapshot(lab: LabState, host: str) -> str:
    return subprocess.run(
        lab.ssh_command(host, SNAPSHOT), capture_output=True, text=True, timeout=120, check=True
    ).stdout


def changed_lines(before: str, after: str) -> list[str]:
    old, new = set(before.splitlines()), set(after.splitlines())
    return sorted({f"- {line}" for line in old - new} | {f"+ {line}" for line in new - old})


@pytest.fixture(scope="module")
def host(lab: LabState) -> str:
    return lab.hosts[-1].name


def test_a_host_declared_nvidia_without_a_driver_fails_unchanged(lab: LabState, host: str) -> None:
    before = snapshot(lab, host)
    run = deploy(lab, host, 'gpu_vendor="nvidia"', f"ollama_env={CHANGED_ENV}")
    after = snapshot(lab, host)
    assert run.returncode != 0, run.stdout[-3000:]
    output = run.stdout + run.stderr
    assert "gpu_vendor is 'nvidia' but the NVIDIA kernel driver (module nvidia) is not loaded" in output
    assert "apt install linux-headers-amd64 nvidia-kernel-dkms firmware-nvidia-gsp libcuda1" in output
    assert changed_lines(before, after) == []


def test_the_same_deploy_under_auto_changes_the_host_then_goes_back(lab: LabState, host: str) -> None:
    """The control: without gpu_vendor nvidia the deploy does change what the snapshot covers."""
    before = snapshot(lab, host)
    run = deploy(lab, host, f"ollama_env={CHANGED_ENV}")
    assert run.returncode == 0, (run.stdout + run.stderr)[-3000:]
    changed = changed_lines(before, snapshot(lab, host))
    assert any("/etc/systemd/system/ollama.service.d/override.conf" in line for line in changed), changed
    assert not any("gpu.conf" in line or "ollama-gpu-nodes" in line for line in changed), changed
    back = deploy(lab, host)
    assert back.returncode == 0, (back.stdout + back.stderr)[-3000:]
