"""The running lab as recorded in `.lab/slot<S>/state.json`, and the small API tests and tools use.

state = load(0)
state.hosts[0].ip, state.key_path, state.ssh_config_path, state.mirror_url
outsider_run(state, ["curl", "-sS", f"http://{state.hosts[0].ip}/"])
"""

from __future__ import annotations

import json
import subprocess
from dataclasses import asdict, dataclass, field
from pathlib import Path

from ollama_fleet.lab.paths import state_dir
from ollama_fleet.lab.plan import SlotPlan
from ollama_fleet.lab.releases import DEFAULT_RELEASE
from ollama_fleet.lab.run import LabError


@dataclass
class HostState:
    name: str
    machine: str
    ip: str
    root: str
    """Overlay mount point (the host's /)."""
    cgroups: list[str]
    pid: int | None = None
    """PID of this host's systemd-nspawn (the only process `down` signals for it)."""
    release: str = DEFAULT_RELEASE
    """The Debian release it boots (releases.RELEASES)."""


@dataclass
class LabState:
    slot: int
    hosts: list[HostState]
    key_path: str
    ssh_config_path: str
    inventory_path: str
    outsider_netns: str
    outsider_ip: str
    mirror_url: str
    """Base URL of the mirror: `<mirror_url>/debian/`, `/ollama/`, `/models/`."""
    base_rootfs: str
    """The base rootfs of the first host's release (each host's release: HostState.release)."""
    runtime_dir: str
    cgroup_roots: list[str]
    mirror_pid: int | None = None
    phase: str = "starting"
    """"starting" until every host is SSH-ready, then "ready"."""
    timings: dict[str, float] = field(default_factory=dict)
    provider: str = "nspawn"
    """"nspawn", or "vagrant" for the Vagrantfile's machines (vagrant-lxc) on the slot's bridge."""

    @property
    def plan(self) -> SlotPlan:
        return SlotPlan(self.slot)

    def host(self, name: str) -> HostState:
        for host in self.hosts:
            if name in (host.name, host.machine, host.ip):
                return host
        raise LabError(f"no host {name!r} in lab slot {self.slot}")

    def ssh_command(self, host: str, command: str) -> list[str]:
        """argv that runs `command` on a lab host as root through the lab's ssh_config."""
        return ["ssh", "-F", self.ssh_config_path, self.host(host).name, command]


def state_file(slot: int) -> Path:
    return state_dir(slot) / "state.json"


def save(state: LabState) -> None:
    path = state_file(state.slot)
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_suffix(".tmp")
    temporary.write_text(json.dumps(asdict(state), indent=2) + "\n")
    temporary.rename(path)


def load(slot: int) -> LabState:
    path = state_file(slot)
    if not path.is_file():
        raise LabError(f"no lab in slot {slot} (no {path}); run `ollama-fleet lab up --slot {slot}`")
    raw = json.loads(path.read_text())
    raw["hosts"] = [HostState(**host) for host in raw["hosts"]]
    return LabState(**raw)


def exists(slot: int) -> bool:
    return state_file(slot).is_file()


def outsider_run(
    state: LabState, command: list[str], timeout: float = 30
) -> subprocess.CompletedProcess[str]:
    """Run a command inside the outsider namespace (a machine on a subnet the firewall should not trust)."""
    return subprocess.run(
        ["ip", "netns", "exec", state.outsider_netns, *command],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
