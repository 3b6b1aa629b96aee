"""The top-level Vagrantfile, for real: `vagrant up` (lxc, on a box made from the lab's rootfs), a deploy as
the `vagrant` sudoer through inventories/vagrant.py, the testinfra suite over `vagrant ssh-config`, `verify`,
and `vagrant destroy`, which runs even when a test fails. libvirt and VirtualBox cannot run here (no nested
KVM, no VirtualBox in Debian): their halves of the Vagrantfile are checked with `vagrant validate`.

The machines use their own lab slot ($OLLAMA_FLEET_VAGRANT_SLOT, default 100: 10.213.200.0/24), so they never
meet the session's nspawn lab. Their release is $OLLAMA_FLEET_VAGRANT_RELEASE (default bookworm, the
Vagrantfile's default box; trixie runs the same module on the Debian 13 box): one release per session, since
this module's `vagrant up` and deploy are its cost and the nspawn lab already runs every module on both.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from verify_fleet import PYINFRA, DeployedFleet, statuses

from ollama_fleet.lab import lifecycle, vagrant_fleet
from ollama_fleet.lab.paths import repo_root
from ollama_fleet.lab.state import LabState

pytestmark = pytest.mark.e2e

SLOT = int(os.environ.get("OLLAMA_FLEET_VAGRANT_SLOT", "100"))
MACHINES = 2
RELEASE = os.environ.get("OLLAMA_FLEET_VAGRANT_RELEASE", "bookworm")
VBOXMANAGE = '#!/bin/sh\n[ "$1" = --version ] && echo 7.0.20r163906\n'
"""Stands in for VirtualBox's VBoxManage: `vagrant validate` only asks it for its version."""


def vagrant(args: list[str], env: dict[str, str], timeout: float = 300) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["vagrant", *args], cwd=repo_root(), env=env, capture_output=True, text=True, timeout=timeout,
        check=False, stdin=subprocess.DEVNULL,
    )  # fmt: skip


@pytest.mark.parametrize("provider", ["libvirt", "virtualbox"])
def test_the_vagrantfile_validates_for_the_providers_users_run(provider: str, tmp_path: Path) -> None:
    shim = tmp_path / "bin"
    shim.mkdir()
    (shim / "VBoxManage").write_text(VBOXMANAGE)
    (shim / "VBoxManage").chmod(0o755)
    env = {
        **os.environ,
        "PATH": f"{shim}:{os.environ['PATH']}",
        "VAGRANT_DEFAULT_PROVIDER": provider,
        "VAGRANT_DOTFILE_PATH": str(tmp_path / "dot"),
        "VAGRANT_CHECKPOINT_DISABLE": "1",
    }
    done = vagrant(["validate"], env)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "Vagrantfile validated successfully." in done.stdout
    # Provider blocks are checked, not skipped: a setting the provider does not know fails validation.
    broken = tmp_path / "broken"
    broken.mkdir()
    setting = "libvirt.cpus = CPUS" if provider == "libvirt" else "vbox.cpus = CPUS"
    unknown = f"{setting}; {setting.split('.')[0]}.no_such = 1"
    (broken / "Vagrantfile").write_text((repo_root() / "Vagrantfile").read_text().replace(setting, unknown))
    refused = vagrant(["validate"], {**env, "VAGRANT_CWD": str(broken)})
    assert refused.returncode != 0 and "no_such" in refused.stdout + refused.stderr


@pytest.fixture(scope="module")
def machines() -> Iterator[LabState]:
    try:
        yield lifecycle.up(MACHINES, SLOT, vagrant=True, releases=[RELEASE])
    finally:
        lifecycle.down(SLOT)


@pytest.fixture(scope="module")
def fleet(machines: LabState) -> DeployedFleet:
    """Deployed through inventories/vagrant.py as a user runs it: it asks `vagrant ssh-config` itself."""
    env = {
        **vagrant_fleet.vagrant_env(machines.plan, MACHINES, vagrant_fleet.box_key(), RELEASE),
        "OLLAMA_FLEET_VAGRANT_DATA": str(vagrant_fleet.data_path(SLOT)),
        "OLLAMA_FLEET_VAGRANT_SUBNET": machines.plan.hosts_subnet,
    }
    done = subprocess.run(
        [PYINFRA, "-y", "inventories/vagrant.py", "deploys/ollama.py"],
        cwd=repo_root(), env=env, capture_output=True, text=True, timeout=900, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-4000:]
    keys = json.loads((Path(machines.key_path).parent / "secrets.json").read_text())["api_keys"]
    return DeployedFleet(lab=machines, keys=keys, model="tiny:latest")


