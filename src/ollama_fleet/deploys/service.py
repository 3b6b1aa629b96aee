"""The ollama systemd unit and our drop-in; restart when the running process does not match them.

Ollama restarts when this run changed its binary, unit or drop-in, and also when the running process is
older than those files or runs another binary (a run cut off before its restart leaves exactly that). After
the restart the host must serve the pinned version; if it does not, the previous release goes back.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from pyinfra import logger
from pyinfra.api.deploy import deploy
from pyinfra.api.operation import OperationMeta
from pyinfra.context import host
from pyinfra.operations import files, systemd

from ollama_fleet import gpu
from ollama_fleet.deploys.fleet import each
from ollama_fleet.gpu import GpuSetup
from ollama_fleet.operations import release, textfile
from ollama_fleet.operations.running import OllamaProcess, ServiceProcess, ollama_restart_reason
from ollama_fleet.render import (
    OLLAMA_BIN,
    render_dropin,
    render_gpu_dropin,
    render_gpu_nodes_unit,
    render_hardening,
    render_unit,
)
from ollama_fleet.settings import FleetSettings

UNIT_PATH = "/etc/systemd/system/ollama.service"
DROPIN_PATH = "/etc/systemd/system/ollama.service.d/override.conf"
HARDENING_PATH = "/etc/systemd/system/ollama.service.d/hardening.conf"


def any_changed(ops: Sequence[OperationMeta], or_if: bool = False) -> Callable[[], bool]:
    """An `_if=` condition: true when one of `ops` changed something on this host (or `or_if` holds)."""
    return lambda: or_if or any(op.did_change() for op in ops)


def release_binary(s: FleetSettings, version: str) -> str:
    return f"{s.ollama.install_dir}/{version}/bin/ollama"


def ollama_process(s: FleetSettings) -> ServiceProcess:
    o = s.ollama
    # The marker is written last when a version is unpacked (again, with other overlays: same path).
    marker = f"{o.install_dir}/{o.version}/{release.MARKER}"
    files_read = [
        UNIT_PATH,
        DROPIN_PATH,
        HARDENING_PATH,
        gpu.GPU_DROPIN_PATH,
        f"{o.install_dir}/current",
        str(OLLAMA_BIN),
        marker,
    ]
    process: ServiceProcess = host.get_fact(OllamaProcess, service="ollama.service", files=files_read)
    return process


def rollback_target_for(s: FleetSettings) -> str | None:
    """The version to go back to if this deploy's release fails; read before anything is switched."""
    releases = host.get_fact(release.OllamaReleases, install_dir=str(s.ollama.install_dir))
    return rollback_target(s, ollama_process(s), releases)


def rollback_target(
    s: FleetSettings, process: ServiceProcess, releases: release.InstalledReleases
) -> str | None:
    """The installed version that served before this deploy, when it is not the pinned one."""
    o = s.ollama
    running = process["exe"] or ""
    for version in releases["versions"]:
        if version != o.version and running == release_binary(s, version):
            return version
    current = releases["current"]
    if current and current != o.version and current in releases["versions"]:
        return current
    return None


def api_base(s: FleetSettings) -> str:
    """The local API URL as seen from the host itself (a wildcard bind is reached on loopback)."""
    address = s.ollama.listen_host
    if address in ("0.0.0.0", "::", ""):
        address = "127.0.0.1"
    elif ":" in address:
        address = f"[{address}]"
    return f"http://{address}:{s.ollama.listen_port}"


@deploy("Ollama service")
def ollama_service(
    s: FleetSettings, restart_triggers: Sequence[OperationMeta], rollback_to: str | None, setup: GpuSetup
) -> None:
    """`rollback_to`: the version that served before this run (see `rollback_target_for`), if any;
    `setup`: the GPUs it serves from (gpu.gpu_setup of the GpuDetection fact)."""
    o = s.ollama
    process = ollama_process(s)
    stale = ollama_restart_reason(process, release_binary(s, o.version))
    if stale:
        logger.info(f"{host.print_prefix}ollama must restart: {stale}")
    unit = textfile.text_file(name=f"Install {UNIT_PATH}", text=render_unit(s), dest=UNIT_PATH)
    dropin = textfile.text_file(name=f"Install {DROPIN_PATH}", text=render_dropin(s), dest=DROPIN_PATH)
    if o.hardening:
        sandbox = textfile.text_file(
            name=f"Install {HARDENING_PATH} (systemd sandbox)", text=render_hardening(s), dest=HARDENING_PATH
        )
    else:
        sandbox = files.file(name=f"Remove {HARDENING_PATH}", path=HARDENING_PATH, present=False)
    gpu_files = gpu_files_installed(s, setup)
    systemd.daemon_reload(
        name="Reload systemd units",
        _if=any_changed([unit, dropin, sandbox, *gpu_files], or_if=process["need_daemon_reload"]),
    )
    # Starts the service if it is stopped; restarts it when a file it reads changed in this run or since
    # it started, or when it runs another binary than the pinned one.
    systemd.service(
        name="Restart ollama after a change",
        service="ollama.service",
        running=True,
        restarted=True,
        _if=any_changed([*restart_triggers, unit, dropin, sandbox, *gpu_files], or_if=stale is not None),
    )
    systemd.service(name="Enable and start ollama", service="ollama.service", running=True, enabled=True)
    release.release_serving(
        name=f"Check that Ollama {o.version} serves (else roll back)",
        version=o.version,
        api=api_base(s),
        install_dir=str(o.install_dir),
        rollback_to=rollback_to,
    )


def gpu_files_installed(s: FleetSettings, setup: GpuSetup) -> list[OperationMeta]:
    """The GPU parts of the service: written where the host serves from a GPU, removed where it no longer
    does (a card taken out, gpu_vendor none); nothing at all on a host that never had them."""
    wanted = [
        (gpu.GPU_DROPIN_PATH, render_gpu_dropin(s, setup), "ollama.service's GPU drop-in"),
        (gpu.NODES_UNIT_PATH, render_gpu_nodes_unit(s, setup), "NVIDIA uvm and device nodes unit"),
        (gpu.MODULES_LOAD_PATH, gpu.modules_load_text(setup), "NVIDIA modules loaded at boot"),
    ]
    changed = []
    for path, text, what in each(wanted):
        if text is None:
            changed.append(files.file(name=f"Remove {path} (no GPU for it)", path=path, present=False))
        else:
            changed.append(textfile.text_file(name=f"Install {path} ({what})", text=text, dest=path))
    return changed


@deploy("Ollama stopped")
def ollama_stopped() -> None:
    """A gateway_only host runs no Ollama: stopped and disabled if an earlier deploy installed it (no change
    where it never was). Its releases and models stay on disk for a deploy that makes it serve again."""
    systemd.service(
        name="Stop and disable Ollama (gateway_only)", service="ollama.service", running=False, enabled=False
    )
