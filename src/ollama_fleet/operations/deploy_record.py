"""The last deploy's time and result, in node-exporter's textfile directory (ollama_fleet.host_state).

Bookkeeping, like the deploy lock and the verified-state record: written through facts while pyinfra
executes, so a run that changes nothing still reports no change. The run writes "started, not passed" once
it holds the lock and "passed" after the host's client check; a run that fails (or is cut off) in between
leaves ollama_fleet_deploy_success at 0 with its start time.
"""

from __future__ import annotations

import shlex
from collections.abc import Generator
from typing import Any

from pyinfra.api.facts import FactBase
from pyinfra.api.operation import operation
from pyinfra.context import host

from ollama_fleet.operations.shell import fail_command

STARTED = "ollama_fleet_deploy_timestamp_seconds"
SUCCESS = "ollama_fleet_deploy_success"


def record_text(started: str, success: int) -> str:
    """The textfile's content; `started` is shell text (the host's clock), expanded when written."""
    return (
        f"# HELP {STARTED} When the last deploy run started on this host.\\n# TYPE {STARTED} gauge\\n"
        f"{STARTED} {started}\\n"
        f"# HELP {SUCCESS} 1: the last deploy passed its client check; 0: it failed, or is running.\\n"
        f"# TYPE {SUCCESS} gauge\\n{SUCCESS} {success}\\n"
    )


class DeployRecorded(FactBase[bool]):
    """Write the record at `path` atomically: started now (`passed` False), or passed, keeping its start."""

    def command(self, path: str, passed: bool) -> str:
        target = shlex.quote(path)
        started = f"$(sed -n 's/^{STARTED} //p' {target} 2>/dev/null)" if passed else "$(date +%s)"
        text = record_text("$started", int(passed))
        return (
            f"mkdir -p $(dirname {target}) && started={started}; started=${{started:-$(date +%s)}} && "
            f'printf "{text}" > {target}.tmp && chmod 644 {target}.tmp && '
            f"mv {target}.tmp {target} && echo recorded"
        )

    def process(self, output: list[str]) -> bool:
        return bool(output) and output[-1].strip() == "recorded"


@operation(is_idempotent=False)
def deploy_recorded(path: str, passed: bool) -> Generator[Any, None, None]:
    """
    Record this deploy run on the host: started (passed False, first) or passed (after the checks).

    + path: the textfile (host_state.DEPLOY_TEXTFILE)
    + passed: the run passed its client check
    """
    if not host.state.is_executing:
        return  # pyinfra's change detection calls this while planning
    if not host.get_fact(DeployRecorded, path=path, passed=passed):
        yield fail_command(f"could not write {path}")
