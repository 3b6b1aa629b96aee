#!/usr/bin/env python3
"""Does CUDA work inside ollama-fleet's systemd sandbox? A check for a machine with an NVIDIA GPU.

    sudo .venv/bin/python scripts/gpu_probe.py run        # the whole check, one JSON report on stdout
    python3 scripts/gpu_probe.py cuda                     # only the CUDA probe, as the caller's user

`cuda` needs no CUDA toolkit: ctypes on the driver's libcuda.so.1 initialises CUDA, reads each device's
name and memory, makes a context, allocates device memory, loads a tiny PTX kernel with cuModuleLoadData
(the driver JIT-compiles it), launches it and reads its result back. It uses the standard library only, so
the sandboxed run needs nothing but /usr/bin/python3.

`run` (root, systemd as PID 1) reports the detection fact on the real /sys and /proc, renders the sandbox
exactly as a deploy would for this machine (hardening.conf plus the GPU drop-in), and runs `cuda` under
those properties with `systemd-run`: first without the uvm oneshot (nvidia_uvm unloaded when nothing uses
it), then after the oneshot's commands (nvidia-modprobe -u -c0 ...), so the report shows whether the
sandboxed Ollama would see the GPU with and without it.
"""

from __future__ import annotations

import argparse
import ctypes
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

# out[i] = 3 * i + 7 for i < n: one global store per thread, checked element by element on the host.
PTX = """
.version 6.0
.target sm_50
.address_size 64

.visible .entry fleet_probe(
    .param .u64 fleet_probe_out,
    .param .u32 fleet_probe_n
)
{
    .reg .pred %p<2>;
    .reg .b32 %r<8>;
    .reg .b64 %rd<5>;

    ld.param.u64 %rd1, [fleet_probe_out];
    ld.param.u32 %r1, [fleet_probe_n];
    mov.u32 %r2, %ctaid.x;
    mov.u32 %r3, %ntid.x;
    mov.u32 %r4, %tid.x;
    mad.lo.s32 %r5, %r2, %r3, %r4;
    setp.ge.u32 %p1, %r5, %r1;
    @%p1 bra DONE;
    cvta.to.global.u64 %rd2, %rd1;
    mul.wide.u32 %rd3, %r5, 4;
    add.s64 %rd4, %rd2, %rd3;
    mad.lo.s32 %r6, %r5, 3, 7;
    st.global.u32 [%rd4], %r6;
DONE:
    ret;
}
"""
KERNEL = b"fleet_probe"
ELEMENTS = 1024
THREADS = 256


def expected_values(n: int) -> list[int]:
    return [3 * i + 7 for i in range(n)]


def readback_problem(values: list[int]) -> str | None:
    """None when the kernel's output is right, else the first wrong element."""
    for index, (got, want) in enumerate(zip(values, expected_values(len(values)), strict=True)):
        if got != want:
            return f"element {index} is {got}, expected {want}"
    return None


class CudaError(Exception):
    pass


def _cuda_call(cuda: Any, name: str, *args: Any) -> None:
    status = getattr(cuda, name)(*args)
    if status != 0:
        text = ctypes.c_char_p()
        cuda.cuGetErrorName(status, ctypes.byref(text))
        raise CudaError(f"{name} failed: {status} {(text.value or b'?').decode()}")


