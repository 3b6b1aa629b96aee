"""inventories/vagrant.py: `vagrant ssh-config` of each provider read into hosts pyinfra reaches as `vagrant`
with sudo, with settings valid for a deploy (no Vagrant needed: the ssh-config is given as a saved file)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from ollama_fleet.lab.inventory import render_vagrant_inventory
from ollama_fleet.lab.plan import SlotPlan
from ollama_fleet.lab.state import LabState
from ollama_fleet.settings import settings_for_host
from ollama_fleet.vagrant import (
    VIRTUALBOX_NAT_GATEWAY,
    SshEntry,
    VagrantError,
    admin_subnets,
    parse_ssh_config,
    read_fleet_data,
)

pytestmark = pytest.mark.unit

REPO = Path(__file__).resolve().parents[2]

LXC_SSH_CONFIG = """\
Host fleet-1
  HostName 10.213.200.11
  User vagrant
  Port 22
  UserKnownHostsFile /dev/null
  StrictHostKeyChecking no
  PasswordAuthentication no
  IdentityFile /var/cache/ollama-fleet/vagrant/box_ed25519
  IdentitiesOnly yes
  LogLevel FATAL

Host fleet-2
  HostName 10.213.200.12
  User vagrant
  Port 22
  IdentityFile /var/cache/ollama-fleet/vagrant/box_ed25519
"""

VIRTUALBOX_SSH_CONFIG = """\
Host fleet-1
  HostName 127.0.0.1
  User vagrant
  Port 2222
  IdentityFile "/home/me/ollama-fleet/.vagrant/machines/fleet-1/virtualbox/private_key"
  IdentitiesOnly yes
"""


def test_parse_reads_each_machine_of_an_ssh_config() -> None:
    assert parse_ssh_config(LXC_SSH_CONFIG) == [
        SshEntry("fleet-1", "10.213.200.11", "vagrant", 22, "/var/cache/ollama-fleet/vagrant/box_ed25519"),
        SshEntry("fleet-2", "10.213.200.12", "vagrant", 22, "/var/cache/ollama-fleet/vagrant/box_ed25519"),
    ]
    (forwarded,) = parse_ssh_config(VIRTUALBOX_SSH_CONFIG)
    assert (forwarded.hostname, forwarded.port) == ("127.0.0.1", 2222)
    assert forwarded.identity_file == "/home/me/ollama-fleet/.vagrant/machines/fleet-1/virtualbox/private_key"


def test_admin_subnets_hold_where_each_provider_ssh_arrives_from() -> None:
    subnet = "10.213.200.0/24"
    assert admin_subnets(parse_ssh_config(LXC_SSH_CONFIG), subnet) == [subnet]
    assert admin_subnets(parse_ssh_config(VIRTUALBOX_SSH_CONFIG), subnet) == [subnet, VIRTUALBOX_NAT_GATEWAY]
    libvirt = [SshEntry("fleet-1", "192.168.121.57", "vagrant", 22, None)]
    assert admin_subnets(libvirt, subnet) == [subnet, "192.168.121.0/24"]


def debug_inventory(inventory: str, env: dict[str, str]) -> dict[str, dict[str, Any]]:
    pyinfra = str(Path(sys.executable).parent / "pyinfra")
    result = subprocess.run(
        [pyinfra, inventory, "debug-inventory", "--json"],
        cwd=REPO, env={**os.environ, **env}, capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-2000:]
    return {host["name"]: host for host in json.loads(result.stdout)}


def test_the_inventory_gives_vagrant_sudo_hosts_with_valid_settings(tmp_path: Path) -> None:
    saved = tmp_path / "ssh-config"
    saved.write_text(VIRTUALBOX_SSH_CONFIG)
    hosts = debug_inventory(
        "inventories/vagrant.py",
        {
            "OLLAMA_FLEET_VAGRANT_SSH_CONFIG": str(saved),
            "OLLAMA_FLEET_API_KEY_VAGRANT": "trialKEY0123456789abcd",
        },
    )
    data = hosts["fleet-1"]["data"]
    assert set(hosts["fleet-1"]["groups"]) >= {"vagrant_hosts", "canary"}
    assert (data["ssh_hostname"], data["ssh_port"], data["ssh_user"], data["_sudo"]) == (
        "127.0.0.1", 2222, "vagrant", True
    )  # fmt: skip
    assert data["firewall_admin_subnets"] == ["10.213.200.0/24", VIRTUALBOX_NAT_GATEWAY]
    settings = settings_for_host("fleet-1", data, {"OLLAMA_FLEET_API_KEY_VAGRANT": "trialKEY0123456789abcd"})
    assert [str(net) for net in settings.firewall.client_subnets] == ["10.213.200.0/24"]


def test_fleet_data_wins_over_the_inventory_defaults(tmp_path: Path) -> None:
    saved, data_file = tmp_path / "ssh-config", tmp_path / "fleet.json"
    saved.write_text(LXC_SSH_CONFIG)
    data_file.write_text(json.dumps({"auth_key_names": ["ci"], "firewall_client_subnets": ["10.213.0.0/16"]}))
    env = {"OLLAMA_FLEET_VAGRANT_SSH_CONFIG": str(saved), "OLLAMA_FLEET_VAGRANT_DATA": str(data_file)}
    hosts = debug_inventory("inventories/vagrant.py", env)
    assert sorted(hosts) == ["fleet-1", "fleet-2"]
    assert "canary" not in hosts["fleet-2"]["groups"]
    assert hosts["fleet-2"]["data"]["auth_key_names"] == ["ci"]
    assert hosts["fleet-2"]["data"]["firewall_client_subnets"] == ["10.213.0.0/16"]


def test_unreadable_fleet_data_names_the_file(tmp_path: Path) -> None:
    (tmp_path / "list.json").write_text("[1]")
    with pytest.raises(VagrantError, match=r"list\.json must hold a JSON object"):
        read_fleet_data(str(tmp_path / "list.json"))
    with pytest.raises(VagrantError, match="cannot read the fleet settings"):
        read_fleet_data(str(tmp_path / "missing.json"))


def test_the_lab_inventory_is_the_vagrant_inventory_pointed_at_the_lab(tmp_path: Path) -> None:
    saved = tmp_path / "ssh-config"
    saved.write_text(LXC_SSH_CONFIG)
    lab = LabState(100, [], "", str(saved), "", "", "", "", "", "", [], provider="vagrant")
    wrapper = REPO / "inventories" / "lab-unit-test.py"
    env = {
        "OLLAMA_FLEET_VAGRANT_SSH_CONFIG": str(saved),
        "OLLAMA_FLEET_VAGRANT_SUBNET": SlotPlan(100).hosts_subnet,
    }
    wrapper.write_text(render_vagrant_inventory(lab, env))
    try:
        hosts = debug_inventory(str(wrapper), {"OLLAMA_FLEET_API_KEY_VAGRANT": "trialKEY0123456789abcd"})
    finally:
        wrapper.unlink()
    assert sorted(hosts) == ["fleet-1", "fleet-2"]
    assert hosts["fleet-1"]["data"]["ssh_key"] == "/var/cache/ollama-fleet/vagrant/box_ed25519"
