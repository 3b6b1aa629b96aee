"""The fleet the infra tests check: an inventory loaded by `pyinfra` itself, with every host's settings.

OLLAMA_FLEET_INVENTORY names the inventory; OLLAMA_FLEET_GROUP_DATA (os.pathsep-separated) adds group data
directories exactly like `pyinfra --group-data`. API keys come from the environment as for a deploy.
"""

from __future__ import annotations

import ipaddress
import json
import os
import subprocess
import sys
from functools import cache
from pathlib import Path
from typing import Any

from ollama_fleet.gateway import with_gateway_group
from ollama_fleet.settings import FleetSettings, settings_for_host

INVENTORY_ENV = "OLLAMA_FLEET_INVENTORY"
GROUP_DATA_ENV = "OLLAMA_FLEET_GROUP_DATA"


@cache
def inventory_data() -> dict[str, dict[str, Any]]:
    """Host name -> merged data, from `pyinfra INVENTORY debug-inventory --json` (run where pytest runs),
    with gateway_enabled decided by the host's groups as the deploy decides it."""
    pyinfra = str(Path(sys.executable).parent / "pyinfra")
    extra = [
        arg for d in os.environ.get(GROUP_DATA_ENV, "").split(os.pathsep) if d for arg in ("--group-data", d)
    ]
    result = subprocess.run(
        [pyinfra, *extra, os.environ[INVENTORY_ENV], "debug-inventory", "--json"],
        capture_output=True,
        text=True,
        check=True,
        timeout=120,
    )
    hosts = json.loads(result.stdout)
    return {host["name"]: with_gateway_group(host["data"], host.get("groups") or []) for host in hosts}


def address(data: dict[str, Any], name: str) -> str:
    return str(data.get("ssh_hostname") or name)


def hostspecs() -> list[str]:
    """testinfra host specs (ssh://[user@]address), one per inventory host."""
    specs = []
    for name, data in inventory_data().items():
        user = f"{data['ssh_user']}@" if data.get("ssh_user") else ""
        specs.append(f"ssh://{user}{address(data, name)}")
    return specs


@cache
def fleet() -> dict[str, tuple[str, FleetSettings]]:
    """Connection address and inventory name -> (inventory name, settings): testinfra names a host the way
    it was given, by address (the hosts below) or by name (`--hosts=fleet-1 --ssh-config=...`)."""
    hosts = {}
    for name, data in inventory_data().items():
        entry = (name, settings_for_host(name, data))
        hosts[address(data, name)] = hosts[name] = entry
    return hosts


def connection_address(hostname: str) -> str:
    """The address pyinfra reaches a host at, whether testinfra names it by address or by inventory name."""
    name = fleet()[hostname][0]
    return address(inventory_data()[name], name)


def ip_of(addr: str) -> str | None:
    try:
        return str(ipaddress.ip_address(addr))
    except ValueError:
        return None
