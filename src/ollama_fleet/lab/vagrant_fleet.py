"""The lab's Vagrant fleet: the top-level Vagrantfile brought up with vagrant-lxc on a lab slot's bridge.

Nested KVM does not work on the machines the lab runs on, so the lab exercises the Vagrantfile with the lxc
provider, on a box made here from the lab's own root filesystem of one release (Debian 12 unless asked for
13). The slot's controller side (bridge, mirror, nft table, outsider) serves the containers exactly as it
serves nspawn hosts; Vagrant's machine state lives in `.lab/slot<S>/vagrant`, so `lab down` destroys what
`lab up --vagrant` made and nothing else.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
import time
from pathlib import Path

from ollama_fleet.lab.paths import cache_dir, repo_root, state_dir
from ollama_fleet.lab.plan import LAB_SUPERNET, SlotPlan
from ollama_fleet.lab.releases import DEFAULT_RELEASE, RELEASES
from ollama_fleet.lab.run import LabError, run, run_long, succeeds
from ollama_fleet.lab.state import HostState
from ollama_fleet.localfiles import exclusive_lock
from ollama_fleet.vagrant import parse_ssh_config

BOX_NAME = "ollama-fleet/debian12-lab"
"""The box of the default release (the Vagrantfile's OLLAMA_FLEET_LXC_BOX default)."""
BOX_RECIPE_VERSION = 1
"""Bump when `_customize` or the files below change, so the added box is rebuilt."""

REQUIRED_TOOLS = ("vagrant", "lxc-start", "lxc-ls")

# vagrant-lxc 1.4: metadata version "1.0.0" (older formats make it inject the insecure key) and no
# template-opts (its template refuses options it does not know).
LXC_CONFIG = (
    "lxc.include = /usr/share/lxc/config/common.conf\nlxc.arch = amd64\nlxc.apparmor.profile = unconfined\n"
)
SUDOERS = "vagrant ALL=(ALL:ALL) NOPASSWD: ALL\n"
SSHD_CONF = "UseDNS no\nPasswordAuthentication no\nKbdInteractiveAuthentication no\n"
# Host keys are made by each machine at its first boot (machines from one box must not share them), before
# Debian's own `sshd -t`, which fails without them.
SSH_HOST_KEYS = (
    "[Service]\nExecStartPre=\nExecStartPre=/usr/bin/ssh-keygen -A\nExecStartPre=/usr/sbin/sshd -t\n"
)
ETC_HOSTS = "127.0.0.1 localhost\n::1 localhost ip6-localhost ip6-loopback\n"


def check_prerequisites() -> None:
    missing = [tool for tool in REQUIRED_TOOLS if shutil.which(tool) is None]
    if missing:
        raise LabError(
            f"the Vagrant lab needs {', '.join(missing)}: apt-get install --no-install-recommends vagrant "
            "vagrant-lxc lxc"
        )


def box_key() -> Path:
    """The SSH key the box authorizes for `vagrant` (like Vagrant's own box key, but this machine's)."""
    key = cache_dir() / "vagrant" / "box_ed25519"
    if not key.is_file():
        key.parent.mkdir(parents=True, exist_ok=True)
        run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "ollama-fleet-vagrant-box", "-f", str(key)])
    return key


def box_name(release: str = DEFAULT_RELEASE) -> str:
    """One box per release, named by its Debian version: ollama-fleet/debian12-lab, .../debian13-lab."""
    return f"ollama-fleet/{RELEASES[release].lower().replace(' ', '')}-lab"


def box_hash(base: Path, public_key: str) -> str:
    """The base rootfs is named by its recipe's hash, so this names the box's whole content."""
    parts = (str(BOX_RECIPE_VERSION), base.name, LXC_CONFIG, SUDOERS, SSHD_CONF, SSH_HOST_KEYS, public_key)
    return hashlib.sha256("\0".join(parts).encode()).hexdigest()[:16]


def vagrant_home() -> Path:
    return Path(os.environ.get("VAGRANT_HOME", Path.home() / ".vagrant.d"))


def added_box_hash(release: str = DEFAULT_RELEASE) -> str | None:
    box_dir = vagrant_home() / "boxes" / box_name(release).replace("/", "-VAGRANTSLASH-")
    for metadata in box_dir.glob("*/lxc/metadata.json"):
        try:
            return str(json.loads(metadata.read_text()).get("ollama_fleet_box_hash"))
        except (OSError, ValueError):
            return None
    return None


