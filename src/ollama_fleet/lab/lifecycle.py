"""`lab up`, `lab down`, `lab status`: the steps in order, each undone by `down` by name or recorded PID."""

from __future__ import annotations

import dataclasses
import json
import os
import secrets
import shutil
import subprocess
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from ollama_fleet.lab import cgroups, hosts, mirror, network, registry, rootfs, state, sysctls, vagrant_fleet
from ollama_fleet.lab.artifacts import ensure_tiny_model
from ollama_fleet.lab.inventory import (
    LAB_KEY_NAMES,
    lab_settings,
    render_inventory,
    render_ssh_config,
    render_vagrant_inventory,
    secrets_path,
)
from ollama_fleet.lab.paths import inventory_path, runtime_dir, state_dir
from ollama_fleet.lab.plan import MIRROR_PORT, HostPlan, SlotPlan
from ollama_fleet.lab.releases import DEFAULT_RELEASE, release_of_host
from ollama_fleet.lab.run import LabError, run
from ollama_fleet.lab.state import HostState, LabState

REQUIRED_TOOLS = (
    "systemd-nspawn", "debootstrap", "nft", "ip", "ssh", "ssh-keygen", "dpkg-scanpackages", "mount"
)  # fmt: skip


def check_prerequisites() -> None:
    if os.geteuid() != 0:
        raise LabError("the lab needs root (systemd-nspawn, mounts, bridges, nft)")
    missing = [tool for tool in REQUIRED_TOOLS if shutil.which(tool) is None]
    if missing:
        raise LabError(
            f"missing tools: {', '.join(missing)} (apt-get install systemd-container debootstrap "
            "nftables iproute2 openssh-client dpkg-dev)"
        )


def ensure_key(slot: int) -> Path:
    key = state_dir(slot) / "id_ed25519"
    if not key.is_file():
        key.parent.mkdir(parents=True, exist_ok=True)
        run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", f"ollama-fleet-lab{slot}", "-f", str(key)])
    return key


