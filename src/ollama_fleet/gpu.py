"""GPU hosts: what a host has (parsed from the detection fact's output), what it needs, and whether Ollama
serves from it. Pure functions only; the fact that runs the detection script is operations/gpu.py.

Ollama falls back to the CPU silently (it still answers, 10-50x slower), so every decision here ends in
either a working GPU setup or a message saying what is missing and which Debian package provides it.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from typing import Literal, TypedDict

Vendor = Literal["nvidia", "amd", "intel"]
VENDOR_IDS: dict[str, Vendor] = {"0x10de": "nvidia", "0x1002": "amd", "0x8086": "intel"}
VENDOR_NAMES = {"nvidia": "NVIDIA", "amd": "AMD", "intel": "Intel"}

NVIDIA_MIN_DRIVER = 531
"""Ollama 0.24's documented floor for its cuda_v12 libraries (docs/gpu.mdx); Debian 12 ships 535."""

NVIDIA_MODPROBE = "/usr/bin/nvidia-modprobe"
MODULES_LOAD_PATH = "/etc/modules-load.d/ollama-fleet-nvidia.conf"
NODES_SERVICE = "ollama-gpu-nodes.service"
NODES_UNIT_PATH = f"/etc/systemd/system/{NODES_SERVICE}"
GPU_DROPIN_PATH = "/etc/systemd/system/ollama.service.d/gpu.conf"

DETECT_SCRIPT = r"""
R="${GPU_ROOT:-}"
for d in "$R"/sys/bus/pci/devices/*; do
  [ -r "$d/class" ] || continue
  class=$(cat "$d/class")
  case "$class" in 0x03*|0x12*) ;; *) continue ;; esac
  driver=-
  if [ -L "$d/driver" ]; then driver=$(basename "$(readlink "$d/driver")"); fi
  echo "pci ${d##*/} $(cat "$d/vendor") $(cat "$d/device" 2>/dev/null || echo -) $class $driver"
  if [ -r "$d/mem_info_vram_total" ]; then echo "vram_total ${d##*/} $(cat "$d/mem_info_vram_total")"; fi
  if [ -r "$d/mem_info_vram_used" ]; then echo "vram_used ${d##*/} $(cat "$d/mem_info_vram_used")"; fi
done
v="$R/proc/driver/nvidia/version"
if [ -r "$v" ]; then echo "nvidia_version $(head -1 "$v")"; fi
for m in nvidia nvidia_uvm nvidia_drm amdgpu; do if [ -d "$R/sys/module/$m" ]; then echo "module $m"; fi; done
if [ -r "$R/proc/devices" ]; then
  sed -n '/^Character devices:/,/^$/p' "$R/proc/devices" |
    awk '$2 ~ /^(nvidia.*|kfd|drm)$/ {print "chardev " $2}'
fi
for n in "$R"/dev/nvidia* "$R"/dev/nvidia-caps/* "$R"/dev/kfd "$R"/dev/dri/renderD*; do
  if [ -e "$n" ]; then echo "node ${n#"$R"}"; fi
done
if [ -x "$R/usr/bin/nvidia-smi" ]; then
  "$R/usr/bin/nvidia-smi" --query-gpu=pci.bus_id,name,memory.total,memory.used \
    --format=csv,noheader,nounits 2>/dev/null | sed 's/^/smi /'
fi
if [ -x "$R/usr/bin/nvidia-modprobe" ]; then echo "tool nvidia-modprobe"; fi
for f in "$R"/usr/lib/*/libcuda.so.1 "$R"/usr/lib/*/tegra/libcuda.so.1 "$R"/usr/lib64/libcuda.so.1; do
  if [ -e "$f" ]; then echo "lib libcuda.so.1 ${f#"$R"}"; break; fi
done
if [ -r "$R/etc/group" ]; then
  awk -F: '$1 == "render" || $1 == "video" {print "group " $1}' "$R/etc/group"
fi
if [ -r "$R/etc/nv_tegra_release" ]; then echo "tegra $(head -1 "$R/etc/nv_tegra_release")"; fi
true
"""
"""Prints one line per finding; reads only /sys, /proc, /dev, /etc (and nvidia-smi when installed), so
it needs no lspci. GPU_ROOT points it at a recorded tree (the unit tier's fixtures)."""


class Gpu(TypedDict):
    pci: str  # PCI address (0000:01:00.0), or "tegra" for a Jetson's integrated GPU
    vendor: Vendor
    device: str  # PCI device id (0x2204)
    driver: str | None  # the kernel driver bound to it (nvidia, amdgpu, nouveau, i915), None when none is
    name: str | None
    vram_total_mib: int | None
    vram_used_mib: int | None
    jetpack: str | None  # "5" or "6" on a Jetson