def cuda_probe() -> dict[str, Any]:
    """The CUDA driver-API probe; never raises: the report says where it stopped."""
    report: dict[str, Any] = {"ok": False, "devices": [], "step": "dlopen libcuda.so.1"}
    try:
        cuda = ctypes.CDLL("libcuda.so.1")
    except OSError as exc:
        report["error"] = f"libcuda.so.1 not found ({exc}): apt install libcuda1 (non-free)"
        return report
    try:
        report["step"] = "cuInit"
        _cuda_call(cuda, "cuInit", 0)
        version = ctypes.c_int()
        _cuda_call(cuda, "cuDriverGetVersion", ctypes.byref(version))
        report["cuda_driver_api"] = f"{version.value // 1000}.{version.value % 1000 // 10}"
        count = ctypes.c_int()
        _cuda_call(cuda, "cuDeviceGetCount", ctypes.byref(count))
        for ordinal in range(count.value):
            device = ctypes.c_int()
            _cuda_call(cuda, "cuDeviceGet", ctypes.byref(device), ordinal)
            name = ctypes.create_string_buffer(256)
            _cuda_call(cuda, "cuDeviceGetName", name, 256, device)
            total = ctypes.c_size_t()
            _cuda_call(cuda, "cuDeviceTotalMem_v2", ctypes.byref(total), device)
            report["devices"].append({"name": name.value.decode(), "total_mib": total.value // 2**20})
        if not count.value:
            raise CudaError("cuDeviceGetCount found no device")
        report["step"] = "context on device 0"
        device = ctypes.c_int()
        _cuda_call(cuda, "cuDeviceGet", ctypes.byref(device), 0)
        context = ctypes.c_void_p()
        _cuda_call(cuda, "cuCtxCreate_v2", ctypes.byref(context), 0, device)
        free, total = ctypes.c_size_t(), ctypes.c_size_t()
        _cuda_call(cuda, "cuMemGetInfo_v2", ctypes.byref(free), ctypes.byref(total))
        report["free_mib"] = free.value // 2**20
        report["step"] = "allocation"
        pointer = ctypes.c_uint64()
        _cuda_call(cuda, "cuMemAlloc_v2", ctypes.byref(pointer), ctypes.c_size_t(ELEMENTS * 4))
        report["step"] = "cuModuleLoadData (PTX JIT)"
        module, function = ctypes.c_void_p(), ctypes.c_void_p()
        _cuda_call(cuda, "cuModuleLoadData", ctypes.byref(module), ctypes.c_char_p(PTX.encode()))
        _cuda_call(cuda, "cuModuleGetFunction", ctypes.byref(function), module, ctypes.c_char_p(KERNEL))
        report["step"] = "launch"
        out, n = ctypes.c_uint64(pointer.value), ctypes.c_uint32(ELEMENTS)
        params = (ctypes.c_void_p * 2)(ctypes.cast(ctypes.byref(out), ctypes.c_void_p),
                                       ctypes.cast(ctypes.byref(n), ctypes.c_void_p))  # fmt: skip
        blocks = (ELEMENTS + THREADS - 1) // THREADS
        _cuda_call(cuda, "cuLaunchKernel", function, blocks, 1, 1, THREADS, 1, 1, 0, None, params, None)
        _cuda_call(cuda, "cuCtxSynchronize")
        report["step"] = "read back"
        host = (ctypes.c_uint32 * ELEMENTS)()
        _cuda_call(cuda, "cuMemcpyDtoH_v2", host, pointer, ctypes.c_size_t(ELEMENTS * 4))
        problem = readback_problem(list(host))
        if problem:
            raise CudaError(f"the kernel's result is wrong: {problem}")
        _cuda_call(cuda, "cuMemFree_v2", pointer)
        _cuda_call(cuda, "cuModuleUnload", module)
        _cuda_call(cuda, "cuCtxDestroy_v2", context)
        report.update(ok=True, step="done", kernel=f"{ELEMENTS} elements read back right")
    except (CudaError, AttributeError) as exc:
        report["error"] = str(exc)
    return report


# --- the sandbox around it ------------------------------------------------------------------------------

# Not properties of a transient service (or meaningless for a probe): what the unit's [Unit] says.
SKIPPED = {"Wants", "After", "Before", "Requires"}


def sandbox_properties(dropins: list[str], writable: Path) -> list[str]:
    """`-p` arguments for systemd-run from the [Service] lines of rendered drop-ins; ReadWritePaths= goes
    to `writable` (Ollama's home need not exist on the probe machine, and a missing path fails the unit)."""
    properties = []
    for text in dropins:
        section = ""
        for raw in text.splitlines():
            line = raw.strip()
            if not line or line.startswith("#"):
                continue
            if line.startswith("["):
                section = line
                continue
            key, _, value = line.partition("=")
            if section != "[Service]" or key in SKIPPED:
                continue
            if key == "ReadWritePaths":
                value = str(writable)
            properties.append(f"{key}={value}")
    return properties


def systemd_run_argv(properties: list[str], script: Path, user: str) -> list[str]:
    argv = ["systemd-run", "--quiet", "--wait", "--pipe", "--collect", f"--uid={user}"]
    for prop in properties:
        argv += ["-p", prop]
    return [*argv, "/usr/bin/python3", str(script), "cuda"]


def _sh(command: str) -> str:
    return subprocess.run(["sh", "-c", command], capture_output=True, text=True, check=False).stdout.strip()


def machine_facts() -> dict[str, Any]:
    return {
        "pid1": Path("/proc/1/comm").read_text().strip(),
        "kernel": os.uname().release,
        "nvidia_driver": _sh("head -1 /proc/driver/nvidia/version 2>/dev/null"),
        "nvidia_modprobe": shutil.which("nvidia-modprobe"),
        "libcuda": _sh("ldconfig -p | grep -m1 'libcuda.so.1 '"),
        "modules": _sh("grep -oE '^nvidia[a-z_]*' /proc/modules | sort | tr '\\n' ' '"),
        "uvm_node": Path("/dev/nvidia-uvm").exists(),
    }


def sandboxed_probe(properties: list[str], script: Path, user: str) -> dict[str, Any]:
    done = subprocess.run(
        systemd_run_argv(properties, script, user), capture_output=True, text=True, timeout=300, check=False
    )
    try:
        result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    except (IndexError, ValueError):
        result = {"ok": False, "error": f"systemd-run exited {done.returncode}: {done.stderr.strip()[-400:]}"}
    return result


def run(user: str) -> dict[str, Any]:
    """The whole check on this machine (root, systemd as PID 1)."""
    from ollama_fleet import gpu, render
    from ollama_fleet.settings import settings_for_host

    facts = machine_facts()
    detection = _sh(gpu.DETECT_SCRIPT)
    report = gpu.parse_report(detection.splitlines())
    arch = "arm64" if os.uname().machine == "aarch64" else "amd64"
    setup = gpu.gpu_setup("auto", report, arch)
    s = settings_for_host("probe", {"firewall_enabled": False, "auth_enabled": False, "nginx_enabled": False})
    dropins = [render.render_hardening(s), render.render_gpu_dropin(s, setup) or ""]
    problems = gpu.driver_problems("nvidia", report, arch)
    out: dict[str, Any] = {"machine": facts, "detection": report, "setup": setup, "problems": problems}
    if facts["pid1"] != "systemd":
        out["skipped"] = f"PID 1 is {facts['pid1']}, not systemd: systemd-run cannot apply the sandbox"
        out["unsandboxed"] = cuda_probe()
        return out
    with tempfile.TemporaryDirectory(dir="/run", prefix="ollama-fleet-gpu-probe-") as work:
        workdir = Path(work)
        workdir.chmod(0o755)
        script = workdir / "gpu_probe.py"
        shutil.copy(__file__, script)
        script.chmod(0o644)
        properties = sandbox_properties(dropins, workdir)
        out["properties"] = properties
        # Without the oneshot: nvidia_uvm as a fresh boot leaves it (unloaded unless something holds it).
        out["uvm_unload"] = _sh("modprobe -r nvidia_uvm 2>&1 && echo unloaded || echo 'in use: kept'")
        out["without_oneshot"] = {"uvm_node": Path("/dev/nvidia-uvm").exists()}
        out["without_oneshot"].update(sandboxed_probe(properties, script, user))
        out["oneshot"] = [
            f"{command}: rc={subprocess.run(command.split(), check=False).returncode}"
            for command in gpu.nodes_unit_commands(setup)
        ]
        out["with_oneshot"] = {"uvm_node": Path("/dev/nvidia-uvm").exists()}
        out["with_oneshot"].update(sandboxed_probe(properties, script, user))
    out["unsandboxed"] = cuda_probe()
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("cuda", help="only the CUDA driver-API probe, as the calling user")
    whole = sub.add_parser(
        "run", help="detection, then the probe in the rendered sandbox with and without uvm"
    )
    whole.add_argument("--user", default="nobody", help="the sandboxed probe's user (default %(default)s)")
    args = parser.parse_args(argv)
    if args.command == "cuda":
        result = cuda_probe()
        print(json.dumps(result))
        return 0 if result["ok"] else 2
    if os.geteuid() != 0:
        parser.error("run needs root (systemd-run, modprobe, nvidia-modprobe)")
    whole_report = run(args.user)
    print(json.dumps(whole_report, indent=1))
    ok = all(whole_report.get(key, {}).get("ok", True) for key in ("with_oneshot", "unsandboxed"))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
