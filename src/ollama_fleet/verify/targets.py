"""The hosts to check: a pyinfra inventory loaded the way `pyinfra` loads it, with validated settings."""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ollama_fleet.gateway import with_gateway_group
from ollama_fleet.settings import FleetSettings, SettingsError, service_address, settings_for_host
from ollama_fleet.settings.paths import fleet_root, with_controller_paths


class InventoryError(Exception):
    """The inventory cannot be used: missing file, no hosts, unknown host names."""


@dataclass(frozen=True)
class Target:
    """One host as a client sees it: where to connect and what it must serve."""

    name: str
    address: str
    settings: FleetSettings
    data: Mapping[str, Any] = field(default_factory=dict)  # raw host data: ssh_*, lab_* keys
    # The fleet's gateway on this host (gateway_port) rather than the host's own API: the models it must
    # route are every host's.
    gateway_models: tuple[str, ...] | None = None

    @property
    def is_gateway(self) -> bool:
        return self.gateway_models is not None

    @property
    def models(self) -> list[str]:
        """The models a client must find here, as /api/tags lists them."""
        if self.gateway_models is not None:
            return list(self.gateway_models)
        return self.settings.models.names()

    @property
    def https(self) -> bool:
        return self.settings.nginx.enabled

    @property
    def port(self) -> int:
        if self.is_gateway:
            return self.settings.gateway.port
        return self.settings.nginx.https_port if self.https else self.settings.ollama.listen_port

    @property
    def base_url(self) -> str:
        host = f"[{self.address}]" if ":" in self.address else self.address
        scheme = "https" if self.https else "http"
        default = 443 if self.https else 80
        return f"{scheme}://{host}" + ("" if self.port == default else f":{self.port}")

    @property
    def ca_file(self) -> Path | None:
        """The fleet CA the host's certificate must chain to (None: the system trust store)."""
        tls = self.settings.tls
        return tls.ca_dir / "ca.pem" if tls.mode == "fleet_ca" else None


def target_for(name: str, data: Mapping[str, Any], environ: Mapping[str, str] | None = None) -> Target:
    """A Target from one host's pyinfra data; raises SettingsError on bad settings."""
    return target_for_settings(settings_for_host(name, data, environ), name, data)


def target_for_settings(settings: FleetSettings, name: str, data: Mapping[str, Any]) -> Target:
    """A Target from settings already validated, at its service address (service_address, else
    ssh_hostname, else the host name)."""
    return Target(name=name, address=service_address(settings, data), settings=settings, data=dict(data))


def load_inventory(
    inventory: str, group_data: Sequence[str] = (), cwd: Path | None = None
) -> dict[str, dict[str, Any]]:
    """Host name -> merged host data, exactly as `pyinfra INVENTORY ... [--group-data DIR]` sees it, with
    controller paths absolute against the inventory's fleet root (as the deploy resolves them)."""
    root = fleet_root(inventory)
    return {
        host.name: with_controller_paths(with_gateway_group(host.data.dict(), host.groups), root)
        for host in _pyinfra_inventory(inventory, group_data, cwd)
    }


def load_groups(
    inventory: str, group_data: Sequence[str] = (), cwd: Path | None = None
) -> dict[str, list[str]]:
    """Group name -> its host names in inventory order (pyinfra's own groups, e.g. from the inventory)."""
    loaded = _pyinfra_inventory(inventory, group_data, cwd)
    return {name: [host.name for host in hosts] for name, hosts in loaded.groups.items()}