class GpuReport(TypedDict):
    gpus: list[Gpu]
    nvidia_version: str | None  # the kernel module's version (535.183.01), from /proc/driver/nvidia/version
    modules: list[str]
    chardevs: list[str]  # /proc/devices character-device names of GPU drivers
    nodes: list[str]
    nvidia_modprobe: bool
    libcuda: str | None
    groups: list[str]  # render and video, where they exist


def empty_report() -> GpuReport:
    return {
        "gpus": [],
        "nvidia_version": None,
        "modules": [],
        "chardevs": [],
        "nodes": [],
        "nvidia_modprobe": False,
        "libcuda": None,
        "groups": [],
    }


_TEGRA_RELEASE = re.compile(r"#\s*R(\d+)")
_JETPACK = {"35": "5", "36": "6"}


def parse_report(lines: Iterable[str]) -> GpuReport:
    """The detection script's output as a GpuReport."""
    report = empty_report()
    by_pci: dict[str, Gpu] = {}
    smi: list[list[str]] = []
    for raw in lines:
        kind, _, rest = raw.strip().partition(" ")
        fields = rest.split()
        if kind == "pci" and len(fields) == 5:
            address, vendor_id, device, _class, driver = fields
            vendor = VENDOR_IDS.get(vendor_id.lower())
            if vendor is None:
                continue
            by_pci[address] = {
                "pci": address,
                "vendor": vendor,
                "device": device,
                "driver": None if driver == "-" else driver,
                "name": None,
                "vram_total_mib": None,
                "vram_used_mib": None,
                "jetpack": None,
            }
        elif kind in ("vram_total", "vram_used") and len(fields) == 2 and fields[1].isdigit():
            if fields[0] in by_pci:
                by_pci[fields[0]][f"{kind}_mib"] = int(fields[1]) // 2**20  # type: ignore[literal-required]
        elif kind == "nvidia_version":
            found = re.search(r"Kernel Module\s+(?:for \S+\s+)?(\d+(?:\.\d+)+)", rest)
            report["nvidia_version"] = found.group(1) if found else rest.strip()
        elif kind == "module":
            report["modules"].append(rest.strip())
        elif kind == "chardev":
            report["chardevs"].append(rest.strip())
        elif kind == "node":
            report["nodes"].append(rest.strip())
        elif kind == "smi":
            smi.append([part.strip() for part in rest.split(",")])
        elif kind == "tool" and rest.strip() == "nvidia-modprobe":
            report["nvidia_modprobe"] = True
        elif kind == "lib" and fields[:1] == ["libcuda.so.1"]:
            report["libcuda"] = fields[1] if len(fields) > 1 else ""
        elif kind == "group":
            report["groups"].append(rest.strip())
        elif kind == "tegra":
            release = _TEGRA_RELEASE.search(rest)
            jetpack = _JETPACK.get(release.group(1)) if release else None
            by_pci["tegra"] = {
                "pci": "tegra",
                "vendor": "nvidia",
                "device": "-",
                "driver": "nvgpu",
                "name": f"Jetson (L4T R{release.group(1) if release else '?'})",
                "vram_total_mib": None,
                "vram_used_mib": None,
                "jetpack": jetpack,
            }
    for row in smi:
        _add_smi_row(by_pci, row)
    report["gpus"] = list(by_pci.values())
    return report


def _add_smi_row(by_pci: dict[str, Gpu], row: list[str]) -> None:
    """nvidia-smi's `00000000:01:00.0, NVIDIA GeForce RTX 3090, 24576, 1` onto the sysfs entry."""
    if len(row) < 4:
        return
    bus = row[0].lower()
    for address, gpu in by_pci.items():
        if bus.endswith(address.lower()[-7:]) and gpu["vendor"] == "nvidia":
            gpu["name"] = row[1]
            gpu["vram_total_mib"] = int(row[2]) if row[2].isdigit() else None
            gpu["vram_used_mib"] = int(row[3]) if row[3].isdigit() else None


GpuSetting = Literal["auto", "nvidia", "amd", "none"]


def gpus_in_use(setting: GpuSetting, report: GpuReport) -> list[Gpu]:
    """The GPUs ollama-fleet sets the host up for: all NVIDIA and AMD ones under auto, those of the declared
    vendor, none under none. Intel GPUs are listed by detection only: Ollama 0.24 reaches them through its
    experimental Vulkan backend, which it leaves off."""
    wanted = {"auto": ("nvidia", "amd"), "nvidia": ("nvidia",), "amd": ("amd",), "none": ()}[setting]
    return [gpu for gpu in report["gpus"] if gpu["vendor"] in wanted]


