"""Three settings of a pyinfra run that decide how its cost grows with the fleet (docs/scale.md).

- **Every host at once.** Unless told otherwise, pyinfra runs at most 20 x the controller's cores hosts at
  once (40 on 2 cores), so a larger fleet goes through each operation in waves, each as slow as its slowest
  host. A host's part of a run is mostly waiting for that host, so every host is run at once, up to what
  the open-files limit holds (`--parallel N` still decides when given).
- **The operation order, read without reading source files.** In CLI mode pyinfra orders each operation by
  the line numbers of the deploy code's call stack, read with `inspect.stack()`, which also loads each
  frame's source line and looks its module up among every loaded module: about 2.5 ms per operation per
  host, a quarter of a no-change run's controller CPU at 64 hosts. `operation_order_from_stack` returns the
  same line numbers from the frames themselves; it replaces pyinfra's only where pyinfra's is the one it was
  written against (KNOWN_ORDER_SOURCE), and pyinfra's own stays otherwise.
- **Idle connections that wake once a second, not ten times.** Each host's SSH connection stays open for
  the whole run, and paramiko's reader wakes every 0.1 s to see whether it should stop: 0.32 ms of
  controller CPU per host per second of the run, measured on 64 idle hosts. It made a first deploy's
  controller CPU per host grow with the run's length (here, with the fleet: 64 hosts share 2 cores), and
  at 1,000 hosts it is a third of a core spent waiting. At 1 s it is 0.14 ms (the rest is pyinfra's own).
  Nothing else waits on it: a closed connection wakes the reader at once.
"""

from __future__ import annotations

import hashlib
import importlib
import inspect
import sys
from typing import Any


def every_host_at_once(cap: int) -> None:
    """Run up to `cap` hosts at once (what the open-files limit holds), unless `--parallel N` says: it is
    applied after config.py, which calls this while pyinfra's run config is set."""
    from pyinfra.context import config, ctx_config

    if ctx_config.isset() and not config.PARALLEL:  # type: ignore[no-untyped-call]
        config.PARALLEL = cap


# sha256 of pyinfra.api.util.get_operation_order_from_stack's source (pyinfra 3.10): the behaviour
# operation_order_from_stack reproduces. tests/unit/test_pyinfra_run.py compares the two on real stacks.
KNOWN_ORDER_SOURCE = "f4807f61585570e091fd453c7552d9e2b49329555f07f395a8e8f1d2a398a0b2"


def order_source_digest(function: Any) -> str:
    return hashlib.sha256(inspect.getsource(function).encode()).hexdigest()


def operation_order_from_stack(state: Any) -> list[int]:
    """pyinfra's get_operation_order_from_stack, from each frame's code filename and line number (what
    `inspect.getframeinfo` reports for a frame, without reading its source)."""
    import pyinfra
    from pyinfra.api.util import PYINFRA_INSTALL_DIR

    frames = []
    frame = sys._getframe(1)  # the caller's: pyinfra's list starts with its own frame, which it skips
    while frame is not None:
        frames.append(frame)
        frame = frame.f_back  # type: ignore[assignment]
    frames.reverse()  # outermost first, as pyinfra's reversed(stack())
    i = 0
    if state.current_deploy_filename:
        # pyinfra's loop, not finding the file, ends on its own frame (which it skips): nothing from these
        i = next(
            (n for n, each in enumerate(frames) if each.f_code.co_filename == state.current_deploy_filename),
            len(frames),
        )
    line_numbers = [state.current_op_file_number] if pyinfra.is_cli else []
    for each in frames[i:]:
        if not each.f_code.co_filename.startswith(PYINFRA_INSTALL_DIR):
            line_numbers.append(each.f_lineno)
    return line_numbers


def read_operation_order_from_frames() -> bool:
    """Use operation_order_from_stack for this process's pyinfra runs; False (pyinfra's own kept) when the
    installed pyinfra's function is not the known one."""
    # By module: the name pyinfra.api.operation is pyinfra's `operation` decorator, not its module.
    operation, util = (importlib.import_module(f"pyinfra.api.{name}") for name in ("operation", "util"))
    if operation.get_operation_order_from_stack is operation_order_from_stack:
        return True
    if order_source_digest(util.get_operation_order_from_stack) != KNOWN_ORDER_SOURCE:
        return False
    operation.get_operation_order_from_stack = operation_order_from_stack  # type: ignore[attr-defined]
    return True


IDLE_CHECK_SECONDS = 1.0
PARAMIKO_IDLE_CHECK = 0.1  # paramiko's Transport._active_check_timeout (2.x, 3.x, 4.x)


def quieter_idle_connections() -> bool:
    """Make SSH connections opened from now on wake every IDLE_CHECK_SECONDS when idle; False (paramiko's
    own kept) when paramiko no longer has the setting this was measured with."""
    from paramiko.transport import Transport

    current = getattr(Transport, "_active_check_timeout", None)
    if current not in (PARAMIKO_IDLE_CHECK, IDLE_CHECK_SECONDS):
        return False
    setattr(Transport, "_active_check_timeout", IDLE_CHECK_SECONDS)  # noqa: B010  # paramiko's, untyped
    return True
