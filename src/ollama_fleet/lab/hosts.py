"""Lab hosts: systemd-nspawn containers booted on an overlay over the base rootfs, one cgroup each."""

from __future__ import annotations

import contextlib
import os
import shlex
import signal
import socket
import subprocess
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

from ollama_fleet.lab import cgroups
from ollama_fleet.lab.plan import LAB_SUPERNET, HostPlan, SlotPlan
from ollama_fleet.lab.releases import DEFAULT_RELEASE
from ollama_fleet.lab.run import LabError, run

LAB_SUDO_USER = "deployer"
"""Every lab host's non-root sudoer (same SSH key as root)."""

SSH_PROBE_OPTIONS = (
    "-o", "BatchMode=yes",
    "-o", "StrictHostKeyChecking=no",
    "-o", "UserKnownHostsFile=/dev/null",
    "-o", "LogLevel=ERROR",
    "-o", "ConnectTimeout=3",
    # Probes must not leave ControlPersist masters behind.
    "-o", "ControlMaster=no",
    "-o", "ControlPath=none",
)  # fmt: skip


def etc_hosts(me: HostPlan, plan: SlotPlan, everyone: list[HostPlan]) -> str:
    """/etc/hosts with the host's own name (else sudo waits on DNS) and every lab peer."""
    lines = ["127.0.0.1 localhost", f"127.0.1.1 {me.name}", f"{plan.gateway_ip} lab-controller"]
    lines += [f"{peer.ip} {peer.name}" for peer in everyone if peer != me]
    lines += ["::1 localhost ip6-localhost ip6-loopback"]
    return "\n".join(lines) + "\n"


def networkd_config(me: HostPlan, plan: SlotPlan) -> str:
    """Static addresses and routes to the lab supernets only: hosts have no default route, so no way out."""
    return (
        "[Match]\nName=host0\n\n"
        f"[Network]\nAddress={me.ip}/24\nAddress={me.ip6}/64\nLinkLocalAddressing=no\nIPv6AcceptRA=no\n"
        "IPv6DuplicateAddressDetection=0\n\n"
        f"[Route]\nDestination={LAB_SUPERNET}\nGateway={plan.gateway_ip}\n"
    )


def prepare_root(
    base: Path,
    host_dir: Path,
    me: HostPlan,
    plan: SlotPlan,
    everyone: list[HostPlan],
    public_key: str,
    release: str = DEFAULT_RELEASE,
) -> Path:
    """Mount a fresh overlay over `release`'s base for the host and write its identity into the upper
    layer."""
    root = mount_overlay(base, host_dir)
    etc = root / "etc"
    (etc / "hostname").write_text(f"{me.name}\n")
    (etc / "hosts").write_text(etc_hosts(me, plan, everyone))
    (etc / "machine-id").write_text(f"{uuid.uuid4().hex}\n")
    (etc / "apt/sources.list").write_text(f"{plan.apt_source_line_for(release)}\n")
    (etc / "systemd/network/10-host0.network").write_text(networkd_config(me, plan))
    ssh_dir = root / "root/.ssh"
    ssh_dir.mkdir(mode=0o700, exist_ok=True)
    (ssh_dir / "authorized_keys").write_text(public_key)
    (ssh_dir / "authorized_keys").chmod(0o600)
    add_sudo_user(root, public_key)
    key = etc / "ssh/ssh_host_ed25519_key"
    run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", f"root@{me.name}", "-f", str(key)])
    return root


def mount_overlay(base: Path, host_dir: Path) -> Path:
    """Mount `host_dir`'s root: its upper layer (made empty when missing) over `base`. Returns the root."""
    upper, work, root = host_dir / "upper", host_dir / "work", host_dir / "root"
    for directory in (upper, work, root):
        directory.mkdir(parents=True, exist_ok=True)
    run(
        [
            "mount", "-t", "overlay", "overlay",
            "-o", f"lowerdir={base},upperdir={upper},workdir={work}",
            str(root),
        ]
    )  # fmt: skip
    return root


def add_sudo_user(root: Path, public_key: str) -> None:
    """LAB_SUDO_USER: a non-root login with passwordless sudo, as most real LANs are deployed through."""
    useradd = ["useradd", "--create-home", "--shell", "/bin/bash", "--password", "*", LAB_SUDO_USER]
    run(["chroot", str(root), *useradd])
    (root / f"etc/sudoers.d/{LAB_SUDO_USER}").write_text(f"{LAB_SUDO_USER} ALL=(ALL:ALL) NOPASSWD: ALL\n")
    (root / f"etc/sudoers.d/{LAB_SUDO_USER}").chmod(0o440)
    ssh_dir, user = f"/home/{LAB_SUDO_USER}/.ssh", LAB_SUDO_USER
    script = (
        f"install -d -m 700 -o {user} -g {user} {ssh_dir} && umask 077 && cat > {ssh_dir}/authorized_keys "
        f"&& chown {user}:{user} {ssh_dir}/authorized_keys"
    )
    run(["chroot", str(root), "sh", "-c", script], input_text=public_key)


