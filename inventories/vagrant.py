"""The machines of the top-level Vagrantfile as a pyinfra inventory (`vagrant up` first).

    vagrant up --provider=libvirt            # or virtualbox, lxc
    pyinfra -y inventories/vagrant.py deploys/ollama.py
    ollama-fleet verify inventories/vagrant.py

Hosts and connections come from `vagrant ssh-config` (run in the repository, or read from the file named by
OLLAMA_FLEET_VAGRANT_SSH_CONFIG: `vagrant ssh-config > .vagrant/ssh-config` once saves seconds per command).
The deploy logs in as `vagrant` and uses sudo. The fleet's settings below suit a trial on the Vagrantfile's
private network; OLLAMA_FLEET_VAGRANT_DATA may name a JSON file of settings that win over them (the lab
writes one). The API key `vagrant` comes from OLLAMA_FLEET_API_KEY_VAGRANT or .fleet/secrets.json.
"""

import os
from pathlib import Path

from ollama_fleet.vagrant import (
    admin_subnets,
    environment_path,
    inventory_hosts,
    parse_ssh_config,
    read_fleet_data,
    read_ssh_config,
)

_subnet = os.environ.get("OLLAMA_FLEET_VAGRANT_SUBNET", "10.213.200.0/24")
_vagrant_dir = Path(__file__).resolve().parent.parent
_machines = parse_ssh_config(
    read_ssh_config(_vagrant_dir, environment_path("OLLAMA_FLEET_VAGRANT_SSH_CONFIG"))
)
_fleet = {
    "firewall_client_subnets": [_subnet],
    "firewall_admin_subnets": admin_subnets(_machines, _subnet),
    "auth_key_names": ["vagrant"],
    **read_fleet_data(environment_path("OLLAMA_FLEET_VAGRANT_DATA")),
}

vagrant_hosts = inventory_hosts(_machines, _fleet)
# Rollouts reach this group first.
canary = [name for name, _ in vagrant_hosts[:1]]
