"""Facts read while planning, asked of a host in one SSH command instead of one command each.

A no-change run of a large fleet is mostly round trips: planning asked each host five questions one after
another (its OS, the CA it carries, its IPv6 addresses, its GPUs, its state digest). `read_together` asks
them in one command and keeps the answers for `planned_fact`, which the planning code calls where it called
`host.get_fact`. A part whose command fails is not kept: `planned_fact` then asks it alone through
pyinfra, which reports the failure as before. Answers are kept only until `forget_planned_facts` (the end of
the host's planning): a fact read while executing is always read live.
"""

from __future__ import annotations

import weakref
from collections.abc import Hashable, Iterable
from typing import Any, TypeVar

from pyinfra.api.facts import FactBase
from pyinfra.api.host import Host
from pyinfra.api.state import State

T = TypeVar("T")
MARK = "@@ollama-fleet-fact"

FactRequest = tuple[type[FactBase[Any]], dict[str, Any]]

# Per run, per host name (pyinfra's context `host` is a proxy: keyed by the real State).
_kept: weakref.WeakKeyDictionary[State, dict[str, dict[Hashable, Any]]] = weakref.WeakKeyDictionary()


def _key(cls: type[FactBase[Any]], kwargs: dict[str, Any]) -> Hashable:
    return (cls, tuple(sorted((k, repr(v)) for k, v in kwargs.items())))


def together_command(commands: Iterable[str]) -> str:
    """Each command in its own subshell, its stdout then a mark line with its index and exit status (its
    stderr dropped, as pyinfra keeps a fact's stderr out of what it processes)."""
    parts = [
        f"out=$( {{ {command}\n}} 2>/dev/null ); st=$?; "
        f'[ -n "$out" ] && printf "%s\\n" "$out"; echo "{MARK} {i} $st"'
        for i, command in enumerate(command.strip() or "true" for command in commands)
    ]
    return "; ".join(parts)


def split_output(output: list[str]) -> list[tuple[int, list[str]]]:
    """(exit status, stdout lines) of each command up to the last mark (a part cut off has none)."""
    found: list[tuple[int, list[str]]] = []
    lines: list[str] = []
    for line in output:
        fields = line.split()
        if len(fields) == 3 and fields[0] == MARK and fields[1] == str(len(found)):
            found.append((int(fields[2]) if fields[2].isdigit() else 255, lines))
            lines = []
        else:
            lines.append(line)
    return found


class FactsTogether(FactBase[list[tuple[int, list[str]]]]):
    """The commands of several facts, run in one command: each one's exit status and stdout lines."""

    @staticmethod
    def default() -> list[tuple[int, list[str]]]:
        return []

    def command(self, commands: tuple[str, ...]) -> str:
        return together_command(commands)

    def process(self, output: list[str]) -> list[tuple[int, list[str]]]:
        return split_output(output)


def read_together(host: Host, requests: Iterable[FactRequest]) -> None:
    """Ask `host` every fact of `requests` (fact class, its arguments) in one command, and keep each answer
    for `planned_fact`."""
    requests = list(requests)
    facts = [cls() for cls, _ in requests]
    commands = tuple(str(fact.command(**kwargs)) for fact, (_, kwargs) in zip(facts, requests, strict=True))
    answers = host.get_fact(FactsTogether, commands=commands)
    kept = _kept.setdefault(host.state, {}).setdefault(host.name, {})
    for fact, (cls, kwargs), (status, lines) in zip(facts, requests, answers, strict=False):
        if status == 0:
            kept[_key(cls, kwargs)] = fact.process(lines) if lines else fact.default()


def planned_fact(host: Host, cls: type[FactBase[T]], **kwargs: Any) -> T:
    """The fact as `read_together` found it on this host, else asked of the host now (host.get_fact)."""
    kept = _kept.get(host.state, {}).get(host.name, {})
    key = _key(cls, kwargs)
    if key in kept:
        value: T = kept.pop(key)
        return value
    asked: T = host.get_fact(cls, **kwargs)
    return asked


def forget_planned_facts(host: Host) -> None:
    _kept.get(host.state, {}).pop(host.name, None)
