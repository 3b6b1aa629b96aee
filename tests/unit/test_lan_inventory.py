"""The example inventory, as `pyinfra` itself loads it, gives every host valid settings."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from ollama_fleet.gateway import gateway_plan, with_gateway_group
from ollama_fleet.settings import settings_for_host

pytestmark = pytest.mark.unit

REPO = Path(__file__).resolve().parents[2]
KEYS = {
    "OLLAMA_FLEET_API_KEY_TEAM": "exampleTEAMkey0123456789",
    "OLLAMA_FLEET_API_KEY_CI": "exampleCIkey0123456789ab",
}


def inventory_hosts() -> list[dict[str, Any]]:
    """`pyinfra debug-inventory --json` (a subprocess: pyinfra's CLI monkey-patches with gevent)."""
    pyinfra = str(Path(sys.executable).parent / "pyinfra")
    result = subprocess.run(
        [pyinfra, "inventories/lan.py", "debug-inventory", "--json"],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    )
    hosts: list[dict[str, Any]] = json.loads(result.stdout)
    return hosts


def test_example_lan_fleet_is_valid_with_groups_and_host_overrides() -> None:
    hosts = {h["name"]: h for h in inventory_hosts()}
    settings = {
        name: settings_for_host(name, with_gateway_group(h["data"], h["groups"]), environ=KEYS)
        for name, h in hosts.items()
    }

    assert sorted(settings) == [
        "cpu-1.example.lan",
        "gpu-1.example.lan",
        "gpu-2.example.lan",
        "gw-1.example.lan",
    ]
    assert "gpu_servers" in hosts["gpu-1.example.lan"]["groups"]
    gpu, cpu = settings["gpu-1.example.lan"], settings["cpu-1.example.lan"]
    assert gpu.ollama.env["OLLAMA_NUM_PARALLEL"] == "4"  # group data
    assert cpu.server_names == ["cpu-1.example.lan", "ollama.example.lan"]  # host data
    assert gpu.server_names == ["gpu-1.example.lan"]  # default: the inventory name
    assert [k.name for k in gpu.auth.keys] == ["team", "ci"]
    assert gpu.nginx.read_timeout == 900  # group_data/all.py default
    assert [str(n) for n in gpu.firewall.admin_subnets] == ["192.168.10.0/28"]


def test_example_gateway_box_serves_the_gateway_only_over_the_three_hosts() -> None:
    hosts = {h["name"]: h for h in inventory_hosts()}
    fleet = {
        name: settings_for_host(name, with_gateway_group(h["data"], h["groups"]), environ=KEYS)
        for name, h in hosts.items()
    }
    box = fleet["gw-1.example.lan"]
    assert box.is_gateway and not box.serves_api
    addresses = {name: h["data"]["ssh_hostname"] for name, h in hosts.items()}
    plan = gateway_plan(fleet, addresses)
    assert [m.name for m in plan.members] == ["gpu-1.example.lan", "gpu-2.example.lan", "cpu-1.example.lan"]
    assert plan.models == ("llama3.2:1b", "vehicle-assistant:latest")
