"""Drive pyinfra batch by batch: deploy a batch in parallel (`--limit` per host), verify it, then go on.

Before a batch, every host of it must be reachable over SSH (else the rollout halts there, naming the host
and why, and no host of the batch is touched); after it, each host must pass the full `verify`. The rollout
halts once more hosts failed than `max_unavailable` allows, leaving every later batch untouched. The state
file is written after each step, so `--resume` continues from the first unfinished batch.
"""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from ollama_fleet.deploys.drain import DRAIN_KEY, WAIT_KEY
from ollama_fleet.rollout import state as st
from ollama_fleet.rollout.plan import should_halt
from ollama_fleet.verify.context import make_client
from ollama_fleet.verify.fleet import verify_fleet
from ollama_fleet.verify.report import failure_summary
from ollama_fleet.verify.targets import Target

SSH_TIMEOUT = 5.0
# pyinfra output lines worth showing during a rollout (the rest is in the state file's reasons)
NOTABLE = re.compile(
    r"ollama-fleet:|must restart|must reload|client check|rolled back|Could not connect|Error|gateway:"
)
DRAIN_DEPLOY = str(resources.files("ollama_fleet") / "pyinfra_files" / "gateway_drain.py")

Log = Callable[[str], None]


@dataclass(frozen=True)
class RolloutOptions:
    inventory: str
    deploy: str
    group_data: tuple[str, ...] = ()
    max_unavailable: int = 0
    timeout: float = 30.0
    verbose: bool = False
    gateways: tuple[str, ...] = ()  # gateway hosts that drain each batch's hosts first (none: no drain)
    drain_wait: int = 300  # seconds a drain waits for the gateway's requests in flight


def ssh_reachable(target: Target, timeout: float = SSH_TIMEOUT) -> str | None:
    """None when the host's SSH port accepts a connection, else why not."""
    port = int(target.data.get("ssh_port") or 22)
    try:
        with socket.create_connection((target.address, port), timeout=timeout):
            return None
    except OSError as exc:
        return f"unreachable: SSH {target.address}:{port}: {exc.strerror or exc}"


def serving_version(target: Target, timeout: float) -> str:
    """The version the host reports through its proxy, as a client sees it ("" when it does not answer, and
    for a gateway_only host, which runs no Ollama: its gateway would answer for another host)."""
    if target.is_gateway:
        return ""
    key = target.settings.auth.keys[0].key.get_secret_value() if target.settings.auth.keys else None
    try:
        with make_client(target, timeout) as client:
            headers = {"Authorization": f"Bearer {key}"} if key else {}
            response = client.get("/api/version", headers=headers)
            return str(response.json().get("version", "")) if response.status_code == 200 else ""
    except Exception:
        return ""


def run_pyinfra(
    options: RolloutOptions,
    hosts: Sequence[str],
    log: Log,
    deploy: str | None = None,
    data: Mapping[str, object] | None = None,
) -> tuple[set[str], dict[str, str]]:
    """Deploy `hosts` in one pyinfra run (`deploy`, else the rollout's; `data` as `--data` JSON values);
    returns the failed hosts and a reason for each."""
    argv = [str(Path(sys.executable).parent / "pyinfra"), "-y", "--json"]
    argv += [arg for d in options.group_data for arg in ("--group-data", d)]
    argv += [arg for k, v in (data or {}).items() for arg in ("--data", f"{k}={json.dumps(v)}")]
    argv += [arg for h in hosts for arg in ("--limit", h)]
    argv += [options.inventory, deploy or options.deploy]
    env = {**os.environ, "PYINFRA_PROGRESS": "off"}
    proc = subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert proc.stderr is not None and proc.stdout is not None
    reasons: dict[str, str] = {}
    for line in proc.stderr:
        text = line.rstrip()
        match = re.match(r"\s*\[([^\]]+)\]\s*(.*)", text)
        if match and match.group(1) in hosts and "ollama-fleet:" in text:
            reasons[match.group(1)] = match.group(2).removeprefix("ollama-fleet: ")
        elif match and match.group(1) in hosts and "Could not connect" in text:
            reasons.setdefault(match.group(1), match.group(2))
        if options.verbose or NOTABLE.search(text):
            log(f"    {text.strip()}")
    stdout = proc.stdout.read()
    code = proc.wait()
    failed = _failed_hosts(stdout, hosts, code)
    for host in failed:
        reasons.setdefault(host, f"the deploy failed on it (pyinfra exit {code})")
    return failed, reasons


def _failed_hosts(stdout: str, hosts: Sequence[str], code: int) -> set[str]:
    try:
        results = json.loads(stdout).get("results") or {}
        failed = set(results.get("failed_hosts") or [])
    except ValueError:
        failed = set()
    if code != 0 and not failed:
        return set(hosts)  # pyinfra stopped before it could say which (e.g. no host connected)
    return failed & set(hosts)


