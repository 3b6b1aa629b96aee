"""Small shell helpers shared by the operations."""

from __future__ import annotations

import shlex


def fail_command(message: str) -> str:
    """A command that fails this host with `message` on stderr.

    Raising inside an operation while pyinfra executes aborts the run for every host; a failing command
    fails only the host concerned and prints the message with its output.
    """
    return f"echo {shlex.quote('ollama-fleet: ' + message)} >&2; exit 1"
