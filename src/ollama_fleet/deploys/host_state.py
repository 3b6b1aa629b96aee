"""The host's state for Prometheus (metrics_enabled): Debian's node-exporter on loopback, and a small timer
writing Ollama's state into its textfile directory (ollama_fleet.host_state); with metrics off, both go.

node-exporter rather than a page of our own: it is packaged in Debian 12 and 13, serves the textfile
collector's files atomically as they are renamed in, and brings the filesystem, load and memory series.
"""

from __future__ import annotations

from collections.abc import Sequence

from pyinfra.api.deploy import deploy
from pyinfra.operations import files, systemd
from pyinfra.operations.util import any_changed

from ollama_fleet import host_state as hs
from ollama_fleet.health import UNIT_DIR
from ollama_fleet.operations import packages, textfile
from ollama_fleet.settings import FleetSettings


@deploy("Host state (node-exporter)")
def host_state(s: FleetSettings, gpu_vendors: Sequence[str] = ()) -> None:
    """node-exporter on every host with metrics; the state writer where there is an Ollama to read."""
    if not s.serves_metrics:
        _remove_state_writer()
        return
    # Without its recommends: the collectors package adds smartmontools, nvme-cli and timers of its own.
    packages.packages_installed(name=f"Install {hs.PACKAGE}", packages=[hs.PACKAGE], recommends=False)
    files.directory(
        name=f"Create {hs.TEXTFILE_DIR}",
        path=str(hs.TEXTFILE_DIR),
        user=hs.EXPORTER_USER,
        group=hs.EXPORTER_USER,
        mode="755",
    )
    defaults = textfile.text_file(
        name=f"Write {hs.EXPORTER_DEFAULTS}", text=hs.exporter_defaults(), dest=str(hs.EXPORTER_DEFAULTS)
    )
    systemd.service(
        name=f"Enable and start {hs.EXPORTER_SERVICE}",
        service=hs.EXPORTER_SERVICE,
        running=True,
        enabled=True,
    )
    systemd.service(
        name=f"Restart {hs.EXPORTER_SERVICE} for its new flags",
        service=hs.EXPORTER_SERVICE,
        restarted=True,
        _if=defaults.did_change,
    )
    if s.serves_api:
        _state_writer(s, gpu_vendors)
    else:
        _remove_state_writer()


def _state_writer(s: FleetSettings, gpu_vendors: Sequence[str]) -> None:
    files.directory(name=f"Create {hs.SCRIPT_PATH.parent}", path=str(hs.SCRIPT_PATH.parent), mode="755")
    changed = [
        textfile.text_file(
            name=f"Write {item.path}", text=item.text, dest=str(item.path), mode=int(item.mode, 8)
        )
        for item in hs.render_state_files(s, gpu_vendors)
    ]
    systemd.daemon_reload(name="Reload systemd for the state units", _if=any_changed(changed[1], changed[2]))
    systemd.service(name=f"Enable and start {hs.TIMER}", service=hs.TIMER, running=True, enabled=True)
    systemd.service(
        name=f"Restart {hs.TIMER} for its new schedule",
        service=hs.TIMER,
        restarted=True,
        _if=changed[2].did_change,
    )


def _remove_state_writer() -> None:
    systemd.service(name=f"Stop and disable {hs.TIMER}", service=hs.TIMER, running=False, enabled=False)
    removed = [
        files.file(name=f"Remove {path}", path=str(path), present=False)
        for path in (UNIT_DIR / hs.TIMER, UNIT_DIR / hs.SERVICE, hs.SCRIPT_PATH, hs.STATE_TEXTFILE)
    ]
    systemd.daemon_reload(name="Reload systemd after removing the state units", _if=removed[0].did_change)
