"""A pyinfra inventory from Vagrant machines: `vagrant ssh-config` read into (name, host data) pairs.

Pure parsing, plus one function that runs `vagrant ssh-config` where the Vagrantfile is. Used by
inventories/vagrant.py and by the lab's Vagrant fleet.
"""

from __future__ import annotations

import ipaddress
import json
import os
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any


class VagrantError(RuntimeError):
    """Vagrant could not tell us its machines; the message says why and what to run."""


@dataclass(frozen=True)
class SshEntry:
    """One `Host` block of `vagrant ssh-config`."""

    name: str
    hostname: str
    user: str
    port: int
    identity_file: str | None


def parse_ssh_config(text: str) -> list[SshEntry]:
    """The machines in `vagrant ssh-config` output, in order; keys are case-insensitive as in ssh_config."""
    blocks: list[dict[str, str]] = []
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        key, _, value = line.partition(" ")
        if key.lower() == "host":
            blocks.append({"host": value.strip()})
        elif blocks:
            blocks[-1].setdefault(key.lower(), value.strip().strip('"'))
    return [
        SshEntry(
            name=block["host"],
            hostname=block.get("hostname", block["host"]),
            user=block.get("user", "vagrant"),
            port=int(block.get("port", "22")),
            identity_file=block.get("identityfile"),
        )
        for block in blocks
    ]


def host_data(entry: SshEntry) -> dict[str, Any]:
    """pyinfra connection data for one machine: as `vagrant`, through sudo, like a real LAN's deployer.

    Vagrant machines are made and remade with new host keys, so their keys are not pinned (as `vagrant ssh`).
    """
    data: dict[str, Any] = {
        "ssh_hostname": entry.hostname,
        "ssh_port": entry.port,
        "ssh_user": entry.user,
        "ssh_known_hosts_file": "/dev/null",
        "ssh_strict_host_key_checking": "no",
        "_sudo": True,
    }
    if entry.identity_file:
        data["ssh_key"] = entry.identity_file
    return data


def inventory_hosts(entries: list[SshEntry], fleet_data: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    """(name, data) per machine: connection data, then the fleet's settings (which win)."""
    return [(entry.name, {**host_data(entry), **fleet_data}) for entry in entries]


def read_ssh_config(vagrant_dir: Path, saved: str | None = None) -> str:
    """`saved` (a file written by `vagrant ssh-config > FILE`) when given, else `vagrant ssh-config` run in
    `vagrant_dir` (seconds: Vagrant loads its plugins)."""
    if saved:
        try:
            return Path(saved).read_text()
        except OSError as exc:
            raise VagrantError(f"cannot read the saved ssh-config {saved}: {exc.strerror}") from None
    try:
        result = subprocess.run(
            ["vagrant", "ssh-config"], cwd=vagrant_dir, capture_output=True, text=True, timeout=120,
            check=False, stdin=subprocess.DEVNULL,
        )  # fmt: skip
    except FileNotFoundError:
        raise VagrantError("vagrant is not installed (see the README, section Vagrant)") from None
    if result.returncode != 0:
        detail = (result.stderr or result.stdout).strip().splitlines()[-1:] or ["no output"]
        raise VagrantError(
            f"`vagrant ssh-config` in {vagrant_dir} failed: {detail[0]} (is the fleet up? `vagrant up`)"
        )
    return result.stdout


def read_fleet_data(path: str | None) -> dict[str, Any]:
    """Settings for every machine from a JSON file (the lab writes one), else none."""
    if not path:
        return {}
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, ValueError) as exc:
        raise VagrantError(f"cannot read the fleet settings {path}: {exc}") from None
    if not isinstance(data, dict):
        raise VagrantError(f"{path} must hold a JSON object of settings, not {type(data).__name__}")
    return data


def environment_path(name: str) -> str | None:
    return os.environ.get(name) or None


def admin_subnets(entries: list[SshEntry], private_subnet: str) -> list[str]:
    """Where the deploy's SSH arrives from: the private network, plus what each provider's SSH path uses.

    VirtualBox forwards 127.0.0.1:2222 through its NAT, so the guest sees 10.0.2.2; libvirt reaches the
    management address directly, from the host's end of that network (its /24).
    """
    subnets = [private_subnet]
    private = ipaddress.ip_network(private_subnet, strict=False)
    for entry in entries:
        try:
            address = ipaddress.ip_address(entry.hostname)
        except ValueError:
            continue
        if address.is_loopback:
            extra = VIRTUALBOX_NAT_GATEWAY
        elif address in private:
            continue
        else:
            extra = str(ipaddress.ip_network(f"{address}/24", strict=False))
        if extra not in subnets:
            subnets.append(extra)
    return subnets


VIRTUALBOX_NAT_GATEWAY = "10.0.2.2/32"
