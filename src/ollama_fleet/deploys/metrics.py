"""Per-request metrics on a host (metrics_enabled): mtail, Debian's package, reads nginx's metrics log
(render.METRICS_LOG, one line per request) with the fleet's program and serves the Prometheus series on
loopback (render.METRICS_EXPORTER), which nginx's /metrics passes on to a key with the `metrics` scope.

mtail rather than a script of our own: it is packaged in Debian 12 and 13, follows nginx's log through
logrotate's renames, keeps counters and histograms in memory and speaks Prometheus; njs counters shared
across requests (js_shared_dict_zone) need njs 0.8, which Debian 12 does not have.
"""

from __future__ import annotations

from pyinfra.api.deploy import deploy
from pyinfra.operations import files, systemd
from pyinfra.operations.util import any_changed

from ollama_fleet.operations import packages, textfile
from ollama_fleet.render import METRICS_EXPORTER, METRICS_LOG, builtin_templates_dir
from ollama_fleet.settings import FleetSettings

MTAIL_PROGRAM = "/etc/mtail/ollama-fleet.mtail"
MTAIL_DEFAULTS = "/etc/default/mtail"
MTAIL_SERVICE = "mtail.service"
PROGRAM_SOURCE = "metrics/ollama-fleet.mtail"


def mtail_program() -> str:
    return (builtin_templates_dir() / PROGRAM_SOURCE).read_text()


def mtail_defaults() -> str:
    """/etc/default/mtail, which Debian's mtail.service reads: our log only, served on loopback only."""
    address, port = METRICS_EXPORTER.rsplit(":", 1)
    return (
        "# Managed by ollama-fleet (metrics_*): mtail reads nginx's metrics log and serves its series on\n"
        "# loopback only; nginx's /metrics passes them on to a key with the `metrics` scope.\n"
        f"LOGS={METRICS_LOG}\n"
        f"HOST={address}\n"
        f"PORT={port}\n"
        # One program: its name as a label on every series would say nothing.
        'EXTRA_ARGS="--emit_prog_label=false"\n'
    )


@deploy("Per-request metrics (mtail)")
def request_metrics(s: FleetSettings) -> None:
    """Install and run mtail on the metrics log; with metrics off, stop it and remove the fleet's program."""
    if not s.serves_metrics:
        removed = files.file(name=f"Remove {MTAIL_PROGRAM} (metrics off)", path=MTAIL_PROGRAM, present=False)
        systemd.service(
            name=f"Stop and disable {MTAIL_SERVICE} (metrics off)",
            service=MTAIL_SERVICE,
            running=False,
            enabled=False,
            _if=removed.did_change,
        )
        return
    packages.packages_installed(name="Install mtail", packages=["mtail"])
    # nginx creates it on its next reload; mtail reads the files present when it starts.
    files.file(name=f"Create {METRICS_LOG}", path=str(METRICS_LOG), user="www-data", group="adm", mode="640")
    changed = [
        textfile.text_file(name=f"Write {MTAIL_PROGRAM}", text=mtail_program(), dest=MTAIL_PROGRAM),
        textfile.text_file(name=f"Write {MTAIL_DEFAULTS}", text=mtail_defaults(), dest=MTAIL_DEFAULTS),
    ]
    systemd.service(
        name=f"Enable and start {MTAIL_SERVICE}", service=MTAIL_SERVICE, running=True, enabled=True
    )
    systemd.service(
        name=f"Restart {MTAIL_SERVICE} for its new program or settings",
        service=MTAIL_SERVICE,
        restarted=True,
        _if=any_changed(*changed),
    )
