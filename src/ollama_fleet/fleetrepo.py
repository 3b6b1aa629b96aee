"""A fleet repository made by `ollama-fleet init`, and its API keys edited by `ollama-fleet keys`.

Pure parts (what each file says) are separate from the few functions that write files. Key names and
policies live in group_data/all.py between two marker lines, as plain Python literals that `keys` reads with
`ast.literal_eval` and writes back; key values live only in .fleet/secrets.json (mode 0600, git-ignored), the
file the deploy reads them from.
"""

from __future__ import annotations

import ast
import json
import os
import secrets
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ollama_fleet.settings import SettingsError, settings_for_host
from ollama_fleet.settings.auth import KeyPolicy, key_env_name
from ollama_fleet.settings.rules import KEY_NAME

INVENTORY = "inventory.py"
DEPLOY = "deploy.py"
GROUP_DATA = Path("group_data") / "all.py"
SECRETS = Path(".fleet") / "secrets.json"
PKI = Path(".fleet") / "pki"
KEYS_BEGIN = (
    "# --- API keys: managed by `ollama-fleet keys` (names and policies; values in .fleet/secrets.json)"
)
KEYS_END = "# --- end of API keys"


class FleetRepoError(Exception):
    """A request the fleet repository cannot take; the message says why and what to do."""


@dataclass(frozen=True)
class FleetPlan:
    """What `init` was asked for: hosts (name -> address), subnets, keys, and extra settings."""

    hosts: dict[str, str]
    client_subnets: list[str]
    admin_subnets: list[str]
    keys: dict[str, dict[str, Any]]  # name -> policy (as group data writes it: {} for the defaults)
    canary: int = 1
    gateway: str | None = None
    ssh_user: str | None = None
    ssh_key: str | None = None
    sudo: bool = False
    extra: dict[str, Any] = field(default_factory=dict)  # any other setting, e.g. models_pull


def new_key() -> str:
    return secrets.token_urlsafe(32)


# --- what each file says ----------------------------------------------------------------------------


def inventory_text(plan: FleetPlan) -> str:
    names = list(plan.hosts)
    canary = names[: plan.canary]
    rest = names[plan.canary :]
    lines = [
        '"""This fleet\'s hosts. Each list is a pyinfra group; their settings are in group_data/all.py."""',
        "",
    ]
    if any(plan.hosts[n] != n for n in names):
        lines.append("# name -> the address the controller reaches it at over SSH.")
    connection: dict[str, Any] = {}
    if plan.ssh_user:
        connection["ssh_user"] = plan.ssh_user
    if plan.ssh_key:
        connection["ssh_key"] = plan.ssh_key
    if plan.sudo:
        connection["_sudo"] = True

    def entry(name: str) -> str:
        data = {**({"ssh_hostname": plan.hosts[name]} if plan.hosts[name] != name else {}), **connection}
        return f"    ({name!r}, {data!r})," if data else f"    {name!r},"

    lines.append("# A rollout deploys the canary first, then the rest in batches.")
    lines += ["canary = [", *(entry(n) for n in canary), "]", ""]
    lines += ["fleet = [", *(entry(n) for n in rest), "]", ""]
    if plan.gateway:
        lines += [
            "# One endpoint for the whole fleet (balances over every host).",
            "gateway = [",
            entry(plan.gateway),
        ]
        lines += ["]", ""]
    return "\n".join(lines)


def keys_block(keys: dict[str, dict[str, Any]]) -> str:
    names = list(keys)
    policies = {name: policy for name, policy in keys.items() if policy}
    return "\n".join(
        [
            KEYS_BEGIN,
            f"auth_key_names = {names!r}",
            f"auth_key_policies = {policies!r}",
            KEYS_END,
        ]
    )


def group_data_text(plan: FleetPlan) -> str:
    lines = [
        '"""What this fleet sets differently from ollama-fleet\'s defaults (every setting and its default:',
        '`ollama-fleet settings list`)."""',
        "",
        "# Who may call the API, and where the controller and admins SSH from.",
        f"firewall_client_subnets = {plan.client_subnets!r}",
        f"firewall_admin_subnets = {plan.admin_subnets!r}",
        "",
        keys_block(plan.keys),
    ]
    if plan.extra:
        lines += ["", "# Set with init --set."]
        lines += [f"{key} = {value!r}" for key, value in sorted(plan.extra.items())]
    return "\n".join(lines) + "\n"


DEPLOY_TEXT = '''"""The whole site: `pyinfra -y inventory.py deploy.py`."""

from ollama_fleet.deploys import deploy_site

deploy_site()
'''

CONFIG = "config.py"
CONFIG_TEXT = '''"""pyinfra's run-wide config, read from the directory pyinfra starts in, before it connects:
each host's SSH connection stays open for the whole run, so the open-files limit is raised to the hard
limit; then every host runs at once, and the run costs the controller less per host."""

from ollama_fleet.limits import prepare_pyinfra_run

prepare_pyinfra_run()
'''

GITIGNORE_TEXT = """# API key values and the fleet CA's private key: never in git.
.fleet/
pyinfra-debug.log
"""


def readme_text(plan: FleetPlan) -> str:
    first = next(iter(plan.hosts))
    return f"""# An Ollama fleet

Made by `ollama-fleet init`. Run every command from this directory.

1. Deploy every host (settings are checked before any host changes):

       pyinfra -y inventory.py deploy.py

2. Check it like a client would (exit 0 only when every check passes):

       ollama-fleet verify inventory.py

3. Use it: `https://{first}/v1` with a key from `.fleet/secrets.json`, trusting `.fleet/pki/ca.pem`.
   Keys: `ollama-fleet keys list|add|rotate|revoke`; changes: `ollama-fleet rollout inventory.py`.
"""


