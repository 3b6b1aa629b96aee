"""Small shell helpers shared by the operations."""

from __future__ import annotations

import shlex
from typing import Any

from pyinfra.api.arguments import CONNECTOR_ARGUMENT_KEYS
from pyinfra.api.command import FunctionCommand, StringCommand
from pyinfra.api.host import Host
from pyinfra.api.state import State
from pyinfra.context import host as current_host


def fail_command(message: str) -> str:
    """A command that fails this host with `message` on stderr.

    Raising inside an operation while pyinfra executes aborts the run for every host; a failing command
    fails only the host concerned and prints the message with its output.
    """
    return f"echo {shlex.quote('ollama-fleet: ' + message)} >&2; exit 1"


def operation_connector_arguments() -> dict[str, Any]:
    """The running operation's _sudo, _su_user, ...: for commands an operation runs itself (while pyinfra
    executes), so they run as the operation's own commands would."""
    arguments: dict[str, Any] = dict(current_host.current_op_global_arguments or {})
    return {key: arguments[key] for key in CONNECTOR_ARGUMENT_KEYS if key in arguments}


class HostCommand(FunctionCommand):
    """A FunctionCommand whose function gets the command's connector arguments (_sudo, ...) after the
    state and the host, to run its commands as the operation's own (a plain FunctionCommand drops them)."""

    def execute(self, state: State, host: Host, connector_arguments: Any) -> Any:
        return self.function(state, host, dict(connector_arguments), *self.args, **self.kwargs)


def _run_showing_output(state: State, host: Host, arguments: dict[str, Any], command: str) -> bool:
    status, _ = host.run_shell_command(StringCommand(command), print_output=True, **arguments)
    return status


def shown_command(command: str) -> FunctionCommand:
    """`command` run with its output echoed as it comes, whatever pyinfra's verbosity (progress, waits)."""
    return HostCommand(_run_showing_output, (command,), {})
