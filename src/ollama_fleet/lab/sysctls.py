"""Machine-wide sysctls the lab changes, saved once and restored when the last lab slot goes down.

Several slots (and clones) can run at once, so the original value is kept in a registry under /run and put
back only when no slot is active any more.
"""

from __future__ import annotations

from pathlib import Path

from ollama_fleet.lab.paths import REGISTRY_DIR
from ollama_fleet.lab.plan import SlotPlan
from ollama_fleet.localfiles import exclusive_lock

IP_FORWARD = "net.ipv4.ip_forward"
INOTIFY_INSTANCES = "fs.inotify.max_user_instances"
INOTIFY_INSTANCES_FOR_MANY_HOSTS = 8192
MANY_HOSTS = 15
"""Above this many hosts the default 128 inotify instances per user run out ("Too many open files")."""


def _proc_path(name: str) -> Path:
    return Path("/proc/sys") / name.replace(".", "/")


def read(name: str) -> str:
    return _proc_path(name).read_text().strip()


def write(name: str, value: str) -> None:
    _proc_path(name).write_text(f"{value}\n")


def wanted_for(host_count: int) -> dict[str, str]:
    wanted = {IP_FORWARD: "1"}
    if host_count > MANY_HOSTS:
        wanted[INOTIFY_INSTANCES] = str(INOTIFY_INSTANCES_FOR_MANY_HOSTS)
    return wanted


def claim(slot: int, wanted: dict[str, str]) -> None:
    """Mark the slot active, save originals not saved yet, and raise values (never lower them)."""
    with exclusive_lock(REGISTRY_DIR / ".lock"):
        (REGISTRY_DIR / "active").mkdir(parents=True, exist_ok=True)
        (REGISTRY_DIR / "sysctl").mkdir(parents=True, exist_ok=True)
        (REGISTRY_DIR / "active" / f"slot{slot}").write_text("")
        for name, value in wanted.items():
            saved = REGISTRY_DIR / "sysctl" / name
            if not saved.exists():
                saved.write_text(read(name))
            if int(read(name)) < int(value):
                write(name, value)


def _active_slots() -> list[str]:
    """Slots still marked active whose hosts bridge exists. /run may be on disk (not tmpfs), so marks can
    outlive a reboot; a mark without its bridge is stale and dropped."""
    active_dir = REGISTRY_DIR / "active"
    alive = []
    for mark in sorted(active_dir.glob("slot*")) if active_dir.is_dir() else []:
        if Path("/sys/class/net", SlotPlan(int(mark.name.removeprefix("slot"))).bridge).exists():
            alive.append(mark.name)
        else:
            mark.unlink()
    return alive


def release(slot: int) -> list[str]:
    """Mark the slot inactive; when it was the last one, restore every saved original. Returns what it did."""
    restored: list[str] = []
    with exclusive_lock(REGISTRY_DIR / ".lock"):
        (REGISTRY_DIR / "active" / f"slot{slot}").unlink(missing_ok=True)
        if _active_slots():
            return restored
        sysctl_dir = REGISTRY_DIR / "sysctl"
        for saved in sorted(sysctl_dir.iterdir()) if sysctl_dir.is_dir() else []:
            write(saved.name, saved.read_text().strip())
            restored.append(f"{saved.name}={saved.read_text().strip()}")
            saved.unlink()
    return restored
