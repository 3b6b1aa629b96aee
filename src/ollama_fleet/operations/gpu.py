"""The host's GPUs as a fact (read from /sys, /proc and /dev, no lspci), and the check that a host declared
to have a GPU can use it, run before anything changes on the host."""

from __future__ import annotations

from collections.abc import Generator

from pyinfra.api.facts import FactBase
from pyinfra.api.operation import operation

from ollama_fleet.gpu import DETECT_SCRIPT, GpuReport, empty_report, parse_report
from ollama_fleet.operations.shell import fail_command


class GpuDetection(FactBase[GpuReport]):
    """GPUs on the PCI bus (NVIDIA 10de, AMD 1002, Intel 8086) with their kernel driver, the NVIDIA driver's
    version, device nodes and groups, names and VRAM (nvidia-smi when installed, sysfs for AMD)."""

    @staticmethod
    def default() -> GpuReport:
        return empty_report()

    def command(self) -> str:
        return DETECT_SCRIPT

    def process(self, output: list[str]) -> GpuReport:
        return parse_report(output)


@operation(is_idempotent=True)
def gpu_driver_ready(problems: list[str]) -> Generator[str, None, None]:
    """
    Fail this host (and nothing else) when its declared GPU has no usable driver; no change otherwise.

    + problems: from `gpu.driver_problems`, read from the GpuDetection fact while planning
    """
    if problems:
        yield fail_command("; ".join(problems))
