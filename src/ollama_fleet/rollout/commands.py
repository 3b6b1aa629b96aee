"""`ollama-fleet rollout INVENTORY [DEPLOY]` and `ollama-fleet rollback INVENTORY [--hosts ...]`.

rollout: the canary group first (--canary GROUP; default `canary`, or the one `*_canary` group), then the
other hosts in inventory order, --batch N or N% at a time. Each batch is deployed in parallel by pyinfra
(`--limit` per host) and must pass the full `verify` before the next starts; the rollout halts once more
than --max-unavailable hosts failed (default 0: at the first), and every later host stays untouched. A host
that is unreachable over SSH halts it before its batch starts. Progress goes to stderr; the final table (or
--json) to stdout. The state file (default .fleet/rollout-<inventory>.json) lets --resume continue a halted
or interrupted rollout from its first unfinished batch.

With gateway hosts in the inventory (group `gateway`), each batch is first taken out of their rotation
(its server lines marked `down` in the live gateway, nginx reloaded, and the requests in flight awaited,
at most --drain-wait seconds) and put back once it passed `verify`; a host that failed stays out.
--no-drain skips this.

rollback: switch the hosts back to their previous installed Ollama release, restart and check it serves.

Exit codes: 0 every host done and verified, 1 halted or failed, 2 bad input or settings.
"""

from __future__ import annotations

import argparse
import json
import sys
from importlib import resources
from pathlib import Path
from typing import Any

from ollama_fleet.rollout import state as st
from ollama_fleet.rollout.plan import PlanError, batch_size, default_canary_group, plan_batches
from ollama_fleet.rollout.runner import RolloutOptions, run_pyinfra, run_rollout, serving_version
from ollama_fleet.verify.commands import group_data_option
from ollama_fleet.verify.report import EXIT_BAD_INPUT, EXIT_FAILED, EXIT_OK, format_table
from ollama_fleet.verify.targets import (
    FleetSettingsError,
    InventoryError,
    load_gateway_targets,
    load_groups,
    load_targets,
    select,
)


