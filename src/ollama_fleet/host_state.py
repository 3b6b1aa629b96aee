"""The host's state for Prometheus (pure): node-exporter from Debian on loopback, with its textfile collector
reading what the fleet writes there (the writer script's series, and the last deploy's record).

nginx passes node-exporter's page on at /metrics/host to the `metrics` scope, as mtail's at /metrics.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import PurePosixPath

from ollama_fleet.health import SERVICE as HEALTH_SERVICE
from ollama_fleet.health import HealthFile, loopback_address, timed_script_files
from ollama_fleet.render import HOST_EXPORTER
from ollama_fleet.settings import FleetSettings, timespan_seconds

PACKAGE = "prometheus-node-exporter"
EXPORTER_SERVICE = "prometheus-node-exporter.service"
EXPORTER_DEFAULTS = PurePosixPath("/etc/default/prometheus-node-exporter")
EXPORTER_USER = "prometheus"  # made by Debian's package
TEXTFILE_DIR = PurePosixPath("/var/lib/prometheus/node-exporter")
"""Debian's textfile directory (its collectors package writes there too); given explicitly all the same."""
STATE_TEXTFILE = TEXTFILE_DIR / "ollama-fleet-state.prom"
DEPLOY_TEXTFILE = TEXTFILE_DIR / "ollama-fleet-deploy.prom"
TAG = "ollama-fleet-state"
SERVICE = f"{TAG}.service"
TIMER = f"{TAG}.timer"
SCRIPT_PATH = PurePosixPath("/usr/local/lib/ollama-fleet/state-textfile.py")
COLLECTORS = ("textfile", "filesystem", "loadavg", "meminfo", "cpu", "time", "uname")
"""node-exporter's collectors kept on: the state, disks, load and memory. Defaults off: a host's page stays
small, and nothing reads mdadm, ARP or network statistics here."""


def exporter_args() -> str:
    """node-exporter's flags, the same on Debian 12 (1.5) and 13 (1.9): every flag here exists in both."""
    flags = [
        f"--web.listen-address={HOST_EXPORTER}",
        "--collector.disable-defaults",
        *(f"--collector.{name}" for name in COLLECTORS),
        f"--collector.textfile.directory={TEXTFILE_DIR}",
    ]
    return " ".join(flags)


def exporter_defaults() -> str:
    """/etc/default/prometheus-node-exporter, which Debian's unit reads ($ARGS)."""
    return (
        "# Managed by ollama-fleet (metrics_*): node-exporter on loopback only; nginx's /metrics/host\n"
        "# passes its page on to a key with the `metrics` scope. The textfile directory holds the\n"
        "# fleet's state.\n"
        f'ARGS="{exporter_args()}"\n'
    )


def render_state_files(
    s: FleetSettings, gpu_vendors: Sequence[str] = (), textfile: str = ""
) -> list[HealthFile]:
    """The writer script and its service and timer (pure). `textfile`: where the script writes (tests)."""
    context = {
        "s": s,
        "script_path": SCRIPT_PATH,
        "base_url": f"http://{loopback_address(s.ollama.listen_host)}:{s.ollama.listen_port}",
        "models_dir": str(s.ollama.models_dir),
        "gpu_vendor": gpu_vendors[0] if gpu_vendors else None,
        "health_service": HEALTH_SERVICE if s.health.enabled else "",
        "health_interval_seconds": int(timespan_seconds(s.health.interval)),
        "textfile": textfile or str(STATE_TEXTFILE),
        "textfile_dir": TEXTFILE_DIR,
        "timeout": s.health.timeout_seconds,
        "user": EXPORTER_USER,
        "every": s.monitoring.scrape_interval,
    }

    return timed_script_files(s, "state", context, SCRIPT_PATH, TAG, SERVICE, TIMER)
