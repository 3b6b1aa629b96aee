"""`ollama-fleet status`: the last result of each host's health timer, read from its journal over SSH."""

from __future__ import annotations

import json
import shlex
import subprocess
import time
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from ollama_fleet.health import TAG, TIMER
from ollama_fleet.settings import timespan_seconds
from ollama_fleet.verify.report import format_table
from ollama_fleet.verify.targets import Target

SSH_TIMEOUT = 30.0
REMOTE_COMMAND = (
    f"journalctl -t {TAG} -n 1 -o json --no-pager -q; echo; echo timer=$(systemctl is-active {TIMER})"
)


@dataclass(frozen=True)
class HealthStatus:
    host: str
    state: str  # ok | FAIL | stale | none (never ran) | unreachable
    message: str
    age_seconds: float | None = None
    timer: str = ""  # systemctl is-active of the timer

    @property
    def ok(self) -> bool:
        return self.state == "ok"


def ssh_argv(target: Target, command: str) -> list[str]:
    """ssh to the host the way the inventory describes it (pyinfra's ssh_* data keys)."""
    data = target.data
    argv = ["ssh", "-o", "BatchMode=yes", "-o", "ConnectTimeout=10"]
    if data.get("ssh_config_file"):
        argv += ["-F", str(data["ssh_config_file"])]
    if data.get("ssh_key"):
        argv += ["-i", str(data["ssh_key"]), "-o", "IdentitiesOnly=yes"]
    if data.get("ssh_port"):
        argv += ["-p", str(data["ssh_port"])]
    if data.get("ssh_known_hosts_file"):
        argv += ["-o", f"UserKnownHostsFile={data['ssh_known_hosts_file']}"]
    strict = data.get("ssh_strict_host_key_checking")
    if strict is not None:
        argv += ["-o", f"StrictHostKeyChecking={strict}", "-o", "LogLevel=ERROR"]
    user = data.get("ssh_user")
    destination = f"{user}@{target.address}" if user else target.address
    remote = f"sudo -n sh -c {shlex.quote(command)}" if data.get("_sudo") else command
    return [*argv, "--", destination, remote]


def run_ssh(target: Target, command: str) -> tuple[str, str]:
    """`command` on the host over SSH: (stdout, why SSH itself failed, or "")."""
    try:
        done = subprocess.run(
            ssh_argv(target, command), capture_output=True, text=True, timeout=SSH_TIMEOUT, check=False
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        return "", f"ssh failed: {exc}"
    if done.returncode == 255:
        return "", f"ssh failed: {done.stderr.strip()[-200:]}"
    return done.stdout, ""


def stale_after(interval: str, timeout_seconds: int) -> float:
    """A result older than two intervals (plus the check's own time) means the timer stopped running."""
    return 2 * timespan_seconds(interval) + 3 * timeout_seconds + 30


def parse_status(host: str, output: str, now: float, stale_seconds: float) -> HealthStatus:
    """HealthStatus from the remote command's output: one journal entry as JSON, then `timer=<state>`."""
    entry: Mapping[str, Any] | None = None
    timer = ""
    for line in output.splitlines():
        if line.startswith("timer="):
            timer = line.removeprefix("timer=").strip()
        elif line.startswith("{"):
            entry = json.loads(line)
    if entry is None:
        return HealthStatus(
            host, "none", f"no {TAG} entry in the journal yet (timer {timer or '?'})", timer=timer
        )
    message = _journal_text(entry.get("MESSAGE", ""))
    age = now - int(entry.get("__REALTIME_TIMESTAMP", 0)) / 1e6
    if age > stale_seconds:
        return HealthStatus(
            host, "stale", f"last result {age:.0f} s old (timer {timer}): {message}", age, timer
        )
    state = "ok" if message.startswith("ok") else "FAIL"
    return HealthStatus(host, state, message, age, timer)


def _journal_text(value: Any) -> str:
    """journalctl -o json gives MESSAGE as a string, or as a list of byte values when it is not UTF-8."""
    if isinstance(value, list):
        return bytes(value).decode("utf-8", errors="replace")
    return str(value)


def read_status(target: Target) -> HealthStatus:
    health = target.settings.health
    if not health.enabled:
        return HealthStatus(target.name, "ok", "health timer disabled by settings (health_enabled false)")
    if not target.settings.serves_api:
        return HealthStatus(target.name, "ok", "no health timer: gateway_only, no Ollama to check")
    output, failure = run_ssh(target, REMOTE_COMMAND)
    if failure:
        return HealthStatus(target.name, "unreachable", failure)
    try:
        return parse_status(
            target.name, output, time.time(), stale_after(health.interval, health.timeout_seconds)
        )
    except ValueError as exc:
        return HealthStatus(target.name, "FAIL", f"cannot read the journal entry: {exc}")


def fleet_status(targets: Sequence[Target]) -> list[HealthStatus]:
    with ThreadPoolExecutor(max_workers=max(1, min(16, len(targets)))) as pool:
        return list(pool.map(read_status, targets))


def render_status(statuses: Sequence[HealthStatus]) -> str:
    rows = [["host", "state", "age", "timer", "last result"]]
    for s in statuses:
        age = f"{s.age_seconds:.0f} s" if s.age_seconds is not None else "-"
        rows.append([s.host, s.state, age, s.timer or "-", s.message])
    return "\n".join(format_table(rows))


def status_json(statuses: Sequence[HealthStatus], view: Mapping[str, Any] | None = None) -> str:
    """The health results; `view` (fleet_view.view_json): the dashboard's figures, under "view"."""
    return json.dumps(
        {
            "ok": all(s.ok for s in statuses),
            **({"view": view} if view is not None else {}),
            "hosts": [
                {
                    "host": s.host,
                    "ok": s.ok,
                    "state": s.state,
                    "age_seconds": None if s.age_seconds is None else round(s.age_seconds, 1),
                    "timer": s.timer,
                    "message": s.message,
                }
                for s in statuses
            ],
        },
        indent=2,
    )
