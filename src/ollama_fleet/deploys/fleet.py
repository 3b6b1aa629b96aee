"""Settings for the whole inventory, validated before the first operation is added for any host.

pyinfra loads a deploy file once per host, in parallel greenlets, after connecting. The first host to get
here validates every host of the inventory (pure Python, so no other greenlet runs meanwhile) and raises
one error naming each bad host, key, value and fix: no operation exists yet for any host, so nothing is
changed anywhere, and pyinfra exits non-zero.
"""

from __future__ import annotations

import weakref
from collections.abc import Iterable, Iterator
from typing import Any, TypeVar

from pyinfra import context
from pyinfra.api.exceptions import PyinfraError
from pyinfra.api.host import Host
from pyinfra.api.state import State

from ollama_fleet.settings import FleetSettings, SettingsError, settings_for_host

T = TypeVar("T")


class FleetError(PyinfraError):
    """A problem found before any host was changed (pyinfra prints it without a traceback)."""


_validated: weakref.WeakKeyDictionary[State, dict[str, FleetSettings]] = weakref.WeakKeyDictionary()


def host_data(host: Host) -> dict[str, Any]:
    """All data of a host, merged the way pyinfra looks keys up (host over groups over defaults)."""
    data: dict[str, Any] = host.data.dict()  # type: ignore[no-untyped-call]  # untyped in pyinfra 3.10
    return data


def each(items: Iterable[T]) -> Iterator[T]:
    """`host.loop` (typed): operations called in a loop get one operation per position on every host."""
    looped: Iterator[T] = context.host.loop(items)  # type: ignore[no-untyped-call]  # untyped in pyinfra
    return looped


def validate_hosts(hosts: Iterable[Host]) -> dict[str, FleetSettings]:
    """Every host's settings, or FleetError listing the problems of every bad host."""
    settings, errors = {}, []
    for host in hosts:
        try:
            settings[host.name] = settings_for_host(host.name, host_data(host))
        except SettingsError as exc:
            errors.append(str(exc))
    if errors:
        raise FleetError("settings are invalid; nothing was changed on any host:\n" + "\n".join(errors))
    return settings


def fleet_settings(state: State) -> dict[str, FleetSettings]:
    """All hosts' settings, validated once per pyinfra run (the first call does the work)."""
    if state not in _validated:
        _validated[state] = validate_hosts(state.inventory)
    return _validated[state]


def settings_for(state: State, host_name: str) -> FleetSettings:
    """One host's settings; `state` must be the real State (`host.state`), not pyinfra's context proxy."""
    return fleet_settings(state)[host_name]