def overlays_needed(gpus: Sequence[Gpu], arch: str) -> list[str]:
    """The release archives a host needs beside the main ollama-linux-<arch> one, by their suffix.

    The main archive carries the CPU backends and cuda_v12/cuda_v13; AMD needs `-rocm` (built for amd64
    only); a Jetson needs `-jetpack5` or `-jetpack6` for its L4T release. Each is unpacked into the same
    release directory (Ollama looks for its libraries next to the real path of its binary).
    """
    overlays = set()
    for gpu in gpus:
        if gpu["vendor"] == "amd" and arch == "amd64":
            overlays.add("rocm")
        elif gpu["vendor"] == "nvidia" and gpu["jetpack"] and arch == "arm64":
            overlays.add(f"jetpack{gpu['jetpack']}")
    return sorted(overlays)


def _debian_nvidia_packages(arch: str) -> str:
    return (
        f"linux-headers-{arch} nvidia-kernel-dkms firmware-nvidia-gsp libcuda1 libnvidia-ml1 nvidia-smi "
        "nvidia-modprobe"
    )


def driver_problems(setting: GpuSetting, report: GpuReport, arch: str) -> list[str]:
    """Why a host declared to have a GPU cannot serve from it (empty: it can, or it is not declared).

    Installing a kernel driver stays the operator's job: it needs non-free packages, DKMS and a reboot.
    """
    problems: list[str] = []
    if setting == "nvidia":
        problems += _nvidia_problems(report, arch)
    elif setting == "amd":
        problems += _amd_problems(report, arch)
    return problems


def _nvidia_problems(report: GpuReport, arch: str) -> list[str]:
    cards = [gpu for gpu in report["gpus"] if gpu["vendor"] == "nvidia"]
    jetson = any(gpu["jetpack"] for gpu in cards)
    if any(gpu["pci"] == "tegra" and not gpu["jetpack"] for gpu in cards):
        return ["gpu_vendor is 'nvidia' on a Jetson whose L4T release is neither R35 (JetPack 5) nor R36 "
                "(JetPack 6); Ollama ships no libraries for it: set gpu_vendor 'none'"]  # fmt: skip
    if jetson:
        return [] if report["libcuda"] else ["gpu_vendor is 'nvidia' but libcuda.so.1 is missing: install "
                                             "JetPack's nvidia-l4t-cuda"]  # fmt: skip
    install = (
        f"install Debian's NVIDIA driver (components contrib non-free non-free-firmware): apt install "
        f"{_debian_nvidia_packages(arch)}, then reboot; or set gpu_vendor 'auto' or 'none' for this host"
    )
    seen = ", ".join(gpu["pci"] for gpu in cards) or "none on its PCI bus"
    if report["nvidia_version"] is None:
        bound = sorted({gpu["driver"] for gpu in cards if gpu["driver"] and gpu["driver"] != "nvidia"})
        held = f"; its GPU is held by {', '.join(bound)}" if bound else ""
        return [
            f"gpu_vendor is 'nvidia' but the NVIDIA kernel driver (module nvidia) is not loaded: "
            f"/proc/driver/nvidia/version is missing (NVIDIA GPUs: {seen}{held}); {install}"
        ]
    major = report["nvidia_version"].split(".")[0]
    if major.isdigit() and int(major) < NVIDIA_MIN_DRIVER:
        problems = [
            f"gpu_vendor is 'nvidia' but driver {report['nvidia_version']} is older than "
            f"{NVIDIA_MIN_DRIVER}, the oldest Ollama's CUDA 12 libraries run on; install Debian 12's 535 or "
            f"newer ({install})"
        ]
    else:
        problems = []
    if report["libcuda"] is None:
        problems.append(
            "gpu_vendor is 'nvidia' but libcuda.so.1 (the CUDA user-space driver) is missing: "
            "apt install libcuda1 libnvidia-ml1 (non-free)"
        )
    if not report["nvidia_modprobe"]:
        problems.append(
            f"gpu_vendor is 'nvidia' but {NVIDIA_MODPROBE} is missing: the sandboxed Ollama cannot load "
            "nvidia_uvm itself, so a root unit does it with nvidia-modprobe before Ollama starts: "
            "apt install nvidia-modprobe (contrib)"
        )
    return problems


