"""Files the lab writes for its users: the pyinfra inventory and the ssh_config (pure renderers)."""

from __future__ import annotations

from ollama_fleet.lab.plan import SlotPlan
from ollama_fleet.lab.state import LabState


def lab_settings(plan: SlotPlan) -> dict[str, object]:
    """Deploy settings every lab host gets (host data, so they override group_data defaults)."""
    return {
        "ollama_source": "mirror",
        "ollama_mirror_url": f"{plan.mirror_base_url}/ollama",
        "firewall_client_subnets": [plan.hosts_subnet],
        "firewall_admin_subnets": [plan.hosts_subnet],
        "lab_outsider_ip": plan.outsider_ip,
    }


def ssh_data(state: LabState) -> dict[str, object]:
    return {
        "ssh_user": "root",
        "ssh_key": state.key_path,
        "ssh_known_hosts_file": "/dev/null",
        "ssh_strict_host_key_checking": "no",
    }


def _host_line(name: str, ip: str) -> str:
    return f'    ("{name}", {{"ssh_hostname": "{ip}", **_ssh, **_lab}}),\n'


def render_inventory(state: LabState) -> str:
    canary, rest = state.hosts[:1], state.hosts[1:]
    return (
        f'"""pyinfra inventory of lab slot {state.slot}: written by `ollama-fleet lab up`, removed by '
        '`lab down`."""\n\n'
        f"_ssh = {ssh_data(state)!r}\n"
        f"_lab = {lab_settings(state.plan)!r}\n\n"
        "lab_canary = [\n"
        + "".join(_host_line(h.name, h.ip) for h in canary)
        + "]\n"
        + "lab_rest = [\n"
        + "".join(_host_line(h.name, h.ip) for h in rest)
        + "]\n"
        + "lab_hosts = lab_canary + lab_rest\n"
    )


def render_ssh_config(state: LabState, control_dir: str) -> str:
    names = " ".join(host.name for host in state.hosts)
    ips = " ".join(host.ip for host in state.hosts)
    per_host = "".join(f"Host {host.name}\n    HostName {host.ip}\n\n" for host in state.hosts)
    return (
        f"# Lab slot {state.slot}, written by `ollama-fleet lab up`: ssh -F THIS lab-1, "
        f"or pytest --ssh-config=THIS\n\n" + per_host + f"Host {names} {ips}\n"
        "    User root\n"
        f"    IdentityFile {state.key_path}\n"
        "    IdentitiesOnly yes\n"
        "    StrictHostKeyChecking no\n"
        "    UserKnownHostsFile /dev/null\n"
        "    LogLevel ERROR\n"
        "    ControlMaster auto\n"
        "    ControlPersist 60s\n"
        f"    ControlPath {control_dir}/cm-%C\n"
    )
