"""scripts/gpu_probe.py on a machine without a GPU: the parts that need none (the sandbox properties it
applies, the readback check, its arguments, the probe's report when libcuda is missing). The probe itself
runs on an NVIDIA machine (docs/gpu.md)."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest

from ollama_fleet import gpu, render
from ollama_fleet.settings import settings_for_host

pytestmark = pytest.mark.unit

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "gpu_probe.py"
TREES = Path(__file__).parent / "gpu_trees"


@pytest.fixture(scope="module")
def probe() -> ModuleType:
    spec = importlib.util.spec_from_file_location("gpu_probe", SCRIPT)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def nvidia_setup() -> gpu.GpuSetup:
    output = subprocess.run(
        ["sh", "-c", gpu.DETECT_SCRIPT], env={"GPU_ROOT": str(TREES / "nvidia-535")},
        capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    return gpu.gpu_setup("auto", gpu.parse_report(output.splitlines()), "amd64")


def test_the_probe_runs_under_exactly_the_rendered_sandbox(probe: ModuleType, tmp_path: Path) -> None:
    s = settings_for_host("probe", {"firewall_enabled": False, "auth_enabled": False, "nginx_enabled": False})
    hardening = render.render_hardening(s)
    dropin = render.render_gpu_dropin(s, nvidia_setup()) or ""
    properties = probe.sandbox_properties([hardening, dropin], tmp_path)
    service_lines = [
        line for line in hardening.splitlines() if line and not line.startswith(("#", "[", "ReadWritePaths"))
    ]
    assert properties == [
        *service_lines[:1],
        f"ReadWritePaths={tmp_path}",
        *service_lines[1:],
        "SupplementaryGroups=render video",
    ]
    assert "NoNewPrivileges=yes" in properties and "CapabilityBoundingSet=" in properties
    assert not any(p.startswith(("After=", "Wants=")) for p in properties)  # the [Unit] lines stay out
    argv = probe.systemd_run_argv(properties, tmp_path / "gpu_probe.py", "nobody")
    assert argv[:6] == ["systemd-run", "--quiet", "--wait", "--pipe", "--collect", "--uid=nobody"]
    assert argv[-3:] == ["/usr/bin/python3", str(tmp_path / "gpu_probe.py"), "cuda"]
    assert argv.count("-p") == len(properties)


def test_the_readback_check_finds_a_wrong_element(probe: ModuleType) -> None:
    right = probe.expected_values(probe.ELEMENTS)
    assert right[:3] == [7, 10, 13] and probe.readback_problem(right) is None
    wrong = [*right[:5], 0, *right[6:]]
    assert probe.readback_problem(wrong) == "element 5 is 0, expected 22"


def test_the_ptx_declares_the_kernel_the_probe_launches(probe: ModuleType) -> None:
    assert f".visible .entry {probe.KERNEL.decode()}(" in probe.PTX
    assert ".target sm_50" in probe.PTX  # JIT-compiled by the driver for any newer GPU
    assert "mad.lo.s32 %r6, %r5, 3, 7;" in probe.PTX  # the 3 * i + 7 that expected_values checks


def test_the_cuda_probe_reports_where_it_stopped() -> None:
    """Here (no GPU, no libcuda) it stops at dlopen and says what to install; on a GPU machine it passes."""
    done = subprocess.run([sys.executable, str(SCRIPT), "cuda"], capture_output=True, text=True, timeout=120)
    report = json.loads(done.stdout)
    if report["ok"]:
        assert done.returncode == 0 and report["devices"] and report["step"] == "done"
        return
    assert done.returncode == 2 and report["error"]
    if report["step"] == "dlopen libcuda.so.1":
        assert "apt install libcuda1" in report["error"]


def test_run_refuses_without_root(probe: ModuleType, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(probe.os, "geteuid", lambda: 1000)
    with pytest.raises(SystemExit) as caught:
        probe.main(["run"])
    assert caught.value.code == 2