def _amd_problems(report: GpuReport, arch: str) -> list[str]:
    if arch != "amd64":
        return [
            "gpu_vendor is 'amd' but Ollama's ROCm bundle (ollama-linux-amd64-rocm) exists for amd64 only; "
            "set gpu_vendor 'none' on this arm64 host"
        ]
    cards = [gpu for gpu in report["gpus"] if gpu["vendor"] == "amd"]
    seen = ", ".join(gpu["pci"] for gpu in cards) or "none on its PCI bus"
    fix = (
        "install the firmware (apt install firmware-amd-graphics, component non-free-firmware; the amdgpu "
        "module comes with Debian's kernel) and reboot; or set gpu_vendor 'auto' or 'none' for this host"
    )
    if not any(gpu["driver"] == "amdgpu" for gpu in cards):
        return [f"gpu_vendor is 'amd' but no AMD GPU is bound to the amdgpu driver (AMD GPUs: {seen}); {fix}"]
    if "/dev/kfd" not in report["nodes"]:
        return [f"gpu_vendor is 'amd' but /dev/kfd (ROCm's compute device) is missing; {fix}"]
    return []


def unused_gpu_warnings(setting: GpuSetting, report: GpuReport) -> list[str]:
    """Under gpu_vendor auto: GPUs Ollama will not use because their driver is missing (a CPU host as far
    as the deploy goes, said once per deploy rather than discovered later as slowness)."""
    if setting != "auto":
        return []
    warnings = []
    for gpu in gpus_in_use(setting, report):
        vendor = gpu["vendor"]
        if vendor == "nvidia" and gpu["pci"] != "tegra" and report["nvidia_version"] is None:
            warnings.append(
                f"NVIDIA GPU {gpu['pci']} has no NVIDIA driver loaded, so Ollama will run on the CPU; "
                "set gpu_vendor 'nvidia' to be told what to install, or 'none' to silence this"
            )
        elif vendor == "amd" and gpu["driver"] != "amdgpu":
            warnings.append(
                f"AMD GPU {gpu['pci']} is not bound to amdgpu, so Ollama will run on the CPU; "
                "set gpu_vendor 'amd' to be told what to install, or 'none' to silence this"
            )
    return warnings


def serving_vendors(setting: GpuSetting, report: GpuReport) -> list[str]:
    """The vendors whose GPUs this host serves from (their driver is there): drives the sandbox's GPU
    drop-in, the uvm unit and the gpu checks. Empty: a CPU host."""
    vendors = []
    gpus = gpus_in_use(setting, report)
    if any(g["vendor"] == "nvidia" for g in gpus) and (
        report["nvidia_version"] is not None or any(g["jetpack"] for g in gpus)
    ):
        vendors.append("nvidia")
    if any(g["vendor"] == "amd" and g["driver"] == "amdgpu" for g in gpus):
        vendors.append("amd")
    return vendors


def nvidia_card_indexes(report: GpuReport) -> list[int]:
    """/dev/nvidiaN minor numbers for nvidia-modprobe -c: one per discrete NVIDIA GPU, in PCI order."""
    cards = [g for g in report["gpus"] if g["vendor"] == "nvidia" and g["pci"] != "tegra"]
    return list(range(len(cards)))


# --- is Ollama serving from the GPU? ------------------------------------------------------------------

_LOG_FIELD = re.compile(r'(\w+)=("(?:[^"\\]|\\.)*"|\S*)')
GPU_LIBRARIES = ("CUDA", "ROCm", "Vulkan", "Metal")


def compute_libraries(log_lines: Iterable[str]) -> list[str]:
    """The `library=` of each `msg="inference compute"` line Ollama logged at its last start (`cpu` when
    it found no GPU)."""
    libraries = []
    for line in log_lines:
        if 'msg="inference compute"' not in line:
            continue
        fields = {key: value.strip('"') for key, value in _LOG_FIELD.findall(line)}
        libraries.append(fields.get("library", "?"))
    return libraries


def offload(size: int, size_vram: int) -> str:
    """How `ollama ps` says it: 100% GPU, 100% CPU, or 41%/59% CPU/GPU."""
    if size <= 0 or size_vram >= size:
        return "100% GPU"
    if size_vram <= 0:
        return "100% CPU"
    cpu = round((size - size_vram) * 100 / size)
    return f"{cpu}%/{100 - cpu}% CPU/GPU"


