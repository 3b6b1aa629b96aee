"""One deploy at a time per host: a lock directory in /run, taken when the run starts executing on the host.

The lock is bookkeeping, not configuration: taking and releasing it is read and written through facts
while pyinfra executes, so a run that changes nothing still reports no change, and `--dry` takes no lock.
While a run holds the lock it touches it every LOCK_HEARTBEAT_SECONDS (a heartbeat from the controller, so
a deploy busy for hours, e.g. pulling a large model, keeps its lock). A lock is stale when its heartbeat is
older than LOCK_STALE_SECONDS (its controller died, or lost the host), or when it was taken from this
controller by a process that no longer runs (a deploy that failed or was killed); /run is emptied when the
host reboots.
"""

from __future__ import annotations

import functools
import getpass
import os
import shlex
import socket
import time
import uuid
from collections.abc import Callable, Generator
from dataclasses import dataclass

import gevent
import gevent.event
from pyinfra import logger
from pyinfra.api.command import StringCommand
from pyinfra.api.facts import FactBase
from pyinfra.api.host import Host
from pyinfra.api.operation import operation
from pyinfra.context import ctx_host, host

from ollama_fleet.operations.deploy_record import RECORDED, record_command
from ollama_fleet.operations.shell import fail_command, operation_connector_arguments

LOCK_PATH = "/run/ollama-fleet/deploy.lock"
LOCK_HEARTBEAT_SECONDS = 15
LOCK_STALE_SECONDS = 300  # twenty heartbeats missed: the run that held it is gone or cut off from the host


@functools.cache
def this_holder() -> str:
    """Who holds the lock: one line naming the controller, process and user, unique to this run."""
    return (
        f"{socket.gethostname()} pid={os.getpid()} user={getpass.getuser()} "
        f"since={time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime())} run={uuid.uuid4().hex[:12]}"
    )


@dataclass(frozen=True)
class LockState:
    acquired: bool
    holder: str = ""
    age_seconds: int = 0  # since the holder's last heartbeat (the lock directory's mtime)
    then: str = ""  # the last line `then` printed, run once the lock was this run's (LockTaken)


def _parse(output: list[str]) -> LockState:
    line = output[0].strip() if output else ""
    if line == "acquired":
        return LockState(acquired=True, then=output[-1].strip() if len(output) > 1 else "")
    if not line.startswith("held "):
        return LockState(acquired=False, holder=line)
    _, age, holder = [*line.split(" ", 2), "", ""][:3]
    return LockState(acquired=False, holder=holder, age_seconds=int(age) if age.isdigit() else 0)


def _holds(lock: str, who: str) -> str:
    return f'[ "$(cat {lock}/holder 2>/dev/null)" = {who} ]'


def _then_if_ours(take: str, lock: str, who: str, then: str) -> str:
    """`take`, then `then` in the same command if the lock is now `who`'s (its output after take's)."""
    return f"{take}; if {_holds(lock, who)}; then {then}; fi" if then else take


def _held_line(lock: str) -> str:
    return f'echo "held $(( $(date +%s) - $(stat -c %Y {lock}) )) $(cat {lock}/holder 2>/dev/null)"'


class LockTaken(FactBase[LockState]):
    """Take the deploy lock for `holder` (atomic mkdir), or say who holds it and for how long; `then`
    (shell text) runs in the same command once the lock is this run's."""

    def command(self, path: str, holder: str, then: str = "") -> str:
        lock, who = shlex.quote(path), shlex.quote(holder)
        take = (
            f"mkdir -p -m 700 $(dirname {lock}); "
            f"if mkdir -m 700 {lock} 2>/dev/null; then printf '%s\\n' {who} > {lock}/holder; echo acquired; "
            f"elif {_holds(lock, who)}; then echo acquired; "
            f"else {_held_line(lock)}; fi"
        )
        return _then_if_ours(take, lock, who, then)

    def process(self, output: list[str]) -> LockState:
        return _parse(output)


class LockTakenOver(FactBase[LockState]):
    """Replace a stale lock held by `stale` with `holder` (nothing happens if its holder changed since);
    `then` as LockTaken's."""

    def command(self, path: str, holder: str, stale: str, then: str = "") -> str:
        lock, who, old = shlex.quote(path), shlex.quote(holder), shlex.quote(stale)
        take = (
            f"if {_holds(lock, old)}; then "
            f"printf '%s\\n' {who} > {lock}/holder.new && mv {lock}/holder.new {lock}/holder && "
            f"touch {lock} && echo acquired; else {_held_line(lock)}; fi"
        )
        return _then_if_ours(take, lock, who, then)

    def process(self, output: list[str]) -> LockState:
        return _parse(output)