def ensure_lab_secrets(slot: int) -> Path:
    """The lab fleet's API keys (random, 0600, kept across up/down like the SSH key; a name added to
    LAB_KEY_NAMES since gets its key)."""
    path = secrets_path(state_dir(slot))
    document = json.loads(path.read_text()) if path.is_file() else {"api_keys": {}}
    missing = [name for name in LAB_KEY_NAMES if name not in document["api_keys"]]
    if not missing:
        return path
    for name in missing:
        document["api_keys"][name] = f"lab-{name}-{secrets.token_urlsafe(24)}"
    path.parent.mkdir(parents=True, exist_ok=True)
    staged = path.with_name(f".{path.name}.new")
    staged.unlink(missing_ok=True)
    fd = os.open(staged, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as out:
        json.dump(document, out)
    staged.replace(path)
    return path


OWNER_FILE = "owner"
"""In the slot's runtime dir: the `.lab/slot<S>` directory of the clone whose lab this is."""


def refuse_if_owned_elsewhere(slot: int) -> None:
    """Slots are machine-wide; never clear a live lab that another clone brought up."""
    owner_file = runtime_dir(slot) / OWNER_FILE
    owner = owner_file.read_text().strip() if owner_file.is_file() else str(state_dir(slot))
    if owner != str(state_dir(slot)) and network.link_exists(SlotPlan(slot).bridge):
        raise LabError(
            f"slot {slot} is in use by the lab of {owner}; run `lab down --slot {slot}` there, "
            "or pick another slot (--slot / OLLAMA_FLEET_LAB_SLOT)"
        )


def up(
    host_count: int,
    slot: int,
    log: bool = True,
    vagrant: bool = False,
    releases: list[str] | None = None,
) -> LabState:
    """Bring a lab of `host_count` hosts up in `slot` (after clearing any stale lab of that slot): nspawn
    hosts, or with `vagrant` the Vagrantfile's machines (vagrant-lxc) on the slot's network. Host i runs
    `releases[(i - 1) % len(releases)]` (default: the default release on every host).

    When any step fails the half-made lab is torn down again (its console logs stay in .lab/slot<S>/logs).
    """
    releases = releases or [DEFAULT_RELEASE]
    check_prerequisites()
    if vagrant:
        vagrant_fleet.check_prerequisites()
        if len(set(releases)) != 1:
            raise LabError("the Vagrant machines share one box: pass one release (--release trixie)")
    SlotPlan(slot).hosts(host_count)  # validate before touching anything
    refuse_if_owned_elsewhere(slot)
    down(slot, log=False)
    try:
        return _bring_up(host_count, slot, log, vagrant, releases)
    except BaseException:
        down(slot, log=False)
        raise


def _bring_up(host_count: int, slot: int, log: bool, vagrant: bool, releases: list[str]) -> LabState:
    t0 = time.monotonic()
    bases = {}
    for release in dict.fromkeys(releases):
        bases[release] = rootfs.ensure_base(release, log=log)
        mirror.ensure_debs(bases[release], release)
    registry.ensure_registry(ensure_tiny_model())
    t_prepared = time.monotonic()
    base = bases[releases[0]]
    lab = _new_state(slot, base)
    lab.provider = "vagrant" if vagrant else "nspawn"
    # Recorded before anything is made, so `down` can clear a crash at any point below.
    state.save(lab)
    _start_controller_side(lab, host_count)
    if vagrant:
        results: list[hosts.Readiness] = []
        lab.hosts = vagrant_fleet.up(lab.plan, host_count, base, releases[0])
        lab.ssh_config_path = str(vagrant_fleet.ssh_config_path(slot))
    else:
        started = _start_hosts(lab, bases, releases, SlotPlan(slot).hosts(host_count))
        results = _wait_all_ready(lab, started)
    t_ready = time.monotonic()
    lab.timings = {
        "prepare_s": round(t_prepared - t0, 2),
        "boot_to_ssh_ready_s": round(t_ready - t_prepared, 2),
        "total_s": round(t_ready - t0, 2),
    }
    _report_degraded(results)
    lab.phase = "ready"
    state.save(lab)
    inventory = Path(lab.inventory_path)
    inventory.parent.mkdir(parents=True, exist_ok=True)
    ensure_lab_secrets(slot)
    if vagrant:
        settings = lab_settings(lab.plan, state_dir(slot), ensure_tiny_model())
        vagrant_fleet.data_path(slot).write_text(json.dumps(settings, indent=2) + "\n")
        inventory.write_text(render_vagrant_inventory(lab, vagrant_fleet.lab_environment(slot)))
    else:
        inventory.write_text(render_inventory(lab, ensure_tiny_model()))
    return lab


def _logs(slot: int) -> Path:
    return state_dir(slot) / "logs"


def _new_state(slot: int, base: Path) -> LabState:
    plan = SlotPlan(slot)
    shutil.rmtree(_logs(slot), ignore_errors=True)  # console logs of the previous lab of this slot
    _logs(slot).mkdir(parents=True)
    return LabState(
        slot=slot,
        hosts=[],
        key_path=str(ensure_key(slot)),
        ssh_config_path=str(state_dir(slot) / "ssh_config"),
        inventory_path=str(inventory_path(slot)),
        outsider_netns=plan.netns,
        outsider_ip=plan.outsider_ip,
        mirror_url=plan.mirror_base_url,
        base_rootfs=str(base),
        runtime_dir=str(runtime_dir(slot)),
        cgroup_roots=[str(path) for path in cgroups.lab_roots(plan.cgroup_name)],
    )


def _start_controller_side(lab: LabState, host_count: int) -> None:
    """Slot ownership, sysctls, networks, the lab's cgroup trees and the mirror server."""
    plan = lab.plan
    Path(lab.runtime_dir).mkdir(parents=True, exist_ok=True)
    (Path(lab.runtime_dir) / OWNER_FILE).write_text(f"{state_dir(lab.slot)}\n")
    sysctls.claim(lab.slot, sysctls.wanted_for(host_count))
    network.up(plan)
    cgroups.make([Path(root) for root in lab.cgroup_roots])
    lab.mirror_pid = mirror.start_server(plan.gateway_ip, MIRROR_PORT, _logs(lab.slot) / "mirror.log")
    cgroups.move_pid(lab.mirror_pid, [Path(root) / "mirror" for root in lab.cgroup_roots])
    state.save(lab)


def _start_hosts(
    lab: LabState, bases: dict[str, Path], releases: list[str], everyone: list[HostPlan]
) -> dict[str, float]:
    """Prepare and boot every host on its release's base (recording each PID as soon as it exists); return
    their start times."""
    public_key = Path(f"{lab.key_path}.pub").read_text()
    started: dict[str, float] = {}
    for me in everyone:
        release = release_of_host(releases, me.index)
        root = hosts.prepare_root(
            bases[release], Path(lab.runtime_dir) / me.machine, me, lab.plan, everyone, public_key, release
        )
        host_cgroups = [Path(r) / me.machine for r in lab.cgroup_roots]
        lab.hosts.append(
            HostState(me.name, me.machine, me.ip, str(root), [str(c) for c in host_cgroups], release=release)
        )
        state.save(lab)
        started[me.name] = time.monotonic()
        lab.hosts[-1].pid = hosts.start(root, me, lab.plan, host_cgroups, _logs(lab.slot) / f"{me.name}.log")
        state.save(lab)
    Path(lab.ssh_config_path).write_text(render_ssh_config(lab, str(state_dir(lab.slot))))
    return started


def _wait_all_ready(lab: LabState, started: dict[str, float]) -> list[hosts.Readiness]:
    key, logs = Path(lab.key_path), _logs(lab.slot)

    def wait(host: HostState) -> hosts.Readiness:
        return hosts.wait_ready(
            host.name, host.ip, key, host.pid or 0, started[host.name], logs / f"{host.name}.log"
        )

    with ThreadPoolExecutor(max_workers=min(32, len(lab.hosts))) as pool:
        results = list(pool.map(wait, lab.hosts))
    not_ready = [r for r in results if not r.ssh_ready]
    if not_ready:
        details = "; ".join(f"{r.name}: {r.system_state}" for r in not_ready)
        raise LabError(f"hosts not SSH-ready: {details} (logs in {logs})")
    return results


def _report_degraded(results: list[hosts.Readiness]) -> None:
    for result in results:
        if result.system_state != "running":
            print(
                f"lab: WARNING {result.name} is {result.system_state}; failed units:\n{result.failed_units}"
            )


def _host_pids(lab: LabState | None, plan: SlotPlan, roots: list[Path]) -> list[int]:
    """Each host's own nspawn PID: as recorded, plus any found in the lab's host cgroups after a crash that
    lost the record (nspawn moves itself to `<host>/supervisor` in the hierarchies it manages). A PID counts
    only while it is a systemd-nspawn inside the lab's cgroups, so a reused PID is never signalled."""
    candidates = {host.pid for host in lab.hosts if host.pid} if lab else set()
    for root in roots:
        for host_cgroup in root.iterdir() if root.is_dir() else []:
            if host_cgroup.is_dir() and host_cgroup.name != "mirror":
                candidates.update(cgroups.pids_anywhere_in(host_cgroup))
    return sorted(
        pid for pid in candidates if pid and cgroups.pid_is_in(pid, plan.cgroup_name) and hosts.is_nspawn(pid)
    )


def _mirror_pids(lab: LabState | None, plan: SlotPlan, roots: list[Path]) -> list[int]:
    candidates = {lab.mirror_pid} if lab and lab.mirror_pid else set()
    for root in roots:
        candidates.update(cgroups.pids_directly_in(root / "mirror"))
    return sorted(pid for pid in candidates if mirror.is_server_process(pid, plan.gateway_ip))


def _lab_mounts(runtime: Path) -> list[str]:
    """Mount points under the slot's runtime dir, deepest first."""
    mounts = []
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        point = line.split()[4].replace("\\040", " ")
        if point == str(runtime) or point.startswith(f"{runtime}/"):
            mounts.append(point)
    return sorted(mounts, key=len, reverse=True)


def _remove_nspawn_lock(root: Path) -> None:
    """nspawn locks each root in /run/systemd/nspawn/locks/inode-DEV:INO and leaves the file behind when it
    is killed; remove the one of this (still mounted) root."""
    try:
        st = root.stat()
    except OSError:
        return
    Path(f"/run/systemd/nspawn/locks/inode-{st.st_dev}:{st.st_ino}").unlink(missing_ok=True)


def _close_ssh_masters(lab: LabState) -> None:
    """End ControlPersist masters users opened through the lab's ssh_config (they would outlive the hosts)."""
    if not Path(lab.ssh_config_path).is_file():
        return
    for host in lab.hosts:
        subprocess.run(
            ["ssh", "-F", lab.ssh_config_path, "-O", "exit", host.name],
            capture_output=True, timeout=10, check=False, stdin=subprocess.DEVNULL,
        )  # fmt: skip


def down(slot: int, log: bool = True) -> list[str]:
    """Remove everything the lab of `slot` made; safe to run twice and after a crash. Returns what it did."""
    plan = SlotPlan(slot)
    lab = state.load(slot) if state.exists(slot) else None
    recorded = [Path(r) for r in lab.cgroup_roots] if lab else []
    roots = list(dict.fromkeys([*recorded, *cgroups.find_lab_roots(plan.cgroup_name)]))
    runtime = Path(lab.runtime_dir) if lab else runtime_dir(slot)
    if lab:
        _close_ssh_masters(lab)
    done = vagrant_fleet.destroy(slot)
    done += _stop_processes(lab, plan, roots)
    done += _unmount_and_remove(runtime)
    done += [f"removed cgroup {root}" for root in roots if root.is_dir() and cgroups.remove_tree(root)]
    done += network.down(plan)
    restored = sysctls.release(slot)
    done += [f"restored {', '.join(restored)}"] if restored else []
    done += _remove_user_files(slot, Path(lab.inventory_path) if lab else inventory_path(slot))
    if log:
        print("\n".join(f"lab: {line}" for line in done) or f"lab: slot {slot} had nothing to remove")
    busy = {str(root): cgroups.pids_anywhere_in(root) for root in roots if root.is_dir()}
    if busy:
        raise LabError(
            f"cgroups still hold processes {busy}; they were not started by the lab, not killing them"
        )
    return done


def _stop_processes(lab: LabState | None, plan: SlotPlan, roots: list[Path]) -> list[str]:
    """Each host's nspawn (SIGTERM is a clean poweroff), then the mirror server: only their own PIDs."""
    done = []
    host_pids = _host_pids(lab, plan, roots)
    if host_pids:
        killed = hosts.stop(host_pids)
        done.append(f"stopped hosts (nspawn PIDs {host_pids})" + (f", SIGKILLed {killed}" if killed else ""))
    mirror_pids = _mirror_pids(lab, plan, roots)
    if mirror_pids:
        killed = hosts.stop(mirror_pids, timeout=5)
        done.append(
            f"stopped mirror server (PID {mirror_pids})" + (f", SIGKILLed {killed}" if killed else "")
        )
    return done


def _unmount(under: Path) -> list[str]:
    done = []
    for point in _lab_mounts(under):
        _remove_nspawn_lock(Path(point))
        if subprocess.run(["umount", point], capture_output=True, check=False).returncode != 0:
            run(["umount", "--lazy", point])
        done.append(f"unmounted {point}")
    return done


def _unmount_and_remove(runtime: Path) -> list[str]:
    done = _unmount(runtime)
    if runtime.exists():
        shutil.rmtree(runtime)
        done.append(f"removed {runtime}")
    return done


def _remove_user_files(slot: int, inventory: Path) -> list[str]:
    """state.json, ssh_config, the inventory and stale ControlMaster sockets; the key and logs stay."""
    done = []
    for leftover in (state.state_file(slot), state_dir(slot) / "ssh_config", inventory):
        if leftover.exists():
            leftover.unlink()
            done.append(f"removed {leftover}")
    for socket_path in state_dir(slot).glob("cm-*"):
        socket_path.unlink()
    return done


def status(slot: int) -> dict[str, object]:
    """What is running in the slot: hosts, IPs, running/stopped, SSH-ready, and the mirror."""
    if not state.exists(slot):
        return {"slot": slot, "up": False, "hosts": []}
    lab = state.load(slot)
    key = Path(lab.key_path)

    def host_status(host: HostState) -> dict[str, object]:
        if lab.provider == "vagrant":
            running = vagrant_fleet.is_running(host.machine)
            probe = ["ssh", "-F", lab.ssh_config_path, "-o", "ConnectTimeout=2", host.name, "true"]
        else:
            running = (
                bool(host.pid)
                and hosts.is_alive(host.pid or 0)
                and cgroups.pid_is_in(host.pid or 0, lab.plan.cgroup_name)
            )
            probe = hosts.ssh_probe_command(key, host.ip, "true", connect_timeout=2)
        ready = running and subprocess.run(
            probe, capture_output=True, timeout=15, check=False, stdin=subprocess.DEVNULL
        ).returncode == 0  # fmt: skip
        return {
            "name": host.name,
            "ip": host.ip,
            "release": host.release,
            "pid": host.pid,
            "running": running,
            "ssh_ready": ready,
        }

    with ThreadPoolExecutor(max_workers=16) as pool:
        host_rows = list(pool.map(host_status, lab.hosts))
    mirror_up = bool(lab.mirror_pid) and mirror.is_server_process(lab.mirror_pid or 0, lab.plan.gateway_ip)
    return {
        "slot": slot,
        "up": True,
        "provider": lab.provider,
        "phase": lab.phase,
        "hosts": host_rows,
        "mirror": {"url": lab.mirror_url, "pid": lab.mirror_pid, "running": mirror_up},
        "outsider": {"netns": lab.outsider_netns, "ip": lab.outsider_ip},
        "ssh_config": lab.ssh_config_path,
        "inventory": lab.inventory_path,
        "timings": lab.timings,
    }


KEPT_SUFFIX = ".kept"
"""`<runtime>/<machine>.kept`: a host's previous image, kept by `reimage(keep=True)` for `restore`."""


def reimage(slot: int, name: str, release: str, keep: bool = False, log: bool = True) -> HostState:
    """Re-image one nspawn host in place, as an operator re-installs a machine: the same name, IP and
    machine, a fresh root on `release`'s base, so none of its state and a new SSH host key. With `keep` its
    previous image is put aside for `restore` (the tests put the session's host back as it was)."""
    lab = state.load(slot)
    host = _nspawn_host(lab, name)
    base = rootfs.ensure_base(release, log=log)
    mirror.ensure_debs(base, release)
    host_dir = _power_off(lab, host)
    kept = host_dir.with_name(host.machine + KEPT_SUFFIX)
    shutil.rmtree(kept, ignore_errors=True)
    if keep:
        (host_dir / "release").write_text(f"{host.release}\n")
        host_dir.rename(kept)
    else:
        shutil.rmtree(host_dir)
    public_key = Path(f"{lab.key_path}.pub").read_text()
    everyone = lab.plan.hosts(len(lab.hosts))
    hosts.prepare_root(base, host_dir, _plan_of(lab, host), lab.plan, everyone, public_key, release)
    host.release = release
    return _boot(lab, host)


def restore(slot: int, name: str) -> HostState:
    """Put back the image `reimage(keep=True)` set aside (its state, its SSH host key, its release)."""
    lab = state.load(slot)
    host = _nspawn_host(lab, name)
    host_dir = Path(lab.runtime_dir) / host.machine
    kept = host_dir.with_name(host.machine + KEPT_SUFFIX)
    if not kept.is_dir():
        raise LabError(f"{name} has no kept image to restore ({kept}); `reimage` keeps one only when asked")
    _power_off(lab, host)
    shutil.rmtree(host_dir)
    kept.rename(host_dir)
    host.release = (host_dir / "release").read_text().strip()
    hosts.mount_overlay(rootfs.ensure_base(host.release, log=False), host_dir)
    return _boot(lab, host)


def restart(slot: int, name: str) -> HostState:
    """Power one host off and boot it again on its root as it is (a reboot: nspawn exits on one)."""
    lab = state.load(slot)
    host = _nspawn_host(lab, name)
    host_dir = _power_off(lab, host)
    hosts.mount_overlay(rootfs.ensure_base(host.release, log=False), host_dir)
    return _boot(lab, host)


def _nspawn_host(lab: LabState, name: str) -> HostState:
    if lab.provider != "nspawn":
        raise LabError(f"lab slot {lab.slot} runs {lab.provider} machines; only nspawn hosts are re-imaged")
    return lab.host(name)


def _power_off(lab: LabState, host: HostState) -> Path:
    """Stop one host (a clean poweroff), unmount its root and empty its cgroups; return its directory."""
    if Path(lab.ssh_config_path).is_file():
        subprocess.run(
            ["ssh", "-F", lab.ssh_config_path, "-O", "exit", host.name],
            capture_output=True, timeout=10, check=False, stdin=subprocess.DEVNULL,
        )  # fmt: skip
    if host.pid and hosts.is_nspawn(host.pid) and cgroups.pid_is_in(host.pid, lab.plan.cgroup_name):
        hosts.stop([host.pid])
    host.pid = None
    state.save(lab)
    host_dir = Path(lab.runtime_dir) / host.machine
    _unmount(host_dir / "root")
    for cgroup in host.cgroups:
        cgroups.remove_tree(Path(cgroup))
    return host_dir


def _plan_of(lab: LabState, host: HostState) -> HostPlan:
    return next(plan for plan in lab.plan.hosts(len(lab.hosts)) if plan.name == host.name)


def _boot(lab: LabState, host: HostState) -> HostState:
    """Start one host on its mounted root and wait until it is SSH-ready (the lab's state records it)."""
    started = {host.name: time.monotonic()}
    log, host_cgroups = _logs(lab.slot) / f"{host.name}.log", [Path(c) for c in host.cgroups]
    host.pid = hosts.start(Path(host.root), _plan_of(lab, host), lab.plan, host_cgroups, log)
    state.save(lab)
    _report_degraded(_wait_all_ready(dataclasses.replace(lab, hosts=[host]), started))
    return host
