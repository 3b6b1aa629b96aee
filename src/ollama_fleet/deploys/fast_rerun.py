"""The fast re-run: a host exactly as its last verified deploy left it, for the same desired state, gets the
deploy lock, one state read and the quick client check, instead of the deploy's forty operations."""

from __future__ import annotations

import weakref
from collections.abc import Sequence
from importlib.metadata import version

from pyinfra import logger
from pyinfra.api.state import State
from pyinfra.context import host

from ollama_fleet.deploys.fleet import fleet_settings, inventory_address
from ollama_fleet.deploys.tls import TlsPair
from ollama_fleet.gateway import GatewayPlan, answers_loaded_check
from ollama_fleet.operations import converged, models
from ollama_fleet.operations.together import FactRequest, planned_fact
from ollama_fleet.render import builtin_templates_dir
from ollama_fleet.settings import FleetSettings
from ollama_fleet.state_probe import (
    RECORD_PATH,
    code_digest,
    desired_digest,
    fast_rerun_blocker,
    probe_script,
    settings_text,
)

FAST_RERUN = "Host as its last verified deploy left it (found while planning)"

_host_parts: weakref.WeakKeyDictionary[State, dict[str, str]] = weakref.WeakKeyDictionary()


def host_part(state: State, name: str) -> str:
    """Host `name`'s name, address and settings as text, made at most once per run (made per reader, it read
    N hosts' settings N times: the planning grew as the square of the fleet)."""
    parts = _host_parts.setdefault(state, {})
    if name not in parts:
        parts[name] = f"{name} {inventory_address(host, name)} {settings_text(fleet_settings(state)[name])}"
    return parts[name]


def others_read(state: State, name: str) -> list[str]:
    """What a whole deploy of host `name` reads of the inventory's hosts, itself included, as text: only
    these, so that a host added, removed or unreachable elsewhere in the inventory does not cost this host
    its fast re-run. A deploy step that comes to read another host must be added here.
    - a gateway plans over every host, a monitoring host scrapes every host: the whole fleet;
    - a host with a seed (models_seed_host) fetches from it: the seed (such a host always gets the whole
      deploy today, fast_rerun_blocker; kept so that lifting that cannot miss the seed);
    - a host that answers a gateway's first try (answers_loaded_check) trusts the gateways' addresses."""
    fleet = fleet_settings(state)
    s = fleet[name]
    if s.is_gateway or s.monitoring.enabled:
        return [host_part(state, other) for other in sorted(fleet)]
    read = [host_part(state, name)]
    if s.models.seed_host and s.models.seed_host != name:
        read.append(host_part(state, s.models.seed_host))
    if answers_loaded_check(s, fleet.values()):
        gateways = sorted(other for other, g in fleet.items() if g.is_gateway)
        read += [f"gateway {g} {inventory_address(host, g)}" for g in gateways]
    return read


def desired_state(
    s: FleetSettings, pair: TlsPair | None, plan: GatewayPlan | None, extra: Sequence[str] = ()
) -> str:
    """The digest of what a full deploy would put on this host: its settings and address and what it reads
    of the other hosts (others_read), the certificate and key (`pair`), the gateway's plan, the GGUF files,
    this code, and `extra` (what the host's own facts decide, like its GPU setup)."""
    parts = [
        code_digest(builtin_templates_dir(), *s.nginx.template_dirs),
        f"pyinfra {version('pyinfra')}",
    ]
    parts += others_read(host.state, host.name)
    if pair is not None:
        parts += [pair.cert, pair.key.reveal(), pair.ca_pem or ""]
    if plan is not None:
        parts.append(repr(plan))
    parts += [f"{name} {models.file_sha256(path)}" for name, path in sorted(s.models.gguf.items())]
    return desired_digest([*parts, *extra])


def desired_if_fast(
    s: FleetSettings, pair: TlsPair | None, plan: GatewayPlan | None, extra: Sequence[str] = ()
) -> str | None:
    """The desired digest, or None for a host that always gets the whole deploy (fast_rerun_blocker)."""
    blocker = fast_rerun_blocker(s)
    if blocker:
        logger.debug(f"{host.print_prefix}whole deploy: {blocker}")
        return None
    return desired_state(s, pair, plan, extra)


def verified_state_read(s: FleetSettings) -> FactRequest:
    return (converged.VerifiedState, {"record": RECORD_PATH, "probe": probe_script(s)})


def as_last_verified(s: FleetSettings, desired: str) -> bool:
    """The host is as its last verified deploy of `desired` left it (one state read)."""
    cls, kwargs = verified_state_read(s)
    found: converged.HostState = planned_fact(host, cls, **kwargs)
    return found.matches(desired)


def found_as_verified() -> None:
    converged.found_as_verified(name=FAST_RERUN)


def record_verified(s: FleetSettings, desired: str) -> None:
    """Last, after the checks: what the next run compares this host with."""
    converged.verified_state_recorded(
        name="Record the verified state for the next run",
        desired=desired,
        record=RECORD_PATH,
        probe=probe_script(s),
    )
