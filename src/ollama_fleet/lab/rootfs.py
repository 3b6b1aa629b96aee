"""The base root filesystem every lab host boots from (read-only lower layer of its overlay).

Built with debootstrap once per recipe (one per Debian release, releases.RELEASES; the release is part of the
recipe) and cached under <cache>/rootfs/<recipe-hash>/. It is built in a temporary directory and renamed into
place only when complete, so a crash never leaves a half base behind.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path

from ollama_fleet.lab.paths import cache_dir
from ollama_fleet.lab.releases import DEFAULT_RELEASE, RELEASES
from ollama_fleet.lab.run import run, run_long
from ollama_fleet.localfiles import exclusive_lock

DEBIAN_MIRROR = "http://deb.debian.org/debian"
VARIANT = "minbase"
INCLUDE = (
    "systemd",
    "systemd-sysv",
    "dbus",
    "openssh-server",
    "python3",
    "iproute2",
    "curl",
    "ca-certificates",
    "sudo",
    "iputils-ping",
)
CUSTOMIZATION_VERSION = 1
"""Bump when `_customize` changes, so cached bases are rebuilt."""

SSHD_LAB_CONF = "HostKey /etc/ssh/ssh_host_ed25519_key\nUseDNS no\n"


def recipe(release: str = DEFAULT_RELEASE) -> dict[str, object]:
    return {
        "suite": release,
        "mirror": DEBIAN_MIRROR,
        "variant": VARIANT,
        "include": sorted(INCLUDE),
        "customization": CUSTOMIZATION_VERSION,
    }


def recipe_hash(release: str = DEFAULT_RELEASE) -> str:
    return hashlib.sha256(json.dumps(recipe(release), sort_keys=True).encode()).hexdigest()[:16]


def rootfs_cache() -> Path:
    return cache_dir() / "rootfs"


def ensure_base(release: str = DEFAULT_RELEASE, log: bool = True) -> Path:
    """Return the cached base of `release` for the current recipe, building it first when missing."""
    final = rootfs_cache() / recipe_hash(release)
    if final.is_dir():
        return final
    with exclusive_lock(rootfs_cache() / ".lock"):
        if final.is_dir():
            return final
        for stale in rootfs_cache().glob(".build-*"):
            shutil.rmtree(stale, ignore_errors=True)
        building = rootfs_cache() / f".build-{final.name}-{os.getpid()}"
        if log:
            print(f"lab: building base rootfs {final} (debootstrap {release}, ~1-2 min, once)", flush=True)
        run_long(
            ["debootstrap", f"--variant={VARIANT}", f"--include={','.join(INCLUDE)}", release, str(building),
             DEBIAN_MIRROR],
            f"debootstrap {release}",
        )  # fmt: skip
        _customize(building)
        building.rename(final)
        prune_unused_bases(keep=final)
    return final


def prune_unused_bases(keep: Path) -> list[Path]:
    """Drop bases of older recipes, except any still a lower layer of a mounted host overlay (every
    release's current base stays)."""
    mountinfo = Path("/proc/self/mountinfo").read_text()
    current = {rootfs_cache() / recipe_hash(release) for release in RELEASES}
    pruned = []
    for candidate in rootfs_cache().iterdir():
        if candidate == keep or candidate in current:
            continue
        if candidate.name.startswith(".") or not candidate.is_dir():
            continue
        if f"lowerdir={candidate}" in mountinfo:
            continue
        shutil.rmtree(candidate)
        pruned.append(candidate)
    return pruned


def _customize(root: Path) -> None:
    """Make the base host-neutral: per-host identity, apt source and network live in each upper layer."""
    run(["chroot", str(root), "systemctl", "enable", "systemd-networkd"])
    for key in (root / "etc/ssh").glob("ssh_host_*"):
        key.unlink()
    (root / "etc/ssh/sshd_config.d/ollama-fleet-lab.conf").write_text(SSHD_LAB_CONF)
    (root / "etc/machine-id").write_text("")
    dbus_id = root / "var/lib/dbus/machine-id"
    if dbus_id.exists() and not dbus_id.is_symlink():
        dbus_id.unlink()
    for name in ("etc/apt/sources.list", "etc/hostname", "etc/resolv.conf"):
        (root / name).unlink(missing_ok=True)
    (root / "etc/resolv.conf").write_text("# lab hosts have no DNS; names are in /etc/hosts\n")
    run(["chroot", str(root), "apt-get", "clean"])
    for entry in (root / "var/lib/apt/lists").iterdir():
        if entry.is_file():
            entry.unlink()