def files_for(plan: FleetPlan) -> dict[Path, str]:
    """Every text file `init` writes, by path relative to the fleet directory (not the secrets)."""
    return {
        Path(INVENTORY): inventory_text(plan),
        GROUP_DATA: group_data_text(plan),
        Path(DEPLOY): DEPLOY_TEXT,
        Path(CONFIG): CONFIG_TEXT,
        Path(".gitignore"): GITIGNORE_TEXT,
        Path("README.md"): readme_text(plan),
    }


def check_plan(plan: FleetPlan) -> None:
    """The settings init would write, validated the way a deploy validates them (before writing anything)."""
    if not plan.hosts:
        raise FleetRepoError("no hosts: give each with --host NAME or --host NAME=ADDRESS")
    if plan.gateway and plan.gateway not in plan.hosts:
        raise FleetRepoError(f"--gateway {plan.gateway!r} is not one of the --host names")
    environ = {key_env_name(name): new_key() for name in plan.keys}
    data = {
        "firewall_client_subnets": plan.client_subnets,
        "firewall_admin_subnets": plan.admin_subnets,
        "auth_key_names": list(plan.keys),
        "auth_key_policies": {n: p for n, p in plan.keys.items() if p},
        "auth_secrets_file": "/nonexistent/ollama-fleet-init",
        **plan.extra,
    }
    try:
        for name in plan.hosts:
            settings_for_host(name, data, environ)
    except SettingsError as error:
        raise FleetRepoError(str(error)) from None


# --- the keys block -----------------------------------------------------------------------------------


def read_keys(group_data: str) -> dict[str, dict[str, Any]]:
    """The names and policies between the markers of group_data/all.py."""
    lines = group_data.splitlines()
    try:
        start, end = lines.index(KEYS_BEGIN), lines.index(KEYS_END)
    except ValueError:
        raise FleetRepoError(
            f"{GROUP_DATA} has no block of keys made by `ollama-fleet init` (the line {KEYS_BEGIN!r}); "
            "edit auth_key_names and auth_key_policies by hand there"
        ) from None
    values: dict[str, Any] = {}
    for line in lines[start + 1 : end]:
        key, _, literal = line.partition(" = ")
        values[key.strip()] = ast.literal_eval(literal)
    names: list[str] = values.get("auth_key_names", [])
    policies: dict[str, dict[str, Any]] = values.get("auth_key_policies", {})
    return {name: dict(policies.get(name, {})) for name in names}


def with_keys(group_data: str, keys: dict[str, dict[str, Any]]) -> str:
    lines = group_data.splitlines()
    start, end = lines.index(KEYS_BEGIN), lines.index(KEYS_END)
    return "\n".join([*lines[:start], keys_block(keys), *lines[end + 1 :]]) + "\n"


def policy_for(
    scope: str | None, models: list[str], rate: str | None, burst: int | None, concurrency: int | None
) -> dict[str, Any]:
    """A key's policy as group data writes it (only what differs from the defaults), checked."""
    policy: dict[str, Any] = {}
    if scope and scope != "inference":
        policy["scope"] = scope
    if models:
        policy["models"] = models
    if rate:
        policy["rate"] = rate
    if burst:
        policy["burst"] = burst
    if concurrency:
        policy["concurrency"] = concurrency
    try:
        KeyPolicy.model_validate(policy)
    except ValueError as error:
        raise FleetRepoError(f"the key's policy is invalid: {error}") from None
    return policy


# --- files ----------------------------------------------------------------------------------------------


def write_private(path: Path, text: str) -> None:
    """Write `path` with mode 0600 from the first byte, replacing it in one rename."""
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    fd, temp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as out:
            out.write(text)
        os.chmod(temp, 0o600)
        os.replace(temp, path)
    except BaseException:
        Path(temp).unlink(missing_ok=True)
        raise


def read_secrets(directory: Path) -> dict[str, Any]:
    path = directory / SECRETS
    if not path.is_file():
        return {"api_keys": {}, "revoked_api_keys": []}
    if path.stat().st_mode & 0o077:
        raise FleetRepoError(f"{path} is readable by others: run chmod 600 {path}")
    document: dict[str, Any] = json.loads(path.read_text())
    document.setdefault("api_keys", {})
    document.setdefault("revoked_api_keys", [])
    return document


def write_secrets(directory: Path, document: dict[str, Any]) -> None:
    write_private(directory / SECRETS, json.dumps(document, indent=2) + "\n")


def init(directory: Path, plan: FleetPlan, force: bool = False) -> list[Path]:
    """Write the fleet repository; returns the files written. Refuses any existing file of ours unless
    `force` (and even then never replaces a secrets file: its keys may be in use)."""
    check_plan(plan)
    files = files_for(plan)
    existing = [path for path in [*files, SECRETS] if (directory / path).exists()]
    if existing and not force:
        named = ", ".join(str(p) for p in existing)
        raise FleetRepoError(f"{directory} already has {named}; nothing was written (--force rewrites them)")
    written = []
    for relative, text in files.items():
        path = directory / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        if not path.exists() or path.read_text() != text:
            path.write_text(text)
            written.append(relative)
    (directory / PKI).mkdir(mode=0o700, parents=True, exist_ok=True)
    document = read_secrets(directory)
    missing = {name: new_key() for name in plan.keys if name not in document["api_keys"]}
    if missing or not (directory / SECRETS).exists():
        document["api_keys"].update(missing)
        write_secrets(directory, document)
        written.append(SECRETS)
    return written


def check_name(name: str) -> None:
    if not KEY_NAME.fullmatch(name):
        raise FleetRepoError(f"key name {name!r} may only hold letters, digits, '_' and '-'")
