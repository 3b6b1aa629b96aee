"""GPU hosts: detection from recorded /sys, /proc and /dev trees, the setup each gets, the settings that
would hide a GPU, and the verdicts on where Ollama serves from.

The trees under gpu_trees/ are small copies of what those hosts show (device nodes as empty files, a
driver as the symlink sysfs has, nvidia-smi as a script printing its recorded output); the real detection
script runs over them with GPU_ROOT pointing at one.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

from ollama_fleet import gpu, render
from ollama_fleet.settings import FleetSettings, SettingsError, settings_for_host

pytestmark = pytest.mark.unit

TREES = Path(__file__).parent / "gpu_trees"


def detected(tree: str) -> gpu.GpuReport:
    """The detection fact's processing of the script's output on a recorded tree."""
    result = subprocess.run(
        ["sh", "-c", gpu.DETECT_SCRIPT],
        env={"GPU_ROOT": str(TREES / tree), "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        check=True,
    )
    return gpu.parse_report(result.stdout.splitlines())


def settings(tmp_path: Path, **data: Any) -> FleetSettings:
    base = {
        "firewall_client_subnets": ["10.0.0.0/24"],
        "firewall_admin_subnets": ["10.0.9.0/24"],
        "auth_enabled": False,
    }
    return settings_for_host("gpu1", {**base, **data}, environ={})


# --- detection ------------------------------------------------------------------------------------------


def test_nvidia_535_old_device_naming() -> None:
    report = detected("nvidia-535")
    [card] = report["gpus"]
    assert card["pci"] == "0000:01:00.0" and card["vendor"] == "nvidia" and card["driver"] == "nvidia"
    assert card["name"] == "NVIDIA GeForce RTX 3090" and card["vram_total_mib"] == 24576
    assert report["nvidia_version"] == "535.183.01"
    assert "nvidia-frontend" in report["chardevs"] and "nvidiactl" not in report["chardevs"]
    assert report["libcuda"] == "/usr/lib/x86_64-linux-gnu/libcuda.so.1" and report["nvidia_modprobe"]
    assert "/dev/nvidia-uvm" not in report["nodes"]  # uvm is loaded on demand: the sandbox's problem
    assert gpu.serving_vendors("auto", report) == ["nvidia"]
    assert gpu.driver_problems("nvidia", report, "amd64") == []


def test_nvidia_550_new_device_naming_with_two_gpus() -> None:
    report = detected("nvidia-550-two-gpus")
    assert [g["pci"] for g in report["gpus"]] == ["0000:01:00.0", "0000:41:00.0"]
    assert [g["vram_used_mib"] for g in report["gpus"]] == [412, 2]
    assert report["nvidia_version"] == "550.163.01"  # the open module's version line
    assert {"nvidia", "nvidiactl", "nvidia-uvm"} <= set(report["chardevs"])
    assert "nvidia-frontend" not in report["chardevs"]
    setup = gpu.gpu_setup("auto", report, "amd64")
    assert setup["nvidia_cards"] == [0, 1] and setup["overlays"] == []
    assert gpu.nodes_unit_commands(setup) == [
        "/usr/bin/nvidia-modprobe -u -c0",
        "/usr/bin/nvidia-modprobe -u -c1",
        "/usr/bin/nvidia-modprobe -c0",
        "/usr/bin/nvidia-modprobe -c1",
    ]


def test_amd_with_its_vram_and_kfd() -> None:
    report = detected("amd")
    [card] = report["gpus"]  # its HDMI audio function (class 0x0403) is no GPU
    assert card["vendor"] == "amd" and card["driver"] == "amdgpu"
    assert card["vram_total_mib"] == 16368 and card["vram_used_mib"] == 30
    assert "/dev/kfd" in report["nodes"] and "kfd" in report["chardevs"]
    assert gpu.serving_vendors("auto", report) == ["amd"]
    assert gpu.driver_problems("amd", report, "amd64") == []
    assert gpu.gpu_setup("auto", report, "amd64")["overlays"] == ["rocm"]


def test_intel_and_none_are_cpu_hosts() -> None:
    intel, none = detected("intel"), detected("none")
    assert [g["vendor"] for g in intel["gpus"]] == ["intel"]
    assert none["gpus"] == []  # a VM's virtio GPU (1af4) and the host bridge are not GPUs
    for report in (intel, none):
        setup = gpu.gpu_setup("auto", report, "amd64")
        assert setup["vendors"] == [] and setup["overlays"] == [] and setup["groups"] == []
        assert gpu.driver_problems("auto", report, "amd64") == []
        assert gpu.unused_gpu_warnings("auto", report) == []


def test_jetson_gets_its_jetpack_bundle_and_no_uvm_unit() -> None:
    report = detected("jetson")
    assert gpu.overlays_needed(report["gpus"], "arm64") == ["jetpack6"]
    assert gpu.driver_problems("nvidia", report, "arm64") == []
    setup = gpu.gpu_setup("auto", report, "arm64")
    assert setup["vendors"] == ["nvidia"] and gpu.nodes_unit_commands(setup) == []


def test_overlays_follow_the_gpus_and_the_architecture() -> None:
    amd = detected("amd")["gpus"]
    assert gpu.overlays_needed(amd, "amd64") == ["rocm"]
    assert gpu.overlays_needed(amd, "arm64") == []  # there is no arm64 ROCm bundle
    assert gpu.overlays_needed(detected("nvidia-535")["gpus"], "amd64") == []  # CUDA is in the main one
    assert gpu.overlays_needed([*amd, *detected("nvidia-535")["gpus"]], "amd64") == ["rocm"]
    # gpu_vendor decides which of the host's GPUs count: none gets no overlay on an AMD host
    assert gpu.gpu_setup("none", detected("amd"), "amd64")["overlays"] == []
    assert gpu.gpu_setup("nvidia", detected("amd"), "amd64")["overlays"] == []


def test_declared_nvidia_without_its_driver_names_the_driver_and_the_packages() -> None:
    report = detected("nvidia-nouveau")
    [problem] = gpu.driver_problems("nvidia", report, "amd64")
    assert "the NVIDIA kernel driver (module nvidia) is not loaded" in problem
    assert "NVIDIA GPUs: 0000:01:00.0; its GPU is held by nouveau" in problem
    assert "apt install linux-headers-amd64 nvidia-kernel-dkms firmware-nvidia-gsp libcuda1" in problem
    assert "nvidia-modprobe" in problem and "reboot" in problem
    # under auto the host deploys as a CPU host, with a warning about the idle card
    assert gpu.serving_vendors("auto", report) == []
    [warning] = gpu.unused_gpu_warnings("auto", report)
    assert "NVIDIA GPU 0000:01:00.0 has no NVIDIA driver loaded" in warning


def test_declared_gpus_on_a_host_without_any() -> None:
    report = detected("none")
    [nvidia] = gpu.driver_problems("nvidia", report, "amd64")
    assert "NVIDIA GPUs: none on its PCI bus" in nvidia
    [amd] = gpu.driver_problems("amd", report, "amd64")
    assert "no AMD GPU is bound to the amdgpu driver" in amd and "firmware-amd-graphics" in amd
    [arm] = gpu.driver_problems("amd", detected("amd"), "arm64")
    assert "amd64 only" in arm


def test_an_nvidia_host_missing_user_space_parts_or_too_old() -> None:
    report = detected("nvidia-535")
    report["libcuda"], report["nvidia_modprobe"] = None, False
    report["nvidia_version"] = "470.256.02"
    problems = gpu.driver_problems("nvidia", report, "amd64")
    assert len(problems) == 3
    assert "470.256.02 is older than 531" in problems[0]
    assert "apt install libcuda1 libnvidia-ml1" in problems[1]
    assert "apt install nvidia-modprobe (contrib)" in problems[2]


# --- what is rendered for each case ---------------------------------------------------------------------


def test_cpu_hosts_get_no_gpu_files(tmp_path: Path) -> None:
    s = settings(tmp_path)
    for tree in ("none", "intel", "nvidia-nouveau"):
        setup = gpu.gpu_setup("auto", detected(tree), "amd64")
        assert render.render_gpu_dropin(s, setup) is None
        assert render.render_gpu_nodes_unit(s, setup) is None
        assert gpu.modules_load_text(setup) is None
    # gpu_vendor none: a GPU host set up as a CPU host
    assert render.render_gpu_dropin(s, gpu.gpu_setup("none", detected("nvidia-535"), "amd64")) is None


def test_nvidia_host_orders_ollama_after_the_uvm_unit_and_module_loading(tmp_path: Path) -> None:
    s = settings(tmp_path)
    setup = gpu.gpu_setup("auto", detected("nvidia-535"), "amd64")
    dropin = render.render_gpu_dropin(s, setup)
    assert dropin is not None
    lines = dropin.splitlines()
    assert "After=systemd-modules-load.service" in lines
    assert "Wants=ollama-gpu-nodes.service" in lines and "After=ollama-gpu-nodes.service" in lines
    assert "SupplementaryGroups=render video" in lines
    assert "0000:01:00.0 NVIDIA GeForce RTX 3090" in dropin
    unit = render.render_gpu_nodes_unit(s, setup)
    assert unit is not None
    unit_lines = unit.splitlines()
    assert "Before=ollama.service" in unit_lines and "Type=oneshot" in unit_lines
    assert "ExecStart=/usr/bin/nvidia-modprobe -u -c0" in unit_lines
    assert "ExecStart=/usr/bin/nvidia-modprobe -c0" in unit_lines
    assert gpu.modules_load_text(setup) == (
        "# Managed by ollama-fleet: NVIDIA modules for Ollama, loaded at boot.\nnvidia\nnvidia-uvm\n"
    )


def test_amd_host_gets_the_groups_and_no_nvidia_unit(tmp_path: Path) -> None:
    s = settings(tmp_path)
    setup = gpu.gpu_setup("auto", detected("amd"), "amd64")
    dropin = render.render_gpu_dropin(s, setup)
    assert dropin is not None
    assert "SupplementaryGroups=render video" in dropin.splitlines()
    assert "ollama-gpu-nodes" not in dropin
    assert render.render_gpu_nodes_unit(s, setup) is None and gpu.modules_load_text(setup) is None


def test_only_existing_groups_are_named(tmp_path: Path) -> None:
    """SupplementaryGroups= with a group the host lacks stops the unit from starting (status 216/GROUP)."""
    report = detected("amd")
    report["groups"] = ["video"]
    dropin = render.render_gpu_dropin(settings(tmp_path), gpu.gpu_setup("auto", report, "amd64"))
    assert dropin is not None and "SupplementaryGroups=video" in dropin.splitlines()


def _systemd_analyze() -> str:
    found = shutil.which("systemd-analyze")
    if found is None:
        pytest.fail("systemd-analyze is missing: apt install systemd")
    return found


def test_systemd_accepts_the_gpu_units(tmp_path: Path) -> None:
    """systemd-analyze verify loads the service with its GPU drop-in and the uvm unit it wants."""
    s = settings(tmp_path)
    setup = gpu.gpu_setup("auto", detected("nvidia-550-two-gpus"), "amd64")
    units = tmp_path / "units"
    (units / "ollama.service.d").mkdir(parents=True)
    service = render.render_unit(s).replace(f"ExecStart={render.OLLAMA_BIN}", "ExecStart=/bin/true")
    (units / "ollama.service").write_text(service)
    (units / "ollama.service.d" / "gpu.conf").write_text(render.render_gpu_dropin(s, setup) or "")
    nodes = render.render_gpu_nodes_unit(s, setup) or ""
    (units / gpu.NODES_SERVICE).write_text(nodes.replace(gpu.NVIDIA_MODPROBE, "/bin/true"))
    for unit in ("ollama.service", gpu.NODES_SERVICE):
        result = subprocess.run(
            [_systemd_analyze(), "verify", "--man=no", str(units / unit)],
            capture_output=True,
            text=True,
            env={"SYSTEMD_UNIT_PATH": f"{units}:", "PATH": "/usr/bin:/bin"},
        )
        assert result.returncode == 0, result.stderr
        assert unit not in result.stderr, result.stderr


# --- settings that would hide the GPU -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("env", "fix"),
    [
        ({"OLLAMA_LLM_LIBRARY": "cuda"}, "for NVIDIA on Debian's 535/550 drivers write cuda_v12"),
        ({"OLLAMA_LLM_LIBRARY": "cpu_avx2"}, "to force the CPU set CUDA_VISIBLE_DEVICES=-1"),
        ({"CUDA_VISIBLE_DEVICES": "0, 1"}, "without spaces or empty entries"),
        ({"CUDA_VISIBLE_DEVICES": "gpu0"}, "UUIDs from `nvidia-smi -L`"),
        ({"CUDA_VISIBLE_DEVICES": "0,GPU-8f6a4b2c-1d2e-3f40-5a6b-7c8d9e0f1a2b"}, "mixes indexes and UUIDs"),
        ({"HIP_VISIBLE_DEVICES": "GPU-0123456789abcdef"}, "use ROCR_VISIBLE_DEVICES for those"),
        ({"ROCR_VISIBLE_DEVICES": "GPU-xyz"}, "UUIDs like GPU-0123456789abcdef"),
        ({"HSA_OVERRIDE_GFX_VERSION": "gfx1030"}, "for gfx1030 write 10.3.0"),
        ({"HSA_OVERRIDE_GFX_VERSION": "gfx90a"}, "for gfx90a write 9.0.10"),
        ({"OLLAMA_SCHED_SPREAD": "yes"}, "use 1/true or 0/false"),
        ({"OLLAMA_GPU_OVERHEAD": "1GiB"}, "write e.g. 1073741824 for 1 GiB"),
        ({"OLLAMA_FLASH_ATTENTION": "on"}, "use 1/true or 0/false"),
        ({"OLLAMA_KV_CACHE_TYPE": "q8_0"}, "add OLLAMA_FLASH_ATTENTION=1 to ollama_env"),
        ({"OLLAMA_KV_CACHE_TYPE": "q4_0", "OLLAMA_FLASH_ATTENTION": "0"}, "add OLLAMA_FLASH_ATTENTION=1"),
        ({"OLLAMA_KV_CACHE_TYPE": "q4"}, "is not one of f16, q8_0, q4_0"),
    ],
)
def test_gpu_environment_traps_are_refused(tmp_path: Path, env: dict[str, str], fix: str) -> None:
    with pytest.raises(SettingsError) as caught:
        settings(tmp_path, ollama_env=env)
    message = str(caught.value)
    assert "invalid settings for host 'gpu1'" in message
    assert "ollama_env: " in message and fix in message


@pytest.mark.parametrize(
    ("data", "fix"),
    [
        ({"gpu_vendor": "nvidia", "ollama_env": {"CUDA_VISIBLE_DEVICES": "-1"}}, "hides every nvidia GPU"),
        ({"gpu_vendor": "amd", "ollama_env": {"HIP_VISIBLE_DEVICES": "-1"}}, "hides every amd GPU"),
        ({"gpu_vendor": "nvidia", "ollama_env": {"OLLAMA_LLM_LIBRARY": "rocm"}}, "another vendor's library"),
        ({"gpu_vendor": "amd", "ollama_env": {"OLLAMA_LLM_LIBRARY": "cuda_v12"}}, "another vendor's library"),
        ({"gpu_vendor": "cuda"}, "gpu_vendor: Input should be 'auto', 'nvidia', 'amd' or 'none'"),
    ],
)
def test_settings_that_contradict_gpu_vendor_are_refused(
    tmp_path: Path, data: dict[str, Any], fix: str
) -> None:
    with pytest.raises(SettingsError) as caught:
        settings(tmp_path, **data)
    assert "host 'gpu1'" in str(caught.value) and fix in str(caught.value)


@pytest.mark.parametrize(
    "env",
    [
        {"CUDA_VISIBLE_DEVICES": "0,1"},
        {"CUDA_VISIBLE_DEVICES": "GPU-8f6a4b2c-1d2e-3f40-5a6b-7c8d9e0f1a2b"},
        {"CUDA_VISIBLE_DEVICES": "-1"},  # CPU only, on purpose (gpu_vendor auto)
        {"ROCR_VISIBLE_DEVICES": "GPU-0123456789abcdef"},
        {"HIP_VISIBLE_DEVICES": "1"},
        {"HSA_OVERRIDE_GFX_VERSION": "10.3.0"},
        {"OLLAMA_LLM_LIBRARY": "cuda_v12"},
        {"OLLAMA_KV_CACHE_TYPE": "q8_0", "OLLAMA_FLASH_ATTENTION": "1"},
        {"OLLAMA_KV_CACHE_TYPE": "f16"},
        {"OLLAMA_GPU_OVERHEAD": "536870912", "OLLAMA_SCHED_SPREAD": "true"},
    ],
)
def test_good_gpu_environment_is_accepted(tmp_path: Path, env: dict[str, str]) -> None:
    assert settings(tmp_path, ollama_env=env).ollama.env == env


# --- is Ollama serving from the GPU? --------------------------------------------------------------------

# Recorded shapes of Ollama 0.24's start-up lines (discover/types.go) and /api/ps answers.
CUDA_LINE = (
    'time=2026-05-20T10:01:02.123Z level=INFO source=types.go:42 msg="inference compute" '
    'id=GPU-8f6a4b2c-1d2e-3f40-5a6b-7c8d9e0f1a2b filter_id="" library=CUDA compute=8.6 name=CUDA0 '
    'description="NVIDIA GeForce RTX 3090" libdirs=ollama,cuda_v12 driver=12.2 pci_id=0000:01:00.0 '
    'type=discrete total="24.0 GiB" available="23.5 GiB"'
)
CPU_LINE = (
    'time=2026-05-20T10:01:02.123Z level=INFO source=types.go:60 msg="inference compute" id=cpu '
    'library=cpu compute="" name=cpu description=cpu libdirs=ollama driver="" pci_id="" type="" '
    'total="62.7 GiB" available="58.9 GiB"'
)
GIB = 2**30


def ps(*models: tuple[str, int, int]) -> dict[str, Any]:
    return {"models": [{"name": n, "model": n, "size": size, "size_vram": vram} for n, size, vram in models]}


def test_full_offload_passes() -> None:
    verdict = gpu.gpu_verdict(ps(("llama3.2:3b", 3 * GIB, 3 * GIB)), [CUDA_LINE], "nvidia")
    assert verdict == {"ok": True, "summary": "100% GPU (CUDA): llama3.2:3b"}


def test_split_names_the_share_on_cpu_and_vram() -> None:
    verdict = gpu.gpu_verdict(ps(("qwen3:32b", 100 * GIB, 59 * GIB)), [CUDA_LINE], "nvidia")
    assert not verdict["ok"]
    assert verdict["summary"].startswith("qwen3:32b 41% on CPU: the model does not fit the free VRAM")


def test_cpu_with_a_gpu_library_names_uvm_and_the_sandbox() -> None:
    verdict = gpu.gpu_verdict(ps(("llama3.2:3b", 3 * GIB, 0)), [CUDA_LINE], "nvidia")
    assert not verdict["ok"]
    assert "llama3.2:3b 100% on CPU" in verdict["summary"]
    assert "nvidia_uvm" in verdict["summary"] and "sandbox" in verdict["summary"]


def test_cpu_at_start_is_named_from_the_log_line() -> None:
    verdict = gpu.gpu_verdict(ps(("llama3.2:3b", 3 * GIB, 0)), ["other line", CPU_LINE], "amd")
    assert not verdict["ok"]
    assert verdict["summary"].startswith("Ollama found no GPU at start (inference compute: library=cpu)")
    assert "/dev/kfd" in verdict["summary"]


def test_without_the_log_the_api_decides() -> None:
    """Through nginx verify sees /api/ps only: the log line is the health timer's (journal on the host)."""
    assert gpu.gpu_verdict(ps(("m", GIB, GIB)), None, "nvidia")["ok"]
    assert not gpu.gpu_verdict(ps(("m", GIB, 0)), None, "nvidia")["ok"]
    assert not gpu.gpu_verdict(ps(), None, "nvidia")["ok"]


def test_offload_reads_like_ollama_ps() -> None:
    assert gpu.offload(100, 100) == "100% GPU"
    assert gpu.offload(100, 0) == "100% CPU"
    assert gpu.offload(100, 59) == "41%/59% CPU/GPU"
