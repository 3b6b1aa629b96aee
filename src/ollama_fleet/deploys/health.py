"""On-host health monitoring: a systemd timer running the check script of `ollama_fleet.health`.

Files change only when their rendered text does, and systemd is reloaded/restarted only through
`_if=...did_change`; with health_enabled false the timer and its files are removed.
"""

from __future__ import annotations

from collections.abc import Sequence

from pyinfra.api.deploy import deploy
from pyinfra.operations import files, systemd
from pyinfra.operations.util import any_changed

from ollama_fleet.health import SCRIPT_PATH, SERVICE, TIMER, UNIT_DIR, render_health_files
from ollama_fleet.operations import packages, textfile
from ollama_fleet.settings import FleetSettings


@deploy("Ollama health timer")
def health_monitoring(s: FleetSettings, gpu_vendors: Sequence[str] = ()) -> None:
    """Install (or, when health_enabled is false or there is no Ollama to check, remove) the health timer;
    on a GPU host (`gpu_vendors`) it also notices Ollama serving from the CPU."""
    if not (s.health.enabled and s.serves_api):
        _remove_health_monitoring()
        return
    packages.packages_installed(name="Install python3 for the health check", packages=["python3"])
    files.directory(name=f"Create {SCRIPT_PATH.parent}", path=str(SCRIPT_PATH.parent), mode="755")
    changed = [
        textfile.text_file(
            name=f"Write {item.path}", text=item.text, dest=str(item.path), mode=int(item.mode, 8)
        )
        for item in render_health_files(s, gpu_vendors)
    ]
    systemd.daemon_reload(name="Reload systemd for the health units", _if=any_changed(changed[1], changed[2]))
    systemd.service(name=f"Enable and start {TIMER}", service=TIMER, running=True, enabled=True)
    systemd.service(
        name=f"Restart {TIMER} for its new schedule",
        service=TIMER,
        restarted=True,
        _if=changed[2].did_change,
    )


def _remove_health_monitoring() -> None:
    systemd.service(name=f"Stop and disable {TIMER}", service=TIMER, running=False, enabled=False)
    removed = [
        files.file(name=f"Remove {path}", path=str(path), present=False)
        for path in (UNIT_DIR / TIMER, UNIT_DIR / SERVICE, SCRIPT_PATH)
    ]
    systemd.daemon_reload(name="Reload systemd after removing the health units", _if=removed[0].did_change)
