"""The on-host health check: its names and paths, and its files rendered from settings (pure).

The deploy installs these files (`deploys/health.py`); `ollama-fleet status` reads the journal of TAG.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import PurePosixPath

import jinja2

from ollama_fleet.render import builtin_templates_dir, systemd_quote
from ollama_fleet.settings import FleetSettings

TAG = "ollama-fleet-health"
SERVICE = f"{TAG}.service"
TIMER = f"{TAG}.timer"
UNIT_DIR = PurePosixPath("/etc/systemd/system")
SCRIPT_PATH = PurePosixPath("/usr/local/lib/ollama-fleet/health-check.py")


@dataclass(frozen=True)
class HealthFile:
    path: PurePosixPath
    text: str
    mode: str


CPU_FALLBACK_EXIT = 3
"""The script's exit status when a GPU host serves from the CPU (the unit may restart Ollama on it)."""
RESTART_STAMP = "/run/ollama-fleet-health-gpu-restart"
RESTART_EVERY_MIN = 30
"""At most one restart per this many minutes: a GPU that stays broken must not evict models every minute."""


def render_health_files(s: FleetSettings, gpu_vendors: Sequence[str] = ()) -> list[HealthFile]:
    """The check script and its service and timer units (pure: settings and the host's GPU setup in, text
    out). `gpu_vendors`: those the host serves from (gpu.GpuSetup); the script then also checks that
    Ollama found its GPU at start and that loaded models sit in VRAM."""
    context = {
        "s": s,
        "script_path": SCRIPT_PATH,
        "base_url": f"http://{loopback_address(s.ollama.listen_host)}:{s.ollama.listen_port}",
        "models": s.models.names(),
        "timeout": s.health.timeout_seconds,
        "gpu_vendor": gpu_vendors[0] if gpu_vendors else None,
        "restart_on_cpu_fallback": bool(gpu_vendors) and s.gpu.restart_on_cpu_fallback,
        "cpu_fallback_exit": CPU_FALLBACK_EXIT,
        "restart_stamp": RESTART_STAMP,
        "restart_every_min": RESTART_EVERY_MIN,
    }

    return timed_script_files(s, "health", context, SCRIPT_PATH, TAG, SERVICE, TIMER)


def timed_script_files(
    s: FleetSettings,
    folder: str,
    context: dict[str, object],
    script: PurePosixPath,
    tag: str,
    service: str,
    timer: str,
) -> list[HealthFile]:
    """A script run by a timer: `folder`'s templates (overridable like the site's) rendered as written, no
    block trimming, since Python's indentation and systemd's lines are the text itself."""
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader([*s.nginx.template_dirs, builtin_templates_dir()]),
        undefined=jinja2.StrictUndefined,
        autoescape=False,
        keep_trailing_newline=True,
    )
    env.filters["systemd_quote"] = systemd_quote

    def render(name: str) -> str:
        return env.get_template(f"{folder}/{name}.j2").render(**context)

    return [
        HealthFile(script, render(f"{tag}.py"), "755"),
        HealthFile(UNIT_DIR / service, render(service), "644"),
        HealthFile(UNIT_DIR / timer, render(timer), "644"),
    ]


def loopback_address(listen_host: str) -> str:
    """Where the check reaches Ollama from the host itself."""
    if listen_host in ("", "0.0.0.0", "localhost"):
        return "127.0.0.1"
    if listen_host == "::":
        return "[::1]"
    return f"[{listen_host}]" if ":" in listen_host else listen_host
