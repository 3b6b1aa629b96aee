"""The lab itself on real nspawn hosts: booted, reachable, isolated, and gone without a trace after `down`."""

from __future__ import annotations

import hashlib
import os
import subprocess
import time
from pathlib import Path

import pytest

from ollama_fleet.lab import artifacts, cgroups, hosts, lifecycle, network, state, sysctls
from ollama_fleet.lab.paths import REGISTRY_DIR
from ollama_fleet.lab.plan import SlotPlan, default_slot
from ollama_fleet.lab.state import LabState

pytestmark = pytest.mark.e2e


def ssh(lab: LabState, host: str, command: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        lab.ssh_command(host, command), capture_output=True, text=True, timeout=timeout, check=False
    )


def ssh_ok(lab: LabState, host: str, command: str) -> str:
    result = ssh(lab, host, command)
    assert result.returncode == 0, f"{host}: {command}: {result.stderr}"
    return result.stdout.strip()


def test_every_host_booted_to_running(lab: LabState) -> None:
    assert len(lab.hosts) >= 3
    for host in lab.hosts:
        assert ssh_ok(lab, host.name, "systemctl is-system-running") == "running"
        assert ssh_ok(lab, host.name, "hostname") == host.name


def test_hosts_have_distinct_identities(lab: LabState) -> None:
    machine_ids = {ssh_ok(lab, h.name, "cat /etc/machine-id") for h in lab.hosts}
    host_keys = {ssh_ok(lab, h.name, "cat /etc/ssh/ssh_host_ed25519_key.pub").split()[1] for h in lab.hosts}
    assert len(machine_ids) == len(host_keys) == len(lab.hosts)


def test_each_host_runs_in_its_own_cgroup(lab: LabState) -> None:
    for host in lab.hosts:
        assert host.pid and hosts.is_nspawn(host.pid)
        own = Path(f"/proc/{host.pid}/cgroup").read_text()
        assert f"/{lab.plan.cgroup_name}/{host.machine}" in own
        memory = cgroups.memory_bytes([Path(path) for path in host.cgroups])
        assert memory is None or memory > 0


def test_hosts_reach_each_other_by_name_over_ping_and_ssh(lab: LabState) -> None:
    first, *others = lab.hosts
    for peer in others:
        ssh_ok(lab, first.name, f"ping -c 1 -W 2 {peer.name}")
        # ProxyJump: the SSH connection to the peer is opened from the first host.
        jumped = subprocess.run(
            ["ssh", "-F", lab.ssh_config_path, "-J", first.name, peer.ip, "hostname"],
            capture_output=True, text=True, timeout=60, check=False,
        )  # fmt: skip
        assert jumped.stdout.strip() == peer.name, jumped.stderr


def test_outsider_reaches_hosts_through_the_controller(lab: LabState) -> None:
    for host in lab.hosts:
        result = state.outsider_run(
            lab,
            ["ssh", "-i", lab.key_path, "-o", "BatchMode=yes", "-o", "StrictHostKeyChecking=no",
             "-o", "UserKnownHostsFile=/dev/null", "-o", "LogLevel=ERROR", "-o", "ConnectTimeout=5",
             f"root@{host.ip}", "echo $SSH_CLIENT"],
        )  # fmt: skip
        assert result.returncode == 0, result.stderr
        assert result.stdout.split()[0] == lab.outsider_ip


def test_hosts_have_no_route_out_of_the_lab(lab: LabState) -> None:
    for host in lab.hosts:
        assert "default" not in ssh_ok(lab, host.name, "ip route")
        # Route lookups only: nothing is sent.
        assert ssh(lab, host.name, "ip route get 192.0.2.1").returncode != 0
        assert ssh_ok(lab, host.name, f"ip route get {lab.outsider_ip}").startswith(lab.outsider_ip)


def test_controller_forwards_only_lab_traffic() -> None:
    plan = SlotPlan(default_slot())
    ruleset = subprocess.run(
        ["nft", "list", "table", "inet", plan.nft_table], capture_output=True, text=True, check=True
    ).stdout
    assert "policy drop" in ruleset
    assert "ip saddr 10.213.0.0/16 ip daddr 10.213.0.0/16 accept" in ruleset
    assert sysctls.read(sysctls.IP_FORWARD) == "1"


def test_each_host_runs_its_release(lab: LabState) -> None:
    for host in lab.hosts:
        assert ssh_ok(lab, host.name, ". /etc/os-release; echo $VERSION_CODENAME") == host.release


