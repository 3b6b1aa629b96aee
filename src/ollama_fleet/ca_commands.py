"""`ollama-fleet ca show|roll|switch|finish INVENTORY`: the fleet CA's name constraints, and rolling it.

A roll never cuts a client off; each step is followed by a deploy (or rollout):
1. `ca roll`: a next CA, constrained to the fleet, is trusted in ca.pem beside the one that signs. Deploy
   (every host and gateway trusts both), then give every client the new ca.pem.
2. `ca switch`: the next CA signs; deploy (every host gets a certificate from it; ca.pem still trusts both).
3. `ca finish`: ca.pem trusts the new CA alone; deploy.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Any

from ollama_fleet.pki import (
    FleetCA,
    PkiError,
    ca_constraints,
    fingerprint,
    finish_roll,
    permitted_for_fleet,
    roll_ca,
    switch_ca,
)
from ollama_fleet.settings import SettingsError, service_address, settings_for_host

DEPLOY = "pyinfra -y inventory.py deploy.py (or ollama-fleet rollout inventory.py)"


def _fleet(inventory: str) -> tuple[Path, list[str]]:
    """The inventory's CA directory and what a new CA for its hosts may sign for."""
    from ollama_fleet.verify.targets import load_inventory

    hosts = load_inventory(inventory)
    settings, addresses = {}, {}
    for name, data in hosts.items():
        settings[name] = settings_for_host(name, data, os.environ)
        addresses[name] = service_address(settings[name], data)
    ca_dirs = sorted({str(s.tls.ca_dir) for s in settings.values() if s.tls.mode == "fleet_ca"})
    if len(ca_dirs) != 1:
        raise PkiError(
            f"the inventory's hosts use {len(ca_dirs)} fleet CA directories ({', '.join(ca_dirs)}): "
            "this command handles a fleet with one tls_ca_dir"
        )
    ca_dir = Path(ca_dirs[0])
    return ca_dir, permitted_for_fleet(settings, addresses, ca_dir)


def describe(ca: FleetCA) -> str:
    """The signing CA and, during a roll, the other CA ca.pem trusts: fingerprints and what each may sign."""
    lines = [f"fleet CA {ca.fingerprint} ({ca.cert.subject.rfc4514_string()}) in {ca.directory}"]
    lines.append(f"  signs; may sign for: {_may_sign(ca_constraints(ca.cert))}")
    for other in ca.also_trusted:
        lines.append(f"also trusted (a roll in progress): {fingerprint(other)}")
        lines.append(f"  may sign for: {_may_sign(ca_constraints(other))}")
    return "\n".join(lines)


def _may_sign(constraints: list[str] | None) -> str:
    return ", ".join(constraints) if constraints is not None else "ANY NAME (no name constraints)"


def ca_command(args: argparse.Namespace) -> int:
    try:
        ca_dir, permitted = _fleet(args.inventory)
        if args.action == "show":
            ca = FleetCA.load_existing(ca_dir)
            print(
                describe(ca)
                if ca
                else f"{ca_dir} holds no CA yet; the first deploy makes one for: {', '.join(permitted)}"
            )
            return 0
        if args.action == "roll":
            ca = roll_ca(ca_dir, permitted)
            print(describe(ca))
            print(
                f"next: {DEPLOY}; then give every client the new {ca_dir}/ca.pem (it trusts both CAs); then "
                "ollama-fleet ca switch inventory.py"
            )
            return 0
        if args.action == "switch":
            ca = switch_ca(ca_dir)
            print(describe(ca))
            print(
                f"next: {DEPLOY} (every host gets a certificate from the new CA); then "
                "ollama-fleet ca finish inventory.py"
            )
            return 0
        ca = finish_roll(ca_dir)
        print(describe(ca))
        print(f"next: {DEPLOY} (hosts and gateways then trust the new CA alone)")
        return 0
    except (PkiError, SettingsError) as error:
        print(f"ollama-fleet ca {args.action}: {error}", file=sys.stderr)
        return 2


def register(subparsers: Any) -> None:
    ca = subparsers.add_parser(
        "ca",
        help="the fleet CA: show what it may sign for; roll it to a constrained one (roll, switch, finish)",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    ca.add_argument("action", choices=["show", "roll", "switch", "finish"])
    ca.add_argument("inventory", help="pyinfra inventory file of the fleet")
    ca.set_defaults(func=ca_command)