def register(subparsers: Any) -> None:
    rollout = subparsers.add_parser(
        "rollout",
        help="deploy batch by batch (canary first), each verified before the next; halts on failure",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    rollout.add_argument("inventory", help="pyinfra inventory file")
    rollout.add_argument("deploy", nargs="?", default="deploys/ollama.py", help="deploy file (%(default)s)")
    rollout.add_argument("--canary", metavar="GROUP", help="inventory group deployed first, alone")
    rollout.add_argument("--batch", default="1", metavar="N|N%", help="hosts per later batch (%(default)s)")
    rollout.add_argument(
        "--max-unavailable", type=int, default=0, metavar="N", help="failed hosts tolerated (%(default)s)"
    )
    rollout.add_argument("--resume", action="store_true", help="continue a halted or interrupted rollout")
    rollout.add_argument("--state", type=Path, metavar="FILE", help="state file (.fleet/rollout-<inv>.json)")
    rollout.add_argument("--json", action="store_true", help="print the machine-readable result on stdout")
    rollout.add_argument("--timeout", type=float, default=30.0, metavar="S", help="seconds per check request")
    rollout.add_argument(
        "--no-drain", action="store_true", help="do not take each batch out of the gateways' rotation first"
    )
    rollout.add_argument(
        "--drain-wait",
        type=int,
        default=300,
        metavar="S",
        help="seconds a drain waits for the gateways' requests in flight (%(default)s)",
    )
    rollout.add_argument("-v", "--verbose", action="store_true", help="show all of pyinfra's output")
    group_data_option(rollout)
    rollout.set_defaults(func=run_rollout_command)

    rollback = subparsers.add_parser(
        "rollback", help="switch hosts back to their previous installed Ollama release, on purpose"
    )
    rollback.add_argument("inventory", help="pyinfra inventory file")
    rollback.add_argument("--hosts", action="extend", nargs="+", metavar="NAME", help="only these hosts")
    rollback.add_argument("-v", "--verbose", action="store_true", help="show all of pyinfra's output")
    group_data_option(rollback)
    rollback.set_defaults(func=run_rollback_command)


def _err(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def run_rollout_command(args: argparse.Namespace) -> int:
    if args.max_unavailable < 0 or args.timeout <= 0 or args.drain_wait < 0:
        _err("ollama-fleet rollout: --max-unavailable and --drain-wait must be 0 or more, --timeout positive")
        return EXIT_BAD_INPUT
    if not Path(args.deploy).is_file():
        _err(f"ollama-fleet rollout: deploy file {args.deploy!r} not found")
        return EXIT_BAD_INPUT
    group_data = tuple(args.group_data or ())
    try:
        batch_size(args.batch, 1)  # a bad --batch is refused before the inventory is read
        targets = {t.settings.host: t for t in load_targets(args.inventory, None, group_data)}
        groups = load_groups(args.inventory, group_data)
        gateways = [] if args.no_drain else gateway_hosts(args.inventory, group_data)
        path = args.state or st.default_state_path(args.inventory)
        state = _starting_state(args, list(targets), groups, path)
    except (InventoryError, FleetSettingsError, PlanError) as exc:
        _err(f"ollama-fleet rollout: {exc}")
        return EXIT_BAD_INPUT
    options = RolloutOptions(
        inventory=args.inventory,
        deploy=args.deploy,
        group_data=group_data,
        max_unavailable=args.max_unavailable,
        timeout=args.timeout,
        verbose=args.verbose,
        gateways=tuple(gateways),
        drain_wait=args.drain_wait,
    )
    sizes = "+".join(str(len(b)) for b in state.batches[state.next_batch :])
    drain = f"; each batch drained at {', '.join(gateways)} first" if gateways else ""
    _err(f"rollout of {args.deploy} to {len(targets)} host(s) in batches {sizes} (state: {path}){drain}")
    done = run_rollout(state, targets, options, path, _err)
    print(json.dumps(done.to_json(), indent=2) if args.json else render_table(done))
    ok = done.status == st.DONE and all(o.result == st.OK for o in done.hosts.values())
    return EXIT_OK if ok else EXIT_FAILED


def gateway_hosts(inventory: str, group_data: tuple[str, ...]) -> list[str]:
    """Inventory names of the hosts serving the fleet's gateway (what `--limit` needs)."""
    return [g.settings.host for g in load_gateway_targets(inventory, None, group_data)]


def _starting_state(
    args: argparse.Namespace, hosts: list[str], groups: dict[str, list[str]], path: Path
) -> st.RolloutState:
    previous = st.load(path)
    if args.resume:
        if previous is None:
            raise PlanError(f"--resume: no rollout state in {path}")
        if previous.inventory != args.inventory or previous.deploy != args.deploy:
            raise PlanError(
                f"--resume: {path} is a rollout of {previous.deploy} to {previous.inventory}, not of "
                f"{args.deploy} to {args.inventory}"
            )
        if previous.status == st.DONE:
            raise PlanError(f"--resume: the rollout in {path} is already done")
        for outcome in previous.hosts.values():
            if outcome.result == st.SKIPPED:
                outcome.result = st.PENDING
        return previous
    if previous is not None and previous.status != st.DONE:
        raise PlanError(
            f"a rollout is {previous.status} in {path} ({previous.halt_reason or 'interrupted'}); "
            "continue it with --resume, or remove the file to start over"
        )
    canary_group = args.canary or default_canary_group(groups)
    if args.canary and args.canary not in groups:
        raise PlanError(f"--canary {args.canary}: no such group (the inventory has {', '.join(groups)})")
    canary = groups.get(canary_group, []) if canary_group else []
    return st.RolloutState.new(args.inventory, args.deploy, plan_batches(hosts, canary, args.batch))


def render_table(state: st.RolloutState) -> str:
    rows = [["host", "batch", "before", "after", "result", "reason"]]
    for o in state.hosts.values():
        rows.append(
            [o.host, str(o.batch + 1), o.version_before or "-", o.version_after or "-", o.result, o.reason]
        )
    verdict = "DONE" if state.status == st.DONE else f"HALTED: {state.halt_reason}"
    return "\n".join([*format_table(rows), "", verdict])


def run_rollback_command(args: argparse.Namespace) -> int:
    group_data = tuple(args.group_data or ())
    try:
        targets = {t.settings.host: t for t in load_targets(args.inventory, None, group_data)}
        chosen = select(targets, args.hosts)
    except (InventoryError, FleetSettingsError) as exc:
        _err(f"ollama-fleet rollback: {exc}")
        return EXIT_BAD_INPUT
    no_ollama = [host for host in chosen if not targets[host].settings.serves_api]
    if no_ollama:
        names = ", ".join(no_ollama)
        _err(f"ollama-fleet rollback: {names} run no Ollama (gateway_only): nothing to roll back")
        return EXIT_BAD_INPUT
    deploy = str(resources.files("ollama_fleet") / "pyinfra_files" / "rollback.py")
    options = RolloutOptions(
        inventory=args.inventory, deploy=deploy, group_data=group_data, verbose=args.verbose
    )
    _err(f"rolling back {', '.join(chosen)} to their previous Ollama release")
    before = {host: serving_version(targets[host], 10.0) or "-" for host in chosen}
    failed, reasons = run_pyinfra(options, chosen, _err)
    for host in chosen:
        now = serving_version(targets[host], 10.0) or "-"
        outcome = f"failed: {reasons[host]}" if host in failed else "rolled back"
        print(f"{host}: {outcome} ({before[host]} -> {now})")
    if not failed:
        _err("the next deploy upgrades again unless ollama_version is set to the version now serving")
    return EXIT_FAILED if failed else EXIT_OK