def cpu_cause(vendor: str) -> str:
    """The usual reasons a GPU host serves from the CPU, by vendor."""
    if vendor == "amd":
        return (
            "likely the amdgpu driver or /dev/kfd (firmware-amd-graphics, reboot), a GPU ROCm 7 does not "
            "support (HSA_OVERRIDE_GFX_VERSION), the render group, or a missing -rocm bundle"
        )
    return (
        f"likely nvidia_uvm or /dev/nvidia-uvm missing (systemctl status {NODES_SERVICE}; after a resume "
        "restart ollama), the driver, or a device the sandbox hides"
    )


class Verdict(TypedDict):
    ok: bool
    summary: str


def gpu_verdict(ps: dict[str, object], log_lines: Sequence[str] | None, vendor: str) -> Verdict:
    """Whether a GPU host serves from its GPU: Ollama's inference-compute line names a GPU library (when the
    log is at hand), and every loaded model of /api/ps sits fully in VRAM (size_vram == size)."""
    libraries = compute_libraries(log_lines or [])
    if log_lines is not None and libraries and not any(lib in GPU_LIBRARIES for lib in libraries):
        return {
            "ok": False,
            "summary": f"Ollama found no GPU at start (inference compute: library={','.join(libraries)}); "
            + cpu_cause(vendor),
        }
    raw_models = ps.get("models")
    models = [m for m in raw_models if isinstance(m, dict)] if isinstance(raw_models, list) else []
    if not models:
        return {"ok": False, "summary": "no model is loaded, so /api/ps cannot show where models run"}
    split = []
    for model in models:
        size, vram = int(model.get("size") or 0), int(model.get("size_vram") or 0)
        if vram < size:
            split.append((str(model.get("name")), size, vram))
    if not split:
        names = ", ".join(str(m.get("name")) for m in models)
        library = f" ({','.join(sorted(set(libraries)))})" if libraries else ""
        return {"ok": True, "summary": f"100% GPU{library}: {names}"}
    parts = []
    for name, size, vram in split:
        cpu_pct = round((size - vram) * 100 / size)
        parts.append(f"{name} {cpu_pct}% on CPU")
    if any(vram > 0 for _, _, vram in split):
        cause = (
            "the model does not fit the free VRAM: a smaller model or quantisation, a lower "
            "OLLAMA_CONTEXT_LENGTH, fewer loaded models or OLLAMA_GPU_OVERHEAD lower"
        )
    else:
        cause = cpu_cause(vendor)
    return {"ok": False, "summary": f"{'; '.join(parts)}: {cause}"}


# --- what the deploy sets up on a GPU host ------------------------------------------------------------


class GpuSetup(TypedDict):
    vendors: list[str]  # whose GPUs Ollama serves from (serving_vendors); empty: a CPU host
    gpus: list[str]  # for the comments of the files: "0000:01:00.0 NVIDIA GeForce RTX 3090"
    nvidia_cards: list[int]  # /dev/nvidiaN the uvm unit creates (discrete NVIDIA only)
    groups: list[str]  # render/video, where they exist, for /dev/kfd and /dev/dri
    overlays: list[str]


def gpu_setup(setting: GpuSetting, report: GpuReport, arch: str) -> GpuSetup:
    vendors = serving_vendors(setting, report)
    used = [gpu for gpu in gpus_in_use(setting, report) if gpu["vendor"] in vendors]
    return {
        "vendors": vendors,
        "gpus": [f"{gpu['pci']} {gpu['name'] or VENDOR_NAMES[gpu['vendor']]}" for gpu in used],
        "nvidia_cards": nvidia_card_indexes(report) if "nvidia" in vendors else [],
        "groups": [group for group in ("render", "video") if group in report["groups"]] if vendors else [],
        "overlays": overlays_needed(gpus_in_use(setting, report), arch),
    }


def nodes_unit_commands(setup: GpuSetup) -> list[str]:
    """The uvm unit's ExecStart= lines: nvidia_uvm with /dev/nvidia-uvm and -uvm-tools (with -u, -c is
    the uvm minor), then /dev/nvidiactl and /dev/nvidiaN for each card."""
    if not setup["nvidia_cards"]:
        return []
    commands = [f"{NVIDIA_MODPROBE} -u -c0", f"{NVIDIA_MODPROBE} -u -c1"]
    return commands + [f"{NVIDIA_MODPROBE} -c{index}" for index in setup["nvidia_cards"]]


def modules_load_text(setup: GpuSetup) -> str | None:
    """modules-load.d for NVIDIA: Debian loads only nvidia-drm at boot; uvm is otherwise loaded on demand
    by the setuid nvidia-modprobe, which the sandbox stops."""
    if not setup["nvidia_cards"]:
        return None
    return "# Managed by ollama-fleet: NVIDIA modules for Ollama, loaded at boot.\nnvidia\nnvidia-uvm\n"
