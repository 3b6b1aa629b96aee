"""The last deploy's time and result, in node-exporter's textfile directory (ollama_fleet.host_state).

Bookkeeping, like the deploy lock and the verified-state record: written while pyinfra executes, in the
deploy lock's own commands, so a run that changes nothing still reports no change and pays no command for
it. The run writes "started, not passed" as it takes the lock and "passed" as it releases it, after the
host's client check; a run that fails (or is cut off) in between leaves ollama_fleet_deploy_success at 0
with its start time.
"""

from __future__ import annotations

import shlex

STARTED = "ollama_fleet_deploy_timestamp_seconds"
SUCCESS = "ollama_fleet_deploy_success"
RECORDED = "recorded"  # the last line of record_command's output once written


def record_text(started: str, success: int) -> str:
    """The textfile's content; `started` is shell text (the host's clock), expanded when written."""
    return (
        f"# HELP {STARTED} When the last deploy run started on this host.\\n# TYPE {STARTED} gauge\\n"
        f"{STARTED} {started}\\n"
        f"# HELP {SUCCESS} 1: the last deploy passed its client check; 0: it failed, or is running.\\n"
        f"# TYPE {SUCCESS} gauge\\n{SUCCESS} {success}\\n"
    )


def record_command(path: str, passed: bool) -> str:
    """Shell text writing the record at `path` atomically, then saying `recorded`: started now (`passed`
    False), or passed, keeping its start. The deploy lock's commands run it (operations/lock.py), so the
    record costs no command of its own."""
    target = shlex.quote(path)
    started = f"$(sed -n 's/^{STARTED} //p' {target} 2>/dev/null)" if passed else "$(date +%s)"
    text = record_text("$started", int(passed))
    return (
        f"mkdir -p $(dirname {target}) && started={started}; started=${{started:-$(date +%s)}} && "
        f'printf "{text}" > {target}.tmp && chmod 644 {target}.tmp && '
        f"mv {target}.tmp {target} && echo {RECORDED}"
    )
