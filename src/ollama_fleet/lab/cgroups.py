"""Own cgroups for each lab host, in every hierarchy that matters on this machine.

Every nspawn started from the same cgroup puts its container in the same `<cgroup>/payload`, which mixes
hosts' services and hangs some at shutdown. So each host gets `<lab>/<machine>` in the name=systemd, the
unified (cgroup2) and the memory hierarchy, whichever of those this machine mounts (hybrid v1+v2, or pure v2),
and the launching shell moves itself there before it execs systemd-nspawn.
"""

from __future__ import annotations

import errno
import os
import time
from dataclasses import dataclass
from pathlib import Path

MOUNTINFO = Path("/proc/self/mountinfo")


@dataclass(frozen=True)
class Hierarchy:
    label: str
    """"unified", "name=systemd" or "memory"."""
    mount: Path


def parse_hierarchies(mountinfo: str) -> list[Hierarchy]:
    """The cgroup hierarchies the lab uses, from /proc/self/mountinfo text."""
    found: list[Hierarchy] = []
    for line in mountinfo.splitlines():
        fields = line.split()
        if "-" not in fields:
            continue
        sep = fields.index("-")
        fstype, super_opts = fields[sep + 1], fields[sep + 3].split(",")
        mount = Path(fields[4])
        if fstype == "cgroup2":
            found.append(Hierarchy("unified", mount))
        elif fstype == "cgroup":
            for wanted in ("name=systemd", "memory"):
                if wanted in super_opts:
                    found.append(Hierarchy(wanted, mount))
    return found


def hierarchies() -> list[Hierarchy]:
    return parse_hierarchies(MOUNTINFO.read_text())


def own_path(label: str, proc_cgroup: str) -> str:
    """This process's cgroup path in a hierarchy, from /proc/self/cgroup text ("/" when not listed)."""
    for line in proc_cgroup.splitlines():
        _, controllers, path = line.split(":", 2)
        names = controllers.split(",")
        if (label == "unified" and controllers == "") or label in names:
            return path
    return "/"


def lab_roots(cgroup_name: str) -> list[Path]:
    """Where the lab's cgroup tree goes in each hierarchy: under this process's own cgroup there, so the
    lab stays inside whatever limits the caller already lives under."""
    proc_cgroup = Path("/proc/self/cgroup").read_text()
    return [h.mount / own_path(h.label, proc_cgroup).lstrip("/") / cgroup_name for h in hierarchies()]


def make(paths: list[Path]) -> list[Path]:
    for path in paths:
        path.mkdir(parents=True, exist_ok=True)
    return [path / "cgroup.procs" for path in paths]


def move_pid(pid: int, paths: list[Path]) -> None:
    for path in make(paths):
        path.write_text(f"{pid}\n")


def pids_directly_in(path: Path) -> list[int]:
    """Processes in this cgroup itself (not its children): for a host cgroup that is the nspawn process."""
    try:
        return [int(pid) for pid in (path / "cgroup.procs").read_text().split()]
    except FileNotFoundError:
        return []


def pids_anywhere_in(path: Path) -> list[int]:
    pids: list[int] = []
    if not path.is_dir():
        return pids
    for dirpath, _, _ in os.walk(path):
        pids.extend(pids_directly_in(Path(dirpath)))
    return pids


def pid_is_in(pid: int, cgroup_name: str) -> bool:
    """Whether a PID (still) belongs to the lab: guards every signal against PID reuse."""
    try:
        text = Path(f"/proc/{pid}/cgroup").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return False
    return any(f"/{cgroup_name}/" in line or line.endswith(f"/{cgroup_name}") for line in text.splitlines())


def remove_tree(path: Path, timeout: float = 10.0) -> bool:
    """rmdir a cgroup tree depth-first; cgroups of just-exited processes can stay busy for a moment."""
    deadline = time.monotonic() + timeout
    while path.is_dir():
        busy = False
        for dirpath, _, _ in sorted(os.walk(path), key=lambda entry: -len(entry[0])):
            try:
                os.rmdir(dirpath)
            except FileNotFoundError:
                pass
            except OSError as exc:
                if exc.errno != errno.EBUSY:
                    raise
                busy = True
        if busy and time.monotonic() > deadline:
            return False
        if busy:
            time.sleep(0.1)
    return True


def memory_bytes(paths: list[Path]) -> int | None:
    """Memory charged to a cgroup (v2 memory.current or v1 memory.usage_in_bytes), when accounted."""
    for path in paths:
        for name in ("memory.current", "memory.usage_in_bytes"):
            try:
                return int((path / name).read_text())
            except (FileNotFoundError, ValueError):
                continue
    return None


def memory_anon_bytes(paths: list[Path]) -> int | None:
    """Anonymous memory (no page cache) of a cgroup tree: v1 total_rss, or v2 anon."""
    for path in paths:
        try:
            stat = dict(line.split() for line in (path / "memory.stat").read_text().splitlines())
        except FileNotFoundError:
            continue
        for key in ("total_rss", "anon"):
            if key in stat:
                return int(stat[key])
    return None


def find_lab_roots(cgroup_name: str, max_depth: int = 3) -> list[Path]:
    """Existing lab cgroup trees of this name in any hierarchy, wherever the launching process lived
    (another session may have brought the lab up): for `down` after the state record was lost."""
    found = []
    for hierarchy in hierarchies():
        level = [hierarchy.mount]
        for _ in range(max_depth):
            found += [parent / cgroup_name for parent in level if (parent / cgroup_name).is_dir()]
            level = [child for parent in level for child in _subdirs(parent) if child.name != cgroup_name]
    return found


def _subdirs(path: Path) -> list[Path]:
    """Child cgroups; one removed meanwhile by its owner simply has none."""
    try:
        return [child for child in path.iterdir() if child.is_dir()]
    except FileNotFoundError:
        return []