def test_machines_are_reached_as_vagrant_with_sudo_and_not_as_root(machines: LabState) -> None:
    assert [host.name for host in machines.hosts] == ["fleet-1", "fleet-2"]
    assert [host.ip for host in machines.hosts] == ["10.213.200.11", "10.213.200.12"] or SLOT != 100
    whoami = subprocess.run(
        machines.ssh_command("fleet-1", "id -un; sudo -n id -u; hostname"),
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert whoami.stdout.split() == ["vagrant", "0", "fleet-1"], whoami.stderr
    as_root = subprocess.run(
        ["ssh", "-F", machines.ssh_config_path, "-l", "root", "-o", "BatchMode=yes", "fleet-1", "true"],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert as_root.returncode == 255 and "Permission denied" in as_root.stderr


def test_each_machine_runs_the_release_of_its_box(machines: LabState) -> None:
    for host in machines.hosts:
        release = subprocess.run(
            machines.ssh_command(host.name, ". /etc/os-release; echo $VERSION_CODENAME"),
            capture_output=True, text=True, timeout=60, check=True,
        )  # fmt: skip
        assert release.stdout.strip() == host.release == RELEASE


def test_each_machine_made_its_own_ssh_host_key(machines: LabState) -> None:
    def fingerprint(host: str) -> str:
        listed = subprocess.run(
            machines.ssh_command(host, "ssh-keygen -lf /etc/ssh/ssh_host_ed25519_key.pub"),
            capture_output=True, text=True, timeout=60, check=True,
        )  # fmt: skip
        return listed.stdout.split()[1]

    assert len({fingerprint(host.name) for host in machines.hosts}) == MACHINES


def test_the_testinfra_suite_passes_over_vagrant_ssh_config(fleet: DeployedFleet) -> None:
    hosts = ",".join(fleet.hosts)
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests/infra", f"--hosts={hosts}",
         f"--ssh-config={fleet.lab.ssh_config_path}", "--sudo"],
        cwd=repo_root(), env={**os.environ, "OLLAMA_FLEET_INVENTORY": fleet.lab.inventory_path},
        capture_output=True, text=True, timeout=600, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout[-4000:]
    summary = done.stdout.strip().splitlines()[-1]
    passed = re.match(r"(\d+) passed in", summary)
    assert passed and int(passed.group(1)) >= 10 * MACHINES, summary  # every check on every machine


def test_verify_passes_every_check_on_every_machine(fleet: DeployedFleet) -> None:
    code, report = fleet.verify()
    assert code == 0, json.dumps(report, indent=1)[-3000:]
    assert sorted(statuses(report)) == fleet.hosts
    for host, checks in statuses(report).items():
        # Every check passes; gpu says n/a (gpu_vendor auto on machines without a GPU: nothing required).
        assert {name: s for name, s in checks.items() if s != "pass"} == {"gpu": "n/a"}, (host, checks)


def test_a_second_deploy_changes_nothing(fleet: DeployedFleet) -> None:
    done = fleet.run([PYINFRA, "-y", "--json", fleet.lab.inventory_path, "deploys/ollama.py"], timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    operations = json.loads(done.stdout)["results"]["operations"]
    changed = {op["name"]: op["success"] for op in operations if op["success"]}
    assert not changed, changed


def test_lab_down_destroys_the_machines(machines: LabState) -> None:
    lifecycle.down(SLOT, log=False)
    listed = subprocess.run(["lxc-ls", "-1"], capture_output=True, text=True, check=True).stdout.split()
    assert not [name for name in listed if name.startswith(vagrant_fleet.container_prefix(SLOT))]
    assert not vagrant_fleet.dotfile_dir(SLOT).exists()
    assert not Path(machines.inventory_path).exists()
