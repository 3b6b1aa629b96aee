"""The ollama systemd unit and our drop-in; reload and restart only when something they depend on changed."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from io import StringIO

from pyinfra.api.deploy import deploy
from pyinfra.api.operation import OperationMeta
from pyinfra.operations import files, systemd

from ollama_fleet.operations import models
from ollama_fleet.render import render_dropin, render_unit
from ollama_fleet.settings import FleetSettings

UNIT_PATH = "/etc/systemd/system/ollama.service"
DROPIN_PATH = "/etc/systemd/system/ollama.service.d/override.conf"


def any_changed(ops: Sequence[OperationMeta]) -> Callable[[], bool]:
    """An `_if=` condition: true when one of `ops` changed something on this host."""
    return lambda: any(op.did_change() for op in ops)


def api_base(s: FleetSettings) -> str:
    """The local API URL as seen from the host itself (a wildcard bind is reached on loopback)."""
    address = s.ollama.listen_host
    if address in ("0.0.0.0", "::", ""):
        address = "127.0.0.1"
    elif ":" in address:
        address = f"[{address}]"
    return f"http://{address}:{s.ollama.listen_port}"


@deploy("Ollama service")
def ollama_service(s: FleetSettings, restart_triggers: Sequence[OperationMeta]) -> None:
    unit = files.put(name=f"Install {UNIT_PATH}", src=StringIO(render_unit(s)), dest=UNIT_PATH, mode="644")
    dropin = files.put(
        name=f"Install {DROPIN_PATH}", src=StringIO(render_dropin(s)), dest=DROPIN_PATH, mode="644"
    )
    systemd.daemon_reload(name="Reload systemd units", _if=any_changed([unit, dropin]))
    # Starts the service if it is stopped; restarts it only when the binary, unit or drop-in changed.
    systemd.service(
        name="Restart ollama after a change",
        service="ollama.service",
        running=True,
        restarted=True,
        _if=any_changed([*restart_triggers, unit, dropin]),
    )
    systemd.service(name="Enable and start ollama", service="ollama.service", running=True, enabled=True)
    models.api_answering(name="Wait for the Ollama API", api=api_base(s))
