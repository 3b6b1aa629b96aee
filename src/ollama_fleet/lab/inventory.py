"""Files the lab writes for its users: the pyinfra inventory and the ssh_config (pure renderers)."""

from __future__ import annotations

from pathlib import Path

from ollama_fleet.lab.plan import SlotPlan
from ollama_fleet.lab.state import LabState

LAB_ORIGIN = "https://app.lab.example"
"""The browser origin lab fleets allow, for CORS checks."""

LAB_KEY_NAMES = ("ci", "ops", "webapp", "kiosk")
"""API keys every lab fleet has; their values are made by `lab up` in `.lab/slot<S>/secrets.json`."""

LAB_KEY_POLICIES = {
    "ops": {"scope": "admin"},
    "webapp": {"rate": "2r/m"},
    "kiosk": {"models": ["tiny"]},
}
"""ci: an inference key; ops: the admin; webapp: a browser app's key, rate-limited so tests can reach it;
kiosk: an app that may use the tiny model only."""

VEHICLE_ASSISTANT = {
    "name": "vehicle-assistant",
    "base": "tiny",
    "system": "You answer questions about vehicles.",
    "parameters": {"num_predict": 16, "temperature": 0.2},
}
"""The guide's custom model, built FROM the tiny GGUF so the lab exercises Modelfiles too."""


def lab_settings(plan: SlotPlan, state_dir: Path, tiny_model: Path) -> dict[str, object]:
    """Deploy settings every lab host gets: a complete, working fleet with nothing more to write.

    They are host data, so they win over group_data files; tests that need other values pass `--data`.
    """
    return {
        # The lab mirror is a release page (v<version>/<archive>, sha256sum.txt): only the URL differs.
        "ollama_release_url": f"{plan.mirror_base_url}/ollama",
        "ollama_origins": [LAB_ORIGIN],
        "firewall_client_subnets": [plan.hosts_subnet, plan.hosts_subnet6],
        "firewall_admin_subnets": [plan.hosts_subnet],
        "auth_key_names": list(LAB_KEY_NAMES),
        "auth_key_policies": LAB_KEY_POLICIES,
        "auth_secrets_file": str(secrets_path(state_dir)),
        "tls_ca_dir": str(state_dir / "pki"),
        "models_gguf": {"tiny": str(tiny_model)},
        "models_custom": [VEHICLE_ASSISTANT],
        "lab_outsider_ip": plan.outsider_ip,
        "lab_outsider_netns": plan.netns,
    }


def secrets_path(state_dir: Path) -> Path:
    return state_dir / "secrets.json"


def ssh_data(state: LabState) -> dict[str, object]:
    return {
        "ssh_user": "root",
        "ssh_key": state.key_path,
        "ssh_known_hosts_file": "/dev/null",
        "ssh_strict_host_key_checking": "no",
    }


def _host_line(name: str, ip: str) -> str:
    return f'    ("{name}", {{"ssh_hostname": "{ip}", **_ssh, **_lab}}),\n'


def render_inventory(state: LabState, tiny_model: Path) -> str:
    canary, rest = state.hosts[:1], state.hosts[1:]
    return (
        f'"""pyinfra inventory of lab slot {state.slot}: written by `ollama-fleet lab up`, removed by '
        '`lab down`."""\n\n'
        f"_ssh = {ssh_data(state)!r}\n"
        f"_lab = {lab_settings(state.plan, Path(state.key_path).parent, tiny_model)!r}\n\n"
        "lab_canary = [\n"
        + "".join(_host_line(h.name, h.ip) for h in canary)
        + "]\n"
        + "lab_rest = [\n"
        + "".join(_host_line(h.name, h.ip) for h in rest)
        + "]\n"
        + "lab_hosts = lab_canary + lab_rest\n"
    )


def render_vagrant_inventory(state: LabState, environment: dict[str, str]) -> str:
    """The slot's Vagrant fleet: inventories/vagrant.py itself, pointed at the lab's files."""
    return (
        f'"""pyinfra inventory of lab slot {state.slot}: the Vagrant machines of inventories/vagrant.py, '
        "with the lab's\nssh-config and settings. Written by `ollama-fleet lab up --vagrant`, removed by "
        '`lab down`."""\n\n'
        "import os\nimport runpy\nfrom pathlib import Path\n\n"
        + "".join(f"os.environ[{key!r}] = {value!r}\n" for key, value in environment.items())
        + '_inventory = runpy.run_path(str(Path(__file__).with_name("vagrant.py")))\n'
        + "globals().update({k: v for k, v in _inventory.items() if not k.startswith('_')})\n"
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