class LockReleased(FactBase[tuple[str, ...]]):
    """Remove the lock if `holder` holds it; `first` (shell text) runs in the same command before. Its lines:
    what `first` printed, then `released`."""

    def command(self, path: str, holder: str, first: str = "") -> str:
        lock, who = shlex.quote(path), shlex.quote(holder)
        release = f"if {_holds(lock, who)}; then rm -rf {lock}; fi; echo released"
        return f"{{ {first}; }}; {release}" if first else release

    def process(self, output: list[str]) -> tuple[str, ...]:
        return tuple(line.strip() for line in output)


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def stale_reason(
    lock: LockState,
    stale_seconds: int = LOCK_STALE_SECONDS,
    controller: str | None = None,
    alive: Callable[[int], bool] = pid_alive,
) -> str | None:
    """Why a held lock may be taken over, or None while its holder may still be deploying."""
    if lock.age_seconds > stale_seconds:
        return (
            f"its last heartbeat was {lock.age_seconds} s ago (a deploy holding it beats every "
            f"{LOCK_HEARTBEAT_SECONDS} s)"
        )
    fields = lock.holder.split()
    pid = next((f.removeprefix("pid=") for f in fields if f.startswith("pid=")), "")
    here = controller if controller is not None else socket.gethostname()
    if fields and fields[0] == here and pid.isdigit() and not alive(int(pid)):
        return f"its deploy (pid {pid} on this controller) no longer runs"
    return None


def held_message(lock: LockState) -> str:
    return (
        f"another deploy holds the deploy lock {LOCK_PATH} (held by {lock.holder or '?'}, last heartbeat "
        f"{lock.age_seconds} s ago); wait for it to finish. If that deploy is gone, remove the lock on the "
        f"host (it is taken over once its heartbeat is {LOCK_STALE_SECONDS} s old)"
    )


class Heartbeat:
    """Touches the lock every `every` seconds while its holder still holds it (a greenlet: pyinfra runs
    on gevent), through `beat`, which says whether the lock is still this run's."""

    def __init__(self, beat: Callable[[], bool], every: float = LOCK_HEARTBEAT_SECONDS) -> None:
        self.stopped = gevent.event.Event()
        self.greenlet = gevent.spawn(self._run, beat, every)

    def _run(self, beat: Callable[[], bool], every: float) -> None:
        while not self.stopped.wait(every):
            if not beat():
                return

    def stop(self) -> None:
        """Stop beating, after a beat under way finished (never cut off halfway through a command)."""
        self.stopped.set()
        self.greenlet.join(timeout=30)


def heartbeat_command(path: str, holder: str) -> str:
    """Refresh the lock's mtime if `holder` still holds it; says `beat`, else `lost`."""
    lock, who = shlex.quote(path), shlex.quote(holder)
    return f"if {_holds(lock, who)}; then touch {lock} && echo beat; else echo lost; fi"


_heartbeats: dict[str, Heartbeat] = {}  # host name -> the heartbeat of the lock this run holds there


def _start_heartbeat(on: Host, holder: str) -> None:
    command = StringCommand(heartbeat_command(LOCK_PATH, holder))
    arguments = operation_connector_arguments()  # the heartbeat's command runs as the lock's did

    def beat() -> bool:
        if on in on.state.failed_hosts:
            return False  # the run stopped on this host: its lock goes stale (and its process, once done)
        ok, output = on.run_shell_command(command, **arguments)
        if ok and output.stdout_lines[-1:] == ["lost"]:
            logger.warning(f"{on.print_prefix}the deploy lock is no longer this run's: heartbeat stopped")
            return False
        return True  # a failed beat (a busy connection) is tried again at the next one

    if on.name not in _heartbeats:
        _heartbeats[on.name] = Heartbeat(beat)


@operation()
def deploy_lock_taken(holder: str, record: str | None = None) -> Generator[str, None, None]:
    """
    Take this host's deploy lock while executing (no change reported); fail the host if another run has it.

    + holder: this run's holder line (`this_holder()`)
    + record: the deploy record's path (operations/deploy_record.py), written "started" in the same command
    """
    if not host.state.is_executing:
        return
    then = record_command(record, passed=False) if record else ""
    lock: LockState = host.get_fact(LockTaken, path=LOCK_PATH, holder=holder, then=then)
    stale = None if lock.acquired else stale_reason(lock)
    if stale:
        logger.warning(f"{host.print_prefix}taking over the stale deploy lock of {lock.holder}: {stale}")
        lock = host.get_fact(LockTakenOver, path=LOCK_PATH, holder=holder, stale=lock.holder, then=then)
    if not lock.acquired:
        yield fail_command(held_message(lock))
        return
    _start_heartbeat(ctx_host.get(), holder)  # type: ignore[no-untyped-call]  # the Host itself: `host` resolves only in this greenlet
    if record and lock.then != RECORDED:
        yield fail_command(f"could not write {record}")


@operation()
def deploy_lock_released(holder: str, record: str | None = None) -> Generator[str, None, None]:
    """
    Release this host's deploy lock while executing (no change reported).

    + holder: this run's holder line
    + record: the deploy record's path, written "passed" in the same command, before the release
    """
    if not host.state.is_executing:
        return
    heartbeat = _heartbeats.pop(host.name, None)
    if heartbeat is not None:
        heartbeat.stop()
    first = record_command(record, passed=True) if record else ""
    said = host.get_fact(LockReleased, path=LOCK_PATH, holder=holder, first=first)
    if record and RECORDED not in said:
        yield fail_command(f"could not write {record}")
