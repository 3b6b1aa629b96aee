"""Settings for the whole inventory, validated before the first operation is added for any host.

pyinfra loads a deploy file once per host, in parallel greenlets, after connecting. The first host to get
here validates every host of the inventory (pure Python, so no other greenlet runs meanwhile) and raises
one error naming each bad host, key, value and fix: no operation exists yet for any host, so nothing is
changed anywhere, and pyinfra exits non-zero.
"""

from __future__ import annotations

import ipaddress
import weakref
from collections.abc import Iterable, Iterator, Mapping
from typing import Any, TypeVar

import gevent.lock
from pyinfra import context
from pyinfra.api.exceptions import PyinfraError
from pyinfra.api.host import Host
from pyinfra.api.state import State

from ollama_fleet.deploys.pins import pin_problems
from ollama_fleet.deploys.release_check import release_problems
from ollama_fleet.gateway import with_gateway_group
from ollama_fleet.settings import (
    FleetSettings,
    SettingsError,
    listed_name,
    service_address,
    settings_for_host,
    url_host,
)
from ollama_fleet.settings.paths import (
    FleetRootError,
    fleet_root,
    pyinfra_inventory_file,
    with_controller_paths,
)

T = TypeVar("T")


class FleetError(PyinfraError):
    """A problem found before any host was changed (pyinfra prints it without a traceback)."""


_validated: weakref.WeakKeyDictionary[State, dict[str, FleetSettings]] = weakref.WeakKeyDictionary()
_validating: weakref.WeakKeyDictionary[State, gevent.lock.Semaphore] = weakref.WeakKeyDictionary()


def host_data(host: Host) -> dict[str, Any]:
    """All data of a host, merged the way pyinfra looks keys up (host over groups over defaults); a host of
    the `gateway` group has gateway_enabled true unless its data sets it; controller paths absolute against
    the fleet root (settings/paths.py), whatever directory pyinfra was started from."""
    data: dict[str, Any] = host.data.dict()  # type: ignore[no-untyped-call]  # untyped in pyinfra 3.10
    inventory = pyinfra_inventory_file()
    return with_controller_paths(
        with_gateway_group(data, host.groups), fleet_root(inventory) if inventory else None
    )


def each(items: Iterable[T]) -> Iterator[T]:
    """`host.loop` (typed): operations called in a loop get one operation per position on every host."""
    looped: Iterator[T] = context.host.loop(items)  # type: ignore[no-untyped-call]  # untyped in pyinfra
    return looped


def validate_hosts(hosts: Iterable[Host]) -> dict[str, FleetSettings]:
    """Every host's settings, or FleetError listing the problems of every bad host."""
    hosts = list(hosts)
    settings, addresses, errors = {}, {}, []
    for host in hosts:
        try:
            data = host_data(host)
            settings[host.name] = settings_for_host(host.name, data)
            addresses[host.name] = service_address(settings[host.name], data)
        except SettingsError as exc:
            errors.append(str(exc))
        except FleetRootError as exc:
            errors.append(str(SettingsError(host.name, [str(exc)])))
    errors += seed_problems(settings)
    errors += gateway_problems(settings)
    errors += address_problems(settings, addresses)
    if errors:
        raise FleetError("settings are invalid; nothing was changed on any host:\n" + "\n".join(errors))
    return settings


def seed_problems(settings: dict[str, FleetSettings]) -> list[str]:
    """A host that fetches models from a seed needs the seed in this run's inventory, pulling each model."""
    problems = []
    for name, s in settings.items():
        seed = s.models.seed_host
        if not s.fetches_from_seed or seed is None:
            continue
        if seed not in settings:
            problems.append(
                f"host {name!r}: models_seed_host {seed!r} is not a host of this inventory; name the host "
                "that pulls the fleet's models"
            )
            continue
        seeds = settings[seed].models
        missing = [m for m in s.models.pull if listed_name(m) not in {listed_name(n) for n in seeds.pull}]
        if missing:
            problems.append(
                f"host {name!r}: models_pull {missing} are not pulled by the seed {seed!r}; add them to "
                f"{seed}'s models_pull"
            )
        created = [model for model, path in s.models.gguf.items() if seeds.gguf.get(model) != path]
        created += [custom.name for custom in s.models.custom if custom not in seeds.custom]
        if created:
            problems.append(
                f"host {name!r}: models {created} are not made by the seed {seed!r} from the same GGUF file "
                "or Modelfile; the hosts of a seed get its models: define them alike on the seed"
            )
        other_pins = [m for m in s.models.pull if s.models.pin(m) and s.models.pin(m) != seeds.pin(m)]
        if other_pins and not missing:
            problems.append(
                f"host {name!r}: models_pull {other_pins} pin another digest than the seed {seed!r} has; pin "
                "them in the seed's models_pull (the hosts get what the seed has)"
            )
    return problems


