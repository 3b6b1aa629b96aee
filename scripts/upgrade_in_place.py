#!/usr/bin/env python3
"""A deployed Debian 12 lab host upgraded in place to Debian 13 (apt full-upgrade), then deployed again.

    sudo OLLAMA_FLEET_LAB_SLOT=5 .venv/bin/python scripts/upgrade_in_place.py lab-2

On a lab whose fleet is deployed (`pyinfra -y inventories/lab<S>.py deploys/ollama.py`), for one bookworm
host: a trixie repository made of every trixie package the host needs (the packages it has that trixie
still ships, and the trixie base system's), downloaded once with ordinary apt from Debian's archive and
copied into the host, since lab hosts reach nothing but the lab mirror, whose trixie repository holds only
what the deploy installs. On the host: that repository and the mirror's trixie repository as its sources,
`apt-get full-upgrade` keeping changed configuration files (`--force-confold`, as an operator would keep
the deploy's), a reboot, the mirror's trixie repository as its only source; then the same deploy command and
`ollama-fleet verify`. It prints each step's seconds, what the deploy changed on each host and the verify
result. Kept out of CI: it downloads the trixie system (~100 MB, once) and takes minutes.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

from ollama_fleet.lab import lifecycle, mirror, rootfs, state
from ollama_fleet.lab.paths import cache_dir, repo_root
from ollama_fleet.lab.plan import default_slot
from ollama_fleet.lab.run import run

RELEASE = "trixie"
REPO_IN_HOST = "/var/local/trixie-upgrade"
PYINFRA = str(Path(sys.executable).parent / "pyinfra")


def ssh(lab: state.LabState, host: str, command: str, timeout: float = 1800) -> str:
    done = subprocess.run(
        lab.ssh_command(host, command), capture_output=True, text=True, timeout=timeout, check=False
    )
    if done.returncode != 0:
        raise SystemExit(
            f"{host}: {command}: exit {done.returncode}\n{done.stdout[-3000:]}{done.stderr[-3000:]}"
        )
    return done.stdout


def upgrade_repository(installed: set[str]) -> Path:
    """Every trixie package the host needs, with dependencies (resolved against an empty system, so nothing
    is assumed present), indexed as a flat repository; cached by the package list."""
    base = rootfs.ensure_base(RELEASE)
    base_names = set(run(["chroot", str(base), "dpkg-query", "-W", "-f", "${Package}\\n"]).split())
    key = hashlib.sha256("\n".join(sorted(installed | base_names)).encode()).hexdigest()[:12]
    final = cache_dir() / "upgrade" / f"{RELEASE}-{key}"
    if (final / "Packages").is_file():
        return final
    empty = cache_dir() / "upgrade" / "empty-system"
    (empty / "var/lib/dpkg").mkdir(parents=True, exist_ok=True)
    (empty / "var/lib/dpkg/status").touch()
    building = final.with_name(final.name + ".build")
    shutil.rmtree(building, ignore_errors=True)
    (building / "partial").mkdir(parents=True)
    mirror._prepare_apt_dirs(RELEASE)
    options = mirror._apt_options(empty, building, RELEASE)
    run(["apt-get", "-q", *options, "update"], timeout=900)
    available = {
        line.split(": ", 1)[1]
        for line in run(["apt-cache", *options, "dumpavail"], timeout=300).splitlines()
        if line.startswith("Package: ")
    }
    wanted = sorted((installed | base_names) & available)
    print(f"downloading {len(wanted)} trixie packages and their dependencies into {building}", flush=True)
    run(["apt-get", "-q", "-y", *options, "install", "--download-only", *wanted], timeout=1800)
    shutil.rmtree(building / "partial")
    (building / "lock").unlink(missing_ok=True)
    mirror.index_repository(building)
    building.rename(final)
    return final


def deploy(lab: state.LabState) -> dict[str, int]:
    """The fleet's deploy command; host -> operations it changed."""
    done = subprocess.run(
        [PYINFRA, "-y", "--json", lab.inventory_path, "deploys/ollama.py"],
        cwd=repo_root(), capture_output=True, text=True, timeout=1800, check=False,
    )  # fmt: skip
    if done.returncode != 0:
        raise SystemExit(f"the deploy failed:\n{done.stderr[-4000:]}")
    counts: dict[str, int] = {h.name: 0 for h in lab.hosts}
    for operation in json.loads(done.stdout)["results"]["operations"]:
        for name in operation["success"]:
            counts[name] += 1
    changed = sorted({op["name"] for op in json.loads(done.stdout)["results"]["operations"] if op["success"]})
    print("  operations that changed something:\n    " + "\n    ".join(changed or ["(none)"]))
    return counts


