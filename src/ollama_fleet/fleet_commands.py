"""`ollama-fleet init DIR`, `keys list|add|rotate|revoke` and `settings list|explain|reference`: thin wrappers
over fleetrepo and reference."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any, get_args

from ollama_fleet import fleetrepo, reference
from ollama_fleet.fleetrepo import FleetPlan, FleetRepoError
from ollama_fleet.settings.auth import Scope

APPLY = (
    "apply it with a deploy from {dir}: pyinfra -y inventory.py deploy.py "
    "(or: ollama-fleet rollout inventory.py)"
)


def _split(values: list[str] | None) -> list[str]:
    return [item.strip() for value in values or [] for item in value.split(",") if item.strip()]


def _ask(label: str) -> list[str]:
    """One prompt on a terminal; none in CI (no terminal): the option is then simply missing."""
    if not sys.stdin.isatty():
        return []
    return _split([input(f"{label}: ")])


def _extra(values: list[str] | None) -> dict[str, Any]:
    extra: dict[str, Any] = {}
    for item in values or []:
        key, sep, raw = item.partition("=")
        if not sep:
            raise FleetRepoError(f"--set {item!r} is not KEY=VALUE")
        try:
            extra[key] = json.loads(raw)
        except ValueError:
            extra[key] = raw  # a plain string
    return extra


def plan_from(args: argparse.Namespace) -> FleetPlan:
    hosts = _split(args.host) or _ask("hosts (NAME or NAME=ADDRESS, comma-separated)")
    clients = _split(args.client_subnet) or _ask("client subnets (who may call the API, e.g. 192.168.1.0/24)")
    admins = _split(args.admin_subnet) or _ask("admin subnets (where you SSH from)")
    missing = [
        option
        for option, given in (("--host", hosts), ("--client-subnet", clients), ("--admin-subnet", admins))
        if not given
    ]
    if missing:
        raise FleetRepoError(f"missing {', '.join(missing)}: give them as options (or answer the prompts)")
    keys: dict[str, dict[str, Any]] = {}
    for entry in _split(args.key) or ["ops:admin", "apps"]:
        name, _, scope = entry.partition(":")
        fleetrepo.check_name(name)
        keys[name] = fleetrepo.policy_for(scope or None, [], None, None, None)
    return FleetPlan(
        hosts={name: address or name for name, _, address in (h.partition("=") for h in hosts)},
        client_subnets=clients,
        admin_subnets=admins,
        keys=keys,
        canary=args.canary,
        gateway=args.gateway,
        ssh_user=args.ssh_user,
        ssh_key=args.ssh_key,
        sudo=args.sudo,
        extra=_extra(args.set),
    )


def init_command(args: argparse.Namespace) -> int:
    directory = Path(args.directory)
    try:
        written = fleetrepo.init(directory, plan_from(args), force=args.force)
    except FleetRepoError as error:
        print(f"ollama-fleet init: {error}", file=sys.stderr)
        return 2
    for path in written:
        print(f"wrote {directory / path}")
    print(f"next: cd {directory} && pyinfra -y inventory.py deploy.py && ollama-fleet verify inventory.py")
    return 0


def keys_command(args: argparse.Namespace) -> int:
    directory = Path(args.fleet)
    group_data = directory / fleetrepo.GROUP_DATA
    try:
        text = group_data.read_text() if group_data.is_file() else ""
        if not text:
            raise FleetRepoError(
                f"{group_data} does not exist: run this in a fleet made by `ollama-fleet init`"
            )
        keys = fleetrepo.read_keys(text)
        document = fleetrepo.read_secrets(directory)
        return _keys_action(args, directory, group_data, text, keys, document)
    except FleetRepoError as error:
        print(f"ollama-fleet keys: {error}", file=sys.stderr)
        return 2


def _keys_action(
    args: argparse.Namespace,
    directory: Path,
    group_data: Path,
    text: str,
    keys: dict[str, dict[str, Any]],
    document: dict[str, Any],
) -> int:
    values: dict[str, str] = document["api_keys"]
    if args.action == "list":
        for name, policy in keys.items():
            state = "value set" if name in values else "NO VALUE in .fleet/secrets.json"
            print(f"{name}: scope {policy.get('scope', 'inference')}, {_limits(policy)}; {state}")
        print(f"revoked keys (refused with 401): {len(document['revoked_api_keys'])}")
        return 0
    name = args.name
    fleetrepo.check_name(name)
    if args.action == "add":
        if name in keys:
            raise FleetRepoError(f"key {name!r} exists; rotate it, or revoke it first")
        policy = fleetrepo.policy_for(
            args.scope, _split(args.models), args.rate, args.burst, args.concurrency
        )
        values[name] = fleetrepo.new_key()
        fleetrepo.write_secrets(directory, document)
        group_data.write_text(fleetrepo.with_keys(text, {**keys, name: policy}))
        done = f"added key {name!r} ({policy.get('scope', 'inference')})"
    elif name not in keys:
        raise FleetRepoError(f"no key {name!r}; the keys are: {', '.join(keys) or 'none'}")
    elif args.action == "rotate":
        if name in values:
            document["revoked_api_keys"].append(values[name])
        values[name] = fleetrepo.new_key()
        fleetrepo.write_secrets(directory, document)
        done = f"rotated key {name!r}: the old value is revoked (401 once deployed)"
    else:  # revoke
        if name in values:
            document["revoked_api_keys"].append(values.pop(name))
        fleetrepo.write_secrets(directory, document)
        group_data.write_text(fleetrepo.with_keys(text, {k: p for k, p in keys.items() if k != name}))
        done = f"revoked key {name!r} (401 once deployed)"
    print(f"{done}; {APPLY.format(dir=directory)}", file=sys.stderr)
    if getattr(args, "print_value", False) and name in values:
        print(values[name])  # asked for, for a pipe: the value alone on stdout
    return 0


def _limits(policy: dict[str, Any]) -> str:
    parts = []
    if policy.get("models"):
        parts.append(f"models {', '.join(policy['models'])}")
    if policy.get("rate"):
        parts.append(f"rate {policy['rate']} (burst {policy.get('burst', 0)})")
    if policy.get("concurrency"):
        parts.append(f"at most {policy['concurrency']} at once")
    return ", ".join(parts) or "no limits"


def settings_command(args: argparse.Namespace) -> int:
    if args.action == "reference":
        print(reference.markdown(), end="")
    elif args.action == "list":
        for key, entry in reference.entries().items():
            print(f"{key} = {' '.join(entry.default.split())}")
    else:
        explained = [reference.explain(key) for key in args.keys]
        for key, text in zip(args.keys, explained, strict=True):
            print(
                text if text is not None else reference.unknown(key), file=sys.stdout if text else sys.stderr
            )
        return 0 if all(explained) else 2
    return 0


def doctor_command(args: argparse.Namespace) -> int:
    from ollama_fleet import doctor
    from ollama_fleet.verify.commands import _targets

    targets = _targets(args)
    if targets is None:
        return 2
    if args.show_commands:
        for name, command in doctor.probe_script(targets[0].settings).items():
            print(f"# {name}\n{command}", file=sys.stderr)
    found = doctor.examine_fleet(targets)
    print(doctor.to_json(found) if args.json else doctor.render(found))
    return 0 if all(d.healthy for d in found) else 1


def register(subparsers: Any) -> None:
    init = subparsers.add_parser(
        "init",
        help="write a fleet repository that deploys as it is (inventory, settings, keys, CA directory)",
        description="Write a fleet repository in DIRECTORY: inventory.py (canary, fleet and gateway "
        "groups), group_data/all.py (only what differs from the defaults), deploy.py, .fleet/secrets.json "
        "(fresh keys, mode 0600), .fleet/pki/ (the fleet CA, made by the first deploy), .gitignore and a "
        "README.",
    )
    init.add_argument("directory")
    init.add_argument("--host", action="append", metavar="NAME[=ADDRESS]", help="a host (repeat, or a,b,c)")
    init.add_argument("--client-subnet", action="append", metavar="CIDR", help="who may call the API")
    init.add_argument("--admin-subnet", action="append", metavar="CIDR", help="where SSH is allowed from")
    init.add_argument(
        "--key", action="append", metavar="NAME[:SCOPE]", help="API keys (default: ops:admin and apps)"
    )
    init.add_argument("--canary", type=int, default=1, help="how many hosts form the canary group (1)")
    init.add_argument("--gateway", metavar="NAME", help="one of the hosts: the fleet's single endpoint")
    init.add_argument("--ssh-user")
    init.add_argument("--ssh-key", help="private key file the controller logs in with")
    init.add_argument("--sudo", action="store_true", help="log in as --ssh-user and use sudo")
    init.add_argument("--set", action="append", metavar="KEY=VALUE", help="any other setting (VALUE as JSON)")
    init.add_argument("--force", action="store_true", help="rewrite init's files (never the keys' values)")
    init.set_defaults(func=init_command)

    keys = subparsers.add_parser(
        "keys",
        help="list, add, rotate or revoke the fleet's API keys (values are never printed unless asked)",
        description="Edit the API keys of a fleet made by `ollama-fleet init`: names and policies in "
        "group_data/all.py, values in .fleet/secrets.json (kept 0600). A deploy applies the change.",
    )
    keys.add_argument("--fleet", default=".", help="the fleet directory (default: here)")
    actions = keys.add_subparsers(dest="action", required=True)
    actions.add_parser("list", help="each key's scope and limits, never its value")
    add = actions.add_parser("add", help="a new key with a fresh value")
    add.add_argument("name")
    add.add_argument("--scope", choices=get_args(Scope))
    add.add_argument("--models", action="append", help="the only models it may name (a,b)")
    add.add_argument("--rate", help="an nginx rate, e.g. 60r/m")
    add.add_argument("--burst", type=int)
    add.add_argument("--concurrency", type=int)
    for action in ("rotate", "revoke"):
        sub = actions.add_parser(action, help=f"{action} a key (its old value goes to the revoked list)")
        sub.add_argument("name")
    for sub in (add, actions.choices["rotate"]):
        sub.add_argument("--print-value", action="store_true", help="print the new value alone on stdout")
    keys.set_defaults(func=keys_command)

    settings = subparsers.add_parser(
        "settings", help="every setting: its type, default and what it does (docs/settings.md)"
    )
    which = settings.add_subparsers(dest="action", required=True)
    which.add_parser("list", help="every setting with its default")
    explain = which.add_parser("explain", help="one setting (or several): type, default, what it does")
    explain.add_argument("keys", nargs="+", metavar="KEY")
    which.add_parser("reference", help="the whole reference as Markdown (docs/settings.md)")
    settings.set_defaults(func=settings_command)

    doctor = subparsers.add_parser(
        "doctor",
        help="read each host over SSH and say what is wrong and how to fix it (exit 1 when anything is)",
    )
    doctor.add_argument("inventory", help="pyinfra inventory file")
    doctor.add_argument("--hosts", action="extend", nargs="+", metavar="NAME", help="only these hosts")
    doctor.add_argument("--json", action="store_true", help="print the findings as JSON on stdout")
    doctor.add_argument("--show-commands", action="store_true", help="print the commands it runs (stderr)")
    doctor.set_defaults(func=doctor_command, group_data=None)
