"""Small shell helpers shared by the operations."""

from __future__ import annotations

import shlex

from pyinfra.api.command import FunctionCommand, StringCommand
from pyinfra.api.host import Host
from pyinfra.api.state import State


def fail_command(message: str) -> str:
    """A command that fails this host with `message` on stderr.

    Raising inside an operation while pyinfra executes aborts the run for every host; a failing command
    fails only the host concerned and prints the message with its output.
    """
    return f"echo {shlex.quote('ollama-fleet: ' + message)} >&2; exit 1"


def _run_showing_output(state: State, host: Host, command: str) -> bool:
    status, _ = host.run_shell_command(StringCommand(command), print_output=True)
    return status


def shown_command(command: str) -> FunctionCommand:
    """`command` run with its output echoed as it comes, whatever pyinfra's verbosity (progress, waits)."""
    return FunctionCommand(_run_showing_output, (command,), {})