def ensure_box(base: Path, release: str = DEFAULT_RELEASE, log: bool = True) -> Path:
    """Add `release`'s lxc box built from `base` (that release's base rootfs) unless the added one is the
    same; return the key it authorizes."""
    key = box_key()
    wanted = box_hash(base, Path(f"{key}.pub").read_text())
    if added_box_hash(release) == wanted:
        return key
    with exclusive_lock(cache_dir() / "vagrant" / ".lock"):
        if added_box_hash(release) != wanted:
            name = box_name(release)
            if log:
                print(f"lab: building the Vagrant box {name} from {base} (~1 min, once)", flush=True)
            _build_and_add(base, Path(f"{key}.pub").read_text(), wanted, name)
    return key


def _build_and_add(base: Path, public_key: str, content_hash: str, name: str) -> None:
    work = cache_dir() / "vagrant"
    with tempfile.TemporaryDirectory(prefix="box-", dir=work) as staging:
        stage = Path(staging)
        run(["cp", "-a", str(base), str(stage / "rootfs")])  # the base itself stays untouched
        _customize(stage / "rootfs", public_key)
        box = stage / "box"
        box.mkdir()
        # vagrant-lxc's template unpacks with --strip-components=2: the entries must be ./rootfs/...
        run_long(
            ["tar", "--numeric-owner", "--xattrs", "--xattrs-include=*", "-I", "gzip -1", "-cf",
             str(box / "rootfs.tar.gz"), "-C", str(stage), "./rootfs"],
            "packing the Vagrant box",
        )  # fmt: skip
        (box / "lxc-config").write_text(LXC_CONFIG)
        metadata = {"provider": "lxc", "version": "1.0.0", "ollama_fleet_box_hash": content_hash}
        (box / "metadata.json").write_text(json.dumps(metadata) + "\n")
        box_file = stage / f"{name.split('/')[-1]}.box"
        run(["tar", "-cf", str(box_file), "-C", str(box), "metadata.json", "lxc-config", "rootfs.tar.gz"])
        run(["vagrant", "box", "add", "--force", "--name", name, str(box_file)], timeout=600)


def _customize(root: Path, public_key: str) -> None:
    """A Vagrant base box: user `vagrant` with the box key and passwordless sudo, per-machine host keys."""
    useradd = ["useradd", "--create-home", "--shell", "/bin/bash", "--password", "*", "vagrant"]
    run(["chroot", str(root), *useradd])
    script = (
        "install -d -m 700 -o vagrant -g vagrant /home/vagrant/.ssh && umask 077 && "
        "cat > /home/vagrant/.ssh/authorized_keys && chown vagrant:vagrant /home/vagrant/.ssh/authorized_keys"
    )
    run(["chroot", str(root), "sh", "-c", script], input_text=public_key)
    sudoers = root / "etc/sudoers.d/vagrant"
    sudoers.write_text(SUDOERS)
    sudoers.chmod(0o440)
    (root / "etc/ssh/sshd_config.d/vagrant.conf").write_text(SSHD_CONF)
    host_keys = root / "etc/systemd/system/ssh.service.d/host-keys.conf"
    host_keys.parent.mkdir(parents=True, exist_ok=True)
    host_keys.write_text(SSH_HOST_KEYS)
    # Until Vagrant provisions eth0's .network file nothing matches it, and wait-online would only time out.
    run(["chroot", str(root), "systemctl", "mask", "systemd-networkd-wait-online.service"])
    run(["chroot", str(root), "systemctl", "enable", "ssh.service"])
    (root / "etc/hosts").write_text(ETC_HOSTS)


def dotfile_dir(slot: int) -> Path:
    return state_dir(slot) / "vagrant"


def ssh_config_path(slot: int) -> Path:
    return state_dir(slot) / "vagrant-ssh-config"


def data_path(slot: int) -> Path:
    """The lab fleet's settings as JSON, for inventories/vagrant.py (OLLAMA_FLEET_VAGRANT_DATA)."""
    return state_dir(slot) / "vagrant-data.json"


def lab_environment(slot: int) -> dict[str, str]:
    """What inventories/vagrant.py needs to describe this slot's Vagrant fleet."""
    return {
        "OLLAMA_FLEET_VAGRANT_SSH_CONFIG": str(ssh_config_path(slot)),
        "OLLAMA_FLEET_VAGRANT_DATA": str(data_path(slot)),
        "OLLAMA_FLEET_VAGRANT_SUBNET": SlotPlan(slot).hosts_subnet,
    }