def nspawn_command(root: Path, me: HostPlan, plan: SlotPlan) -> list[str]:
    return [
        "systemd-nspawn",
        "-D", str(root),
        "-b",
        "--register=no",
        "--keep-unit",
        f"--network-bridge={plan.bridge}",
        "-M", me.machine,
        f"--hostname={me.name}",
        "--resolv-conf=off",
        "--link-journal=no",
        "--console=read-only",
    ]  # fmt: skip


def start(root: Path, me: HostPlan, plan: SlotPlan, host_cgroups: list[Path], log: Path) -> int:
    """Boot the host in the background, in its own session and cgroups; return the nspawn PID.

    The shell writes its own PID into each cgroup.procs and then execs nspawn, so nspawn (and the container
    payload cgroup it makes) starts inside the host's cgroups from its first instruction.
    """
    procs = cgroups.make(host_cgroups)
    script = (
        f'for f in {" ".join(shlex.quote(str(p)) for p in procs)}; do echo $$ > "$f" || exit 97; done; '
        'exec "$@"'
    )
    with log.open("wb") as out:
        proc = subprocess.Popen(
            ["sh", "-c", script, "sh", *nspawn_command(root, me, plan)],
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    return proc.pid


def is_alive(pid: int) -> bool:
    """True while the process exists and is not a zombie (reaping it when it is our own child)."""
    try:
        if os.waitpid(pid, os.WNOHANG)[0] == pid:
            return False
    except ChildProcessError:
        pass
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def is_nspawn(pid: int) -> bool:
    try:
        return Path(os.readlink(f"/proc/{pid}/exe")).name == "systemd-nspawn"
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return False


def stop(pids: list[int], timeout: float = 30.0) -> list[int]:
    """SIGTERM each nspawn (a clean poweroff of its host), wait, then SIGKILL only those still alive.
    Returns the PIDs that needed SIGKILL."""
    for pid in pids:
        _signal(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and any(is_alive(pid) for pid in pids):
        time.sleep(0.1)
    killed = [pid for pid in pids if is_alive(pid)]
    for pid in killed:
        _signal(pid, signal.SIGKILL)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and any(is_alive(pid) for pid in killed):
        time.sleep(0.1)
    return killed


def _signal(pid: int, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, sig)


@dataclass
class Readiness:
    name: str
    ssh_ready: bool
    system_state: str
    """Output of `systemctl is-system-running` (running, degraded, ...), or why it could not be read."""
    failed_units: str
    seconds: float


def ssh_probe_command(key: Path, ip: str, command: str, connect_timeout: int = 3) -> list[str]:
    options = [
        f"ConnectTimeout={connect_timeout}" if o == "ConnectTimeout=3" else o for o in SSH_PROBE_OPTIONS
    ]
    return ["ssh", "-i", str(key), "-o", "IdentitiesOnly=yes", *options, f"root@{ip}", command]


def port_open(ip: str, port: int = 22, timeout: float = 0.5) -> bool:
    try:
        socket.create_connection((ip, port), timeout=timeout).close()
        return True
    except OSError:
        return False


def wait_ready(
    name: str, ip: str, key: Path, pid: int, started: float, log: Path, timeout: float = 120.0
) -> Readiness:
    """Wait for sshd, then for boot to finish (`systemctl is-system-running --wait`)."""
    deadline = started + timeout
    while not port_open(ip):
        if not is_alive(pid):
            raise LabError(f"{name}: systemd-nspawn (PID {pid}) exited during boot; see {log}")
        if time.monotonic() > deadline:
            return Readiness(name, False, "sshd not listening", "", time.monotonic() - started)
        time.sleep(0.1)
    while True:
        remaining = max(5, int(deadline - time.monotonic()))
        probe = subprocess.run(
            ssh_probe_command(key, ip, f"timeout {remaining} systemctl is-system-running --wait"),
            capture_output=True, text=True, timeout=remaining + 10, check=False, stdin=subprocess.DEVNULL,
        )  # fmt: skip
        state = probe.stdout.strip() or probe.stderr.strip()
        if probe.stdout.strip() or time.monotonic() > deadline:
            break
        time.sleep(0.2)  # sshd accepted the TCP connection before it could authenticate; retry
    elapsed = time.monotonic() - started
    failed = ""
    if state != "running":
        listing = subprocess.run(
            ssh_probe_command(key, ip, "systemctl --failed --no-legend --plain"),
            capture_output=True, text=True, timeout=30, check=False, stdin=subprocess.DEVNULL,
        )  # fmt: skip
        failed = listing.stdout.strip()
    return Readiness(name, bool(probe.stdout.strip()), state, failed, elapsed)
