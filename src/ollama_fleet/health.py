"""The on-host health check: its names and paths, and its files rendered from settings (pure).

The deploy installs these files (`deploys/health.py`); `ollama-fleet status` reads the journal of TAG.
"""

from __future__ import annotations

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


def render_health_files(s: FleetSettings) -> list[HealthFile]:
    """The check script and its service and timer units (pure: settings in, text out)."""
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader([*s.nginx.template_dirs, builtin_templates_dir()]),
        undefined=jinja2.StrictUndefined,
        autoescape=False,
        keep_trailing_newline=True,
    )
    env.filters["systemd_quote"] = systemd_quote
    context = {
        "s": s,
        "script_path": SCRIPT_PATH,
        "base_url": f"http://{_loopback(s.ollama.listen_host)}:{s.ollama.listen_port}",
        "models": s.models.names(),
        "timeout": s.health.timeout_seconds,
    }

    def render(name: str) -> str:
        return env.get_template(f"health/{name}.j2").render(**context)

    return [
        HealthFile(SCRIPT_PATH, render(f"{TAG}.py"), "755"),
        HealthFile(UNIT_DIR / SERVICE, render(SERVICE), "644"),
        HealthFile(UNIT_DIR / TIMER, render(TIMER), "644"),
    ]


def _loopback(listen_host: str) -> str:
    """Where the check reaches Ollama from the host itself."""
    if listen_host in ("", "0.0.0.0", "localhost"):
        return "127.0.0.1"
    if listen_host == "::":
        return "[::1]"
    return f"[{listen_host}]" if ":" in listen_host else listen_host