def _pyinfra_inventory(inventory: str, group_data: Sequence[str], cwd: Path | None) -> Any:
    """pyinfra's Inventory, loaded as its CLI does.

    pyinfra's CLI looks for group_data/ in the current directory and beside the inventory file, then in the
    --group-data directories (later ones override); it needs a State in context while it executes the
    inventory and group data files.
    """
    # Importing pyinfra_cli monkey-patches the process with gevent, as pyinfra itself runs; import late.
    from pyinfra.api.state import State
    from pyinfra.context import ctx_state
    from pyinfra_cli.inventory import make_inventory

    if not Path(inventory).is_file():
        raise InventoryError(
            f"inventory {inventory!r} not found; pass a pyinfra inventory file such as inventories/lab.py"
        )
    workdir = str((cwd or Path.cwd()).resolve())
    state = State()
    state.cwd = workdir
    with ctx_state.use(state):
        loaded = make_inventory(inventory, cwd=workdir, group_data_directories=list(group_data))
    if not list(loaded):
        raise InventoryError(f"inventory {inventory!r} holds no hosts")
    return loaded


def select(hosts: Mapping[str, Any], wanted: Iterable[str] | None) -> list[str]:
    """Inventory order, limited to `wanted` (names, comma lists allowed); unknown names are an error."""
    names = list(hosts)
    if not wanted:
        return names
    chosen = [part.strip() for item in wanted for part in item.split(",") if part.strip()]
    unknown = [name for name in chosen if name not in hosts]
    if unknown:
        raise InventoryError(
            f"--hosts names {', '.join(unknown)} not in the inventory (it has {', '.join(names)})"
        )
    return [name for name in names if name in chosen]


def load_targets(
    inventory: str,
    wanted: Iterable[str] | None = None,
    group_data: Sequence[str] = (),
    environ: Mapping[str, str] | None = None,
) -> list[Target]:
    """Every selected host of the inventory with its settings; all settings problems are raised at once.
    A gateway_only host has no API of its own: a client checks its gateway (`<host>/gateway`)."""
    environ = os.environ if environ is None else environ
    missing = [d for d in group_data if not Path(d).is_dir()]
    if missing:
        raise InventoryError(f"--group-data {', '.join(missing)}: no such directory")
    hosts = load_inventory(inventory, group_data)
    targets, errors = [], []
    for name in select(hosts, wanted):
        try:
            targets.append(target_for(name, hosts[name], environ))
        except SettingsError as exc:
            errors.append(exc)
    if errors:
        raise FleetSettingsError(errors)
    if all(t.settings.serves_api for t in targets):
        return targets
    fleet = _fleet_settings(hosts, environ).values()
    return [
        t if t.settings.serves_api else gateway_target(t.settings, t.name, t.data, fleet) for t in targets
    ]


def load_gateway_targets(
    inventory: str,
    wanted: Iterable[str] | None = None,
    group_data: Sequence[str] = (),
    environ: Mapping[str, str] | None = None,
) -> list[Target]:
    """The gateway of each selected gateway host (`<host>/gateway`), which must route every model that some
    host of the whole inventory serves."""
    environ = os.environ if environ is None else environ
    hosts = load_inventory(inventory, group_data)
    fleet = _fleet_settings(hosts, environ)
    return [
        gateway_target(fleet[name], name, hosts[name], fleet.values())
        for name in select(hosts, wanted)
        if fleet[name].is_gateway
    ]


def _fleet_settings(
    hosts: Mapping[str, Mapping[str, Any]], environ: Mapping[str, str]
) -> dict[str, FleetSettings]:
    """Every inventory host's settings (a gateway routes to all of them); the first problem is raised."""
    fleet = {}
    for name, data in hosts.items():
        try:
            fleet[name] = settings_for_host(name, data, environ)
        except SettingsError as exc:
            raise FleetSettingsError([exc]) from None
    return fleet


def gateway_target(
    settings: FleetSettings, name: str, data: Mapping[str, Any], fleet: Iterable[FleetSettings]
) -> Target:
    """The gateway on host `name`, which must route every model some host of `fleet` serves."""
    models = sorted({m for s in fleet if s.serves_api_through_nginx for m in s.models.names()})
    address = service_address(settings, data)
    return Target(f"{name}/gateway", address, settings, dict(data), gateway_models=tuple(models))


class FleetSettingsError(Exception):
    """Settings problems of one or more hosts."""

    def __init__(self, errors: list[SettingsError]) -> None:
        self.errors = errors
        super().__init__("\n".join(str(e) for e in errors))
