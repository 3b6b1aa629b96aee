"""The record of a host's last verified deploy, and the fast re-run's checks against it.

Like the deploy lock, the record is bookkeeping read and written through facts: writing it is not a change
of the host's configuration, so a no-change run still reports no change. It holds two digests (see
ollama_fleet.state_probe), never a setting or a secret.
"""

from __future__ import annotations

import shlex
from collections.abc import Generator
from dataclasses import dataclass
from typing import Any

from pyinfra.api.facts import FactBase
from pyinfra.api.operation import operation
from pyinfra.context import host

from ollama_fleet.operations.shell import fail_command


@dataclass(frozen=True)
class HostState:
    recorded_desired: str  # "" when no verified deploy recorded one
    recorded_state: str
    state: str

    def matches(self, desired: str) -> bool:
        """The host is as its last verified deploy of `desired` left it."""
        return (
            bool(self.recorded_state)
            and self.recorded_state == self.state
            and self.recorded_desired == desired
        )


class VerifiedState(FactBase[HostState]):
    """The record of the last verified deploy and the host's state digest now, in one command."""

    @staticmethod
    def default() -> HostState:
        return HostState("", "", "")  # the command failed (no such host yet under --dry): a whole deploy

    def command(self, record: str, probe: str) -> str:
        return f'echo "recorded $(head -1 {shlex.quote(record)} 2>/dev/null)"; echo "state $({probe})"'

    def process(self, output: list[str]) -> HostState:
        lines = {line.split(" ", 1)[0]: line.split()[1:] for line in output if line.strip()}
        recorded = [*lines.get("recorded", []), "", ""]
        return HostState(recorded[0], recorded[1], "".join(lines.get("state", [])[:1]))


class VerifiedStateRecorded(FactBase[str]):
    """Write `desired` and the host's state digest now as its last verified deploy (atomically)."""

    def command(self, record: str, desired: str, probe: str) -> str:
        path = shlex.quote(record)
        return (
            f"mkdir -p $(dirname {path}) && state=$({probe}) && "
            f'printf "%s %s\\n" {shlex.quote(desired)} "$state" > {path}.new && mv {path}.new {path} && '
            'echo "$state"'
        )

    def process(self, output: list[str]) -> str:
        return output[-1].strip() if output else ""


@operation()
def found_as_verified() -> Generator[Any, None, None]:
    """
    Say in the run's results that this host took the fast re-run: it was found, while planning, as its last
    verified deploy left it, so it gets no configuration operation.

    Nothing is read again after the lock: a change made between the two (by hand, or by another deploy that
    ran and recorded in between) is one the next run finds, as if it had come just after this one.
    """
    yield from ()


@operation(is_idempotent=False)
def verified_state_recorded(desired: str, record: str, probe: str) -> Generator[Any, None, None]:
    """
    Record this host as verified for `desired`, with its state digest now (call last, after the checks).

    + desired: the desired digest of this run (ollama_fleet.state_probe.desired_digest)
    + record, probe: the record's path and the state probe command
    """
    if not host.state.is_executing:
        return  # pyinfra's change detection (a run without -y) calls this while planning
    if not host.get_fact(VerifiedStateRecorded, record=record, desired=desired, probe=probe):
        yield fail_command(f"could not write {record}")