def container_prefix(slot: int) -> str:
    return f"ollama-fleet-lab{slot}-"


def vagrant_env(plan: SlotPlan, host_count: int, key: Path, release: str = DEFAULT_RELEASE) -> dict[str, str]:
    """What the Vagrantfile reads, for this slot: its bridge, subnets, mirror and route, and the lxc box
    and mirror repository of `release`."""
    return {
        **os.environ,
        "VAGRANT_CWD": str(repo_root()),
        "VAGRANT_DOTFILE_PATH": str(dotfile_dir(plan.slot)),
        "VAGRANT_DEFAULT_PROVIDER": "lxc",
        "VAGRANT_CHECKPOINT_DISABLE": "1",
        "OLLAMA_FLEET_HOSTS": str(host_count),
        "OLLAMA_FLEET_VAGRANT_SUBNET": plan.hosts_subnet,
        "OLLAMA_FLEET_VAGRANT_SUBNET6": plan.hosts_subnet6,
        "OLLAMA_FLEET_VAGRANT_BRIDGE": plan.bridge,
        "OLLAMA_FLEET_VAGRANT_ROUTE": LAB_SUPERNET,
        "OLLAMA_FLEET_VAGRANT_PREFIX": container_prefix(plan.slot),
        "OLLAMA_FLEET_SSH_KEY": str(key),
        "OLLAMA_FLEET_APT_SOURCE": plan.apt_source_line_for(release),
        "OLLAMA_FLEET_LXC_BOX": box_name(release),
    }


def up(plan: SlotPlan, host_count: int, base: Path, release: str = DEFAULT_RELEASE) -> list[HostState]:
    """`vagrant up --provider=lxc` on the slot's (already made) bridge, every machine on `release`'s box
    (`base` is its base rootfs); the machines as lab hosts."""
    check_prerequisites()
    env = vagrant_env(plan, host_count, ensure_box(base, release), release)
    _vagrant(["up", "--provider=lxc"], env, "vagrant up")
    ssh_config = run(["vagrant", "ssh-config"], env=env, timeout=120)
    ssh_config_path(plan.slot).write_text(ssh_config)
    return [
        HostState(
            entry.name, f"{container_prefix(plan.slot)}{entry.name}", entry.hostname, "", [], release=release
        )
        for entry in parse_ssh_config(ssh_config)
    ]


def destroy(slot: int) -> list[str]:
    """`vagrant destroy -f` of the slot's machines, then any container of the slot Vagrant lost track of."""
    done = []
    plan = SlotPlan(slot)
    if dotfile_dir(slot).is_dir() and shutil.which("vagrant"):
        env = vagrant_env(plan, 1, box_key())
        env["OLLAMA_FLEET_HOSTS"] = str(_machines_made(slot) or 1)
        _vagrant(["destroy", "-f"], env, "vagrant destroy")
        done.append(f"destroyed the Vagrant machines of {dotfile_dir(slot)}")
        shutil.rmtree(dotfile_dir(slot))
    for name in _containers(container_prefix(slot)):
        succeeds(["lxc-stop", "--kill", "-n", name], timeout=60)
        run(["lxc-destroy", "-n", name])
        done.append(f"destroyed lxc container {name}")
    for leftover in (ssh_config_path(slot), data_path(slot)):
        leftover.unlink(missing_ok=True)
    return done


def is_running(container: str) -> bool:
    try:
        return "RUNNING" in run(["lxc-info", "--state", "--no-humanize", "-n", container], timeout=30)
    except LabError:  # no such container
        return False


def _machines_made(slot: int) -> int:
    machines = dotfile_dir(slot) / "machines"
    return len(list(machines.iterdir())) if machines.is_dir() else 0


def _containers(prefix: str) -> list[str]:
    if shutil.which("lxc-ls") is None:
        return []
    return [name for name in run(["lxc-ls", "-1"]).split() if name.startswith(prefix)]


def _vagrant(args: list[str], env: dict[str, str], stage: str) -> None:
    started = time.monotonic()
    run_long(["vagrant", *args], stage, env=env, timeout=900)
    print(f"lab: {stage} took {time.monotonic() - started:.0f}s", flush=True)
