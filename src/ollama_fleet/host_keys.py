"""`ollama-fleet hosts forget INVENTORY NAME...`: the operator's word that a host was re-imaged.

The deploy connects through pyinfra, which pins each host's SSH host key in known_hosts at first contact
(`ssh_strict_host_key_checking`, default accept-new) and refuses a changed key, as it must: a changed key is
also what a man in the middle looks like, and only the operator knows the host was re-installed. This
command removes the host's old entries (its name, its address, `[address]:port`) from the known_hosts file
the inventory uses, so the next deploy pins the new key and deploys the host like a new one.
"""

from __future__ import annotations

import argparse
import socket
import subprocess
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

DEFAULT_KNOWN_HOSTS = "~/.ssh/known_hosts"
"""Where pyinfra (as ssh) pins keys when the inventory names no ssh_known_hosts_file."""


@dataclass(frozen=True)
class Pinned:
    """Where one inventory host's SSH host key is pinned, and under which names."""

    host: str
    known_hosts: Path | None
    """None: the inventory does not pin this host's key (ssh_known_hosts_file=/dev/null)."""
    entries: tuple[str, ...]
    strict: str


def pinned(name: str, data: Mapping[str, Any]) -> Pinned:
    """The known_hosts file and entries of one host, from its pyinfra data."""
    address = str(data.get("ssh_hostname") or name)
    port = int(data.get("ssh_port") or 22)
    names = dict.fromkeys([name, address])
    entries = tuple(names) if port == 22 else tuple(f"[{n}]:{port}" for n in names)
    file = str(data.get("ssh_known_hosts_file") or DEFAULT_KNOWN_HOSTS)
    known_hosts = None if file == "/dev/null" else Path(file).expanduser()
    strict = str(data.get("ssh_strict_host_key_checking") or "accept-new")
    return Pinned(name, known_hosts, entries, strict)


def forget(pin: Pinned) -> list[str]:
    """Remove the host's entries from its known_hosts file (hashed ones too, through ssh-keygen -R);
    return the entries that were there."""
    if pin.known_hosts is None or not pin.known_hosts.is_file():
        return []
    removed = []
    for entry in pin.entries:
        done = subprocess.run(
            ["ssh-keygen", "-R", entry, "-f", str(pin.known_hosts)],
            capture_output=True, text=True, check=False, stdin=subprocess.DEVNULL,
        )  # fmt: skip
        if done.returncode != 0:
            raise OSError(f"ssh-keygen -R {entry} -f {pin.known_hosts}: {done.stderr.strip()}")
        if "found" in done.stdout:
            removed.append(entry)
    # ssh-keygen keeps the previous file as <file>.old: it holds the key just removed, so it goes too.
    pin.known_hosts.with_name(pin.known_hosts.name + ".old").unlink(missing_ok=True)
    return removed


def report(pin: Pinned, removed: list[str]) -> str:
    """What was done and what the next deploy does, in one line per host."""
    if pin.known_hosts is None:
        return f"{pin.host}: its SSH host key is not pinned (known_hosts /dev/null): nothing to forget"
    where = ", ".join(pin.entries)
    if not removed:
        return f"{pin.host}: {pin.known_hosts} holds no key for {where}; nothing to forget"
    line = f"{pin.host}: removed its old SSH host key ({', '.join(removed)}) from {pin.known_hosts}"
    if pin.strict in ("yes", "true"):
        return (
            f"{line}; ssh_strict_host_key_checking is {pin.strict}, so add its new key there yourself "
            f"(`ssh-keyscan {pin.entries[-1]}`, after checking the fingerprint on its console)"
        )
    return f"{line}; the next deploy pins its new key and deploys it like a new host"


def offered_key(address: str, port: int, timeout: float = 5.0) -> Any:
    """The host key the SSH server at address:port offers now (paramiko's PKey), or None if unreachable."""
    import paramiko

    try:
        sock = socket.create_connection((address, port), timeout=timeout)
    except OSError:
        return None
    transport = paramiko.Transport(sock)
    try:
        transport.start_client(timeout=timeout)
        return transport.get_remote_server_key()
    except (paramiko.SSHException, OSError):
        return None
    finally:
        transport.close()


def pinned_keys(pin: Pinned) -> list[Any]:
    """The keys known_hosts holds for the host under any of its entries."""
    import paramiko

    if pin.known_hosts is None or not pin.known_hosts.is_file():
        return []
    known = paramiko.HostKeys(str(pin.known_hosts))
    return [key for entry in pin.entries for key in (known.lookup(entry) or {}).values()]


def changed_key_message(name: str, data: Mapping[str, Any], inventory: str) -> str | None:
    """Why a host the deploy could not connect to was refused, when the reason is a changed SSH host key
    (None otherwise): the host, the file, both fingerprints, and the one command that accepts the change."""
    pin = pinned(name, data)
    keys = pinned_keys(pin)
    address = str(data.get("ssh_hostname") or name)
    offered = offered_key(address, int(data.get("ssh_port") or 22)) if keys else None
    if offered is None or any(key == offered for key in keys):
        return None
    was = ", ".join(sorted({f"{key.get_name()} {key.fingerprint}" for key in keys}))
    return (
        f"{name}: its SSH host key changed: {pin.known_hosts} pins {was}, it now offers "
        f"{offered.get_name()} {offered.fingerprint}. If {name} was re-imaged, run "
        f"`ollama-fleet hosts forget {inventory} {name}` and deploy again (it is then deployed like a new "
        "host); if it was not, do not: something else may be answering at its address."
    )


def hosts_command(args: argparse.Namespace) -> int:
    from ollama_fleet.verify.targets import InventoryError, load_inventory, select

    try:
        inventory = load_inventory(args.inventory)
        names = select(inventory, args.names)
    except InventoryError as exc:
        print(f"ollama-fleet hosts: {exc}", file=sys.stderr)
        return 2
    for name in names:
        pin = pinned(name, inventory[name])
        print(report(pin, forget(pin)))
    return 0


def register(subparsers: Any) -> None:
    hosts = subparsers.add_parser(
        "hosts",
        help="say that hosts were re-imaged: forget their old SSH host keys so the next deploy takes them",
    )
    actions = hosts.add_subparsers(dest="action", required=True)
    forget_parser = actions.add_parser(
        "forget",
        help="remove the hosts' pinned SSH host keys from the inventory's known_hosts file",
        description="Use after re-installing a host under the same name: the deploy refuses its new SSH "
        "host key until the old one is forgotten; then deploy as usual.",
    )
    forget_parser.add_argument("inventory", help="pyinfra inventory file")
    forget_parser.add_argument("names", nargs="+", metavar="NAME", help="the re-imaged hosts")
    hosts.set_defaults(func=hosts_command)