def gateway_problems(settings: dict[str, FleetSettings]) -> list[str]:
    """A gateway checks every host's certificate against its own fleet CA: the hosts' must come from it."""
    problems = []
    for name, s in settings.items():
        if not s.is_gateway:
            continue
        for other, o in settings.items():
            if not o.serves_api_through_nginx or other == name:
                continue
            if o.tls.mode != "fleet_ca" or o.tls.ca_dir != s.tls.ca_dir:
                problems.append(
                    f"host {other!r}: the gateway {name!r} checks its certificate against the fleet CA in "
                    f"{s.tls.ca_dir}; give it tls_mode 'fleet_ca' and tls_ca_dir {str(s.tls.ca_dir)!r}"
                )
    return problems


def address_problems(settings: Mapping[str, FleetSettings], addresses: Mapping[str, str]) -> list[str]:
    """Addresses the fleet's firewalls would drop, found before any host changes (else: silent timeouts).
    `addresses`: each host's service address. Only IP literals can be checked (a name resolves on the hosts),
    and only against a firewall that is on (ufw is what enforces the subnets)."""
    problems = []
    for gateway, g in settings.items():
        source = _ip(addresses.get(gateway))
        if not g.is_gateway or source is None:
            continue
        for name, member in settings.items():
            if name == gateway or not member.serves_api_through_nginx or not member.firewall.enabled:
                continue
            dialed = _ip(addresses.get(name))
            if dialed is not None and dialed.version != source.version:
                continue  # dialled over the other family, from an address the settings do not name
            subnets = member.firewall.client_subnets
            if not any(source in subnet for subnet in subnets if subnet.version == source.version):
                problems.append(
                    f"host {name!r}: firewall_client_subnets {[str(n) for n in subnets]} do not hold "
                    f"{source}, the address of the gateway {gateway!r}: its ufw would drop the gateway's "
                    f"requests; add a subnet holding {source} to {name}'s firewall_client_subnets, or set "
                    f"{gateway}'s service_address to its address on {name}'s LAN"
                )
    for name, s in settings.items():
        seed = s.models.seed_host
        if not s.fetches_from_seed or seed is None or seed not in settings:
            continue
        seed_ip = _ip(addresses.get(seed))
        if seed_ip is not None and seed_ip.version == 6:
            problems.append(
                f"host {name!r}: the seed {seed!r} is reached at the IPv6 literal {seed_ip}, which an Ollama "
                "model name cannot hold (its registry part takes no brackets); give the seed a "
                "service_address that is an IPv4 address or a DNS name the hosts resolve (AAAA is fine)"
            )
        source = _ip(addresses.get(name))
        lan = settings[seed].models.lan_subnets
        if source is None or not settings[seed].firewall.enabled:
            continue
        if not any(source in subnet for subnet in lan if subnet.version == source.version):
            problems.append(
                f"host {name!r}: its address {source} is outside models_lan_subnets {[str(n) for n in lan]} "
                f"of the seed {seed!r}: the seed's ufw would drop its model pulls; add a subnet holding "
                f"{source} to {seed}'s models_lan_subnets, or set {name}'s service_address to its address "
                "on that LAN"
            )
    return problems


def _ip(address: str | None) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        return ipaddress.ip_address(address or "")
    except ValueError:
        return None


def seed_address(host: Host, seed: str) -> str:
    """Where the other hosts reach the seed, as the host part of a URL or `host:port` (an IPv6 literal in
    brackets)."""
    return url_host(inventory_address(host, seed))


def inventory_address(host: Host, name: str) -> str:
    """Where the other hosts reach host `name` of this inventory: its service_address, else its
    ssh_hostname, else its name (an IPv6 literal bare)."""
    return service_address(settings_for(host.state, name), host_data(host.inventory.get_host(name)))


def fleet_settings(state: State) -> dict[str, FleetSettings]:
    """All hosts' settings, validated once per pyinfra run (the first call does the work; the others wait for
    it: the release and pin checks ask the network, which lets every other host's greenlet in, and each
    validated the whole fleet again: N x N settings and N requests)."""
    if state not in _validated:
        with _validating.setdefault(state, gevent.lock.Semaphore()):
            if state not in _validated:
                _validated[state] = checked_fleet_settings(state)
    return _validated[state]


def checked_fleet_settings(state: State) -> dict[str, FleetSettings]:
    """Every host's settings, checked together with the pins and the release they name."""
    settings = validate_hosts(state.inventory)
    problems = pin_problems(settings)
    if problems:
        raise FleetError(
            "pinned models cannot be deployed; nothing was changed on any host:\n" + "\n".join(problems)
        )
    missing = release_problems(settings)
    if missing:
        raise FleetError(
            "the Ollama release cannot be downloaded; nothing was changed on any host:\n" + "\n".join(missing)
        )
    return settings


def settings_for(state: State, host_name: str) -> FleetSettings:
    """One host's settings; `state` must be the real State (`host.state`), not pyinfra's context proxy."""
    return fleet_settings(state)[host_name]