def drain_at_gateways(options: RolloutOptions, drained: Sequence[str], log: Log) -> str | None:
    """Make the gateways send nothing to `drained` (and again to every other host a drain took out), waiting
    for the requests in flight; None when done, else why not (no fleet host was touched)."""
    if not options.gateways:
        return None
    if drained:
        log(f"  gateway: {', '.join(drained)} out of rotation at {', '.join(options.gateways)}")
    else:
        log(f"  gateway: every host back in rotation at {', '.join(options.gateways)}")
    data = {DRAIN_KEY: list(drained), WAIT_KEY: options.drain_wait}
    failed, reasons = run_pyinfra(options, options.gateways, log, deploy=DRAIN_DEPLOY, data=data)
    if not failed:
        return None
    return "; ".join(f"gateway {g}: {reasons[g]}" for g in sorted(failed))


def verify_batch(targets: Sequence[Target], timeout: float) -> dict[str, str]:
    """Host -> failure summary, for the hosts that fail the full client check (hosts checked at once)."""
    report = verify_fleet(targets, timeout=timeout)
    by_name = {t.name: t for t in targets}
    failures = {
        by_name[h.host].settings.host: failure_summary(by_name[h.host], list(h.results)) for h in report.hosts
    }
    return {host: f"verify failed: {summary}" for host, summary in failures.items() if summary}


def run_rollout(
    state: st.RolloutState, targets: dict[str, Target], options: RolloutOptions, path: Path, log: Log
) -> st.RolloutState:
    """Deploy every batch from `state.next_batch` on, saving the state after each step."""
    state.status = st.RUNNING
    total = len(state.batches)
    while state.next_batch < total:
        index = state.next_batch
        batch = state.batches[index]
        log(f"batch {index + 1}/{total}: {', '.join(batch)}")
        for host in batch:
            state.hosts[host].version_before = serving_version(targets[host], options.timeout)
            unreachable = ssh_reachable(targets[host])
            if unreachable:
                return _halt(state, path, log, f"{host} is {unreachable}; batch {index + 1} not started")
        started = time.monotonic()
        not_drained = drain_at_gateways(options, [*_failed(state), *batch], log)
        if not_drained:
            return _halt(state, path, log, f"{not_drained}; batch {index + 1} not started")
        for host in batch:
            state.hosts[host].result = st.DEPLOYING
        st.save(state, path)
        # A gateway host in the batch renders its site from settings: it keeps the drained hosts out.
        keep_drained = {DRAIN_KEY: [*_failed(state), *batch]} if options.gateways else None
        failed, reasons = run_pyinfra(options, batch, log, data=keep_drained)
        deployed = [targets[h] for h in batch if h not in failed]
        reasons |= verify_batch(deployed, options.timeout)
        for host in batch:
            outcome = state.hosts[host]
            outcome.version_after = serving_version(targets[host], options.timeout)
            outcome.result = st.FAILED if host in reasons else st.OK
            outcome.reason = reasons.get(host, "")
            after = f"{outcome.version_before or '-'} -> {outcome.version_after or '-'}"
            log(f"  {host}: {outcome.result} ({after})" + (f": {outcome.reason}" if outcome.reason else ""))
        # A host that failed stays out of the gateways' rotation until a later run deploys it well.
        not_back = drain_at_gateways(options, _failed(state), log)
        log(f"  batch {index + 1} done in {time.monotonic() - started:.1f} s")
        if not_back:
            state.next_batch = index + 1
            return _halt(state, path, log, f"batch {index + 1} deployed, but {not_back}")
        failures = len(_failed(state))
        if should_halt(failures, options.max_unavailable):
            state.next_batch = index  # resume retries this batch once its hosts are fixed
            names = ", ".join(h for h in batch if h in reasons)
            out = f" ({names} out of the gateways' rotation until deployed well)" if options.gateways else ""
            return _halt(state, path, log, f"batch {index + 1} failed on {names}{out}")
        state.next_batch = index + 1
        st.save(state, path)
    state.status = st.DONE
    st.save(state, path)
    return state


def _failed(state: st.RolloutState) -> list[str]:
    return [o.host for o in state.hosts.values() if o.result == st.FAILED]


def _halt(state: st.RolloutState, path: Path, log: Log, reason: str) -> st.RolloutState:
    state.status, state.halt_reason = st.HALTED, reason
    untouched = [o for o in state.hosts.values() if o.result == st.PENDING]
    for outcome in untouched:
        outcome.result = st.SKIPPED
    st.save(state, path)
    log(f"rollout halted: {reason}; {len(untouched)} host(s) untouched")
    return state