def test_mirror_is_the_hosts_only_apt_source(lab: LabState) -> None:
    first_of_each_release = {h.release: h for h in reversed(lab.hosts)}.values()
    for lab_host in first_of_each_release:
        host = lab_host.name
        sources = ssh_ok(lab, host, "cat /etc/apt/sources.list; ls /etc/apt/sources.list.d")
        source_line = lab.plan.apt_source_line_for(lab_host.release)
        assert sources == source_line
        ssh_ok(lab, host, "apt-get -q update")
        policy = ssh_ok(lab, host, "apt-cache policy nginx ufw zstd")
        assert policy.count(f"{source_line.split()[2]} ./ Packages") == 3
        assert "Candidate: (none)" not in policy
    assert (
        ssh_ok(lab, host, f"curl -s -o /dev/null -w '%{{http_code}}' {lab.mirror_url}/nothing-here") == "404"
    )


def test_mirror_serves_the_model_directory(lab: LabState) -> None:
    model = artifacts.ensure_tiny_model()
    expected = hashlib.sha256(model.read_bytes()).hexdigest()
    url = f"{lab.mirror_url}/models/{model.name}"
    assert ssh_ok(lab, lab.hosts[-1].name, f"curl -sf {url} | sha256sum").split()[0] == expected


def test_inventory_and_ssh_config_are_written(lab: LabState) -> None:
    inventory = Path(lab.inventory_path).read_text()
    for host in lab.hosts:
        assert f'("{host.name}", {{"ssh_hostname": "{host.ip}"' in inventory
    # Through ControlMaster: a second command reuses the first connection.
    ssh_ok(lab, lab.hosts[0].name, "true")
    check = subprocess.run(
        ["ssh", "-F", lab.ssh_config_path, "-O", "check", lab.hosts[0].name], capture_output=True, text=True
    )
    assert check.returncode == 0, check.stderr


def test_status_reports_every_host_running_and_ready(lab: LabState) -> None:
    report = lifecycle.status(lab.slot)
    assert report["up"] is True
    rows = report["hosts"]
    assert isinstance(rows, list)
    assert [(r["name"], r["running"], r["ssh_ready"]) for r in rows] == [
        (h.name, True, True) for h in lab.hosts
    ]


def spare_slot() -> int:
    """A free slot for the teardown test, so the session lab (and anyone else's) stays up meanwhile."""
    if "OLLAMA_FLEET_LAB_SPARE_SLOT" in os.environ:
        return int(os.environ["OLLAMA_FLEET_LAB_SPARE_SLOT"])
    for slot in range(127, 63, -1):
        plan = SlotPlan(slot)
        if not (network.link_exists(plan.bridge) or state.exists(slot) or plan.slot == default_slot()):
            return slot
    raise AssertionError("no free lab slot in 64..127")


def leftovers(before: LabState) -> list[str]:
    """Everything of a lab still present on the controller."""
    plan = before.plan
    found = []
    for pid in [h.pid for h in before.hosts if h.pid] + [before.mirror_pid or 0]:
        if pid and hosts.is_alive(pid) and cgroups.pid_is_in(pid, plan.cgroup_name):
            found.append(f"process {pid}")
    mounts = Path("/proc/self/mountinfo").read_text()
    found += [f"mount {h.root}" for h in before.hosts if f" {h.root} " in mounts]
    found += [f"dir {before.runtime_dir}"] * Path(before.runtime_dir).exists()
    found += [f"cgroup {root}" for root in before.cgroup_roots if Path(root).exists()]
    found += [f"link {name}" for name in (plan.bridge, plan.outsider_bridge, plan.outsider_veth)
              if network.link_exists(name)]  # fmt: skip
    found += [f"link vb-{h.machine}" for h in before.hosts if network.link_exists(f"vb-{h.machine}")]
    found += [f"netns {plan.netns}"] * network.netns_exists(plan.netns)
    found += [f"nft table {plan.nft_table}"] * network.nft_table_exists(plan)
    found += [f"active mark slot{before.slot}"] * (REGISTRY_DIR / "active" / f"slot{before.slot}").exists()
    found += [f"file {p}" for p in (state.state_file(before.slot), Path(before.inventory_path)) if p.exists()]
    return found


@pytest.mark.usefixtures("lab")
def test_up_clears_a_stale_lab_and_down_leaves_nothing_twice() -> None:
    slot = spare_slot()
    first = lifecycle.up(2, slot)
    # A crash: the record is gone, the hosts still run. `up` must find and clear them by their cgroups.
    state.state_file(slot).unlink()
    second = lifecycle.up(2, slot)
    assert all(not hosts.is_alive(h.pid or 0) for h in first.hosts)
    assert all(h.pid and hosts.is_alive(h.pid) for h in second.hosts)

    started = time.monotonic()
    lifecycle.down(slot)
    assert time.monotonic() - started < 20
    assert leftovers(second) == []
    lifecycle.down(slot)
    assert leftovers(second) == []
    # The session lab is still up, so forwarding stays on until it goes down too.
    assert sysctls.read(sysctls.IP_FORWARD) == "1"