def main() -> int:
    host = sys.argv[1] if len(sys.argv) > 1 else "lab-2"
    slot = default_slot()
    lab = state.load(slot)
    root = Path(lab.host(host).root)
    print(f"load: {os.getloadavg()}")
    steps: dict[str, float] = {}
    t = time.monotonic()
    before = ssh(lab, host, ". /etc/os-release; echo $PRETTY_NAME; nginx -v 2>&1; ssh -V 2>&1").strip()
    installed = set(ssh(lab, host, "dpkg-query -W -f '${Package}\\n'").split())
    repo = upgrade_repository(installed)
    steps["trixie repository (download once, cached)"] = time.monotonic() - t

    t = time.monotonic()
    shutil.rmtree(root / REPO_IN_HOST.lstrip("/"), ignore_errors=True)
    shutil.copytree(repo, root / REPO_IN_HOST.lstrip("/"))
    mirror_line = lab.plan.apt_source_line_for(RELEASE)
    ssh(
        lab,
        host,
        f"printf '%s\\n' 'deb [trusted=yes] file:{REPO_IN_HOST} ./' '{mirror_line}' > /etc/apt/sources.list",
    )
    ssh(
        lab,
        host,
        "apt-get -q update && DEBIAN_FRONTEND=noninteractive apt-get -q -y "
        "-o Dpkg::Options::=--force-confold -o Dpkg::Options::=--force-confdef full-upgrade "
        "&& apt-get -q -y autoremove",
    )
    ssh(
        lab,
        host,
        f"echo '{mirror_line}' > /etc/apt/sources.list && rm -rf {REPO_IN_HOST} && apt-get -q update",
    )
    steps["apt full-upgrade"] = time.monotonic() - t

    t = time.monotonic()
    lifecycle.restart(slot, host)
    lab = state.load(slot)
    after = ssh(lab, host, ". /etc/os-release; echo $PRETTY_NAME; nginx -v 2>&1; ssh -V 2>&1").strip()
    failed_units = ssh(lab, host, "systemctl --failed --no-legend --plain || true").strip()
    steps["reboot"] = time.monotonic() - t
    print(f"{host} before: {before!r}\n{host} after:  {after!r}")
    print(f"failed units after the reboot: {failed_units or '(none)'}")

    t = time.monotonic()
    changed = deploy(lab)
    steps["deploy"] = time.monotonic() - t
    print(f"deploy changed, per host: {changed}")
    t = time.monotonic()
    again = deploy(lab)
    steps["second deploy"] = time.monotonic() - t
    print(f"second deploy changed, per host: {again}")
    verify = subprocess.run(
        [sys.executable, "-m", "ollama_fleet.cli", "verify", lab.inventory_path],
        cwd=repo_root(), capture_output=True, text=True, timeout=900, check=False,
    )  # fmt: skip
    print(f"verify: exit {verify.returncode}\n{verify.stdout[-3000:]}")
    for step, seconds in steps.items():
        print(f"{step}: {seconds:.0f} s")
    print(f"load: {os.getloadavg()}")
    return verify.returncode


if __name__ == "__main__":
    sys.exit(main())
