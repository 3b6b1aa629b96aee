"""`ollama-fleet verify INVENTORY` and `ollama-fleet status INVENTORY`.

verify checks every host from the controller as a client would, hosts in parallel: tls (handshake against
the fleet CA, days to expiry), root (/health says "Ollama is running"), auth (no key and a wrong key get
401, every configured key 200), scopes (inference keys get 403 on an admin path, admin keys pass), version
(the pinned one), models (all configured ones in /api/tags and /v1/models), stream (SSE chunks that arrive
token by token, not buffered), chat (one completion per model, the stream's answering for its model; a model
whose load could evict a loaded one is shown by /api/show instead), cors (allowed origin gets the allow
headers, another does not), raw_port (11434 dropped by the firewall), outsider (lab only: 443 unreachable
from the outsider netns). A gateway host (group `gateway`) is checked twice: as a host, and as
`<host>/gateway` on gateway_port: tls, root, auth, models (every host's, listed), chat (each model answers
through it) and stream (not buffered). A check whose prerequisite failed is shown as blocked. --quick runs
tls, root, auth, scopes, version, models and cors only: no generation (no model is loaded or evicted) and no
firewall probe (each waits out a dropped port's silence). The checks of a host run side by side, each after
the checks it needs (docs/verify.md). status shows each host's last on-host health timer result, read over
SSH.

Each check ends as ok (passed: proven), FAIL, blocked (not run: a check it needs failed) or n/a (does not
apply to the host's settings: the feature is off, e.g. auth_enabled false, firewall off, no ollama_origins,
no inference key to refuse admin paths, the outsider probe outside the lab; nothing was proven). A host
with no model to serve is a failure of `models`, not a pass.

Exit codes: 0 no check failed or was blocked (n/a allowed; with --strict, none was n/a either), 1 otherwise
(or a host is unhealthy, for status), 2 bad input or settings. The table's last line and the JSON's
"counts" and "not_applicable" say how many checks proved something and which did not apply.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from ollama_fleet.verify.context import CheckResult
from ollama_fleet.verify.fleet import DEFAULT_TIMEOUT, secrets_of, verify_fleet
from ollama_fleet.verify.fleet_view import fleet_view, render_view, view_json
from ollama_fleet.verify.report import (
    EXIT_BAD_INPUT,
    EXIT_FAILED,
    EXIT_OK,
    progress_line,
    redact,
    render_text,
    to_json,
)
from ollama_fleet.verify.status import fleet_status, render_status, status_json
from ollama_fleet.verify.targets import (
    FleetSettingsError,
    InventoryError,
    Target,
    load_gateway_targets,
    load_targets,
)


def register(subparsers: Any) -> None:
    verify = subparsers.add_parser(
        "verify",
        help="check every host of an inventory like a client would (TLS, keys, models, streaming, firewall)",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    verify.add_argument("inventory", help="pyinfra inventory file, e.g. inventories/lab.py")
    verify.add_argument("--json", action="store_true", help="print the machine-readable report on stdout")
    verify.add_argument(
        "--hosts",
        action="extend",
        nargs="+",
        metavar="NAME",
        help="only these inventory hosts (names or a,b,c)",
    )
    verify.add_argument(
        "--timeout",
        type=float,
        default=DEFAULT_TIMEOUT,
        metavar="S",
        help=f"seconds per request ({DEFAULT_TIMEOUT:.0f})",
    )
    verify.add_argument(
        "--quick",
        action="store_true",
        help="only the cheap checks: no chat/stream (nothing loaded or evicted), no firewall probes",
    )
    verify.add_argument(
        "--strict",
        action="store_true",
        help="n/a fails too: exit 0 only when every check ran and passed on every host",
    )
    group_data_option(verify)
    verify.set_defaults(func=run_verify)

    status = subparsers.add_parser(
        "status",
        help="show each host's last on-host health check result (its journal, over SSH), then what the "
        "dashboard shows: up, version, models loaded and where, requests/s, TTFT p95, 5xx (from Prometheus "
        "on the monitoring host, else straight from the hosts)",
    )
    status.add_argument("inventory", help="pyinfra inventory file")
    status.add_argument("--json", action="store_true", help="print the machine-readable status on stdout")
    status.add_argument(
        "--hosts", action="extend", nargs="+", metavar="NAME", help="only these inventory hosts"
    )
    group_data_option(status)
    status.set_defaults(func=run_status)


def group_data_option(parser: argparse.ArgumentParser) -> None:
    """--group-data DIR (repeatable), as pyinfra's; shared with rollout and rollback."""
    parser.add_argument(
        "--group-data",
        action="append",
        metavar="DIR",
        help="more group data, as pyinfra's --group-data (after ./group_data and the inventory's own)",
    )


def _targets(args: argparse.Namespace, gateways: bool = False) -> list[Target] | None:
    """The selected hosts with their settings (and, for verify, their gateways), or None after printing
    why (exit code 2)."""
    try:
        targets = load_targets(args.inventory, args.hosts, args.group_data or ())
        if gateways:
            checked = {t.name for t in targets}  # a gateway_only host's target is its gateway already
            more = load_gateway_targets(args.inventory, args.hosts, args.group_data or ())
            targets += [g for g in more if g.name not in checked]
        return targets
    except (InventoryError, FleetSettingsError) as exc:
        print(f"ollama-fleet: {exc}", file=sys.stderr)
        return None


def run_verify(args: argparse.Namespace) -> int:
    if args.timeout <= 0:
        print("ollama-fleet verify: --timeout must be positive", file=sys.stderr)
        return EXIT_BAD_INPUT
    targets = _targets(args, gateways=True)
    if targets is None:
        return EXIT_BAD_INPUT

    secrets = secrets_of(targets)
    print(f"verifying {len(targets)} host(s) from {args.inventory} ...", file=sys.stderr)

    def progress(target: Target, result: CheckResult) -> None:
        print(redact(progress_line(target.name, result), secrets), file=sys.stderr, flush=True)

    report = verify_fleet(
        targets, timeout=args.timeout, on_result=progress, quick=args.quick, strict=args.strict
    )
    print(to_json(report, secrets) if args.json else render_text(report, secrets))
    return report.exit_code


def run_status(args: argparse.Namespace) -> int:
    targets = _targets(args)
    if targets is None:
        return EXIT_BAD_INPUT

    statuses = fleet_status(targets)
    # The monitoring host may be outside --hosts: look for it in the whole inventory.
    everyone = load_targets(args.inventory, None, args.group_data or ()) if args.hosts else targets
    view = fleet_view(targets, everyone)
    if args.json:
        print(status_json(statuses, view_json(view)))
    else:
        print(render_status(statuses) + "\n\n" + "\n".join(render_view(view)))
    return EXIT_OK if all(s.ok for s in statuses) else EXIT_FAILED
