"""Run on a lab host as an unprivileged user (nobody) while a deploy runs: report every file it could read
that held a secret marker, at any moment.

inotify tells it as soon as a file is created, written, renamed or has its mode changed in any directory
it may list; it then tries to read the file at once, as any other local user could. Only the standard
library (the lab's Debian base has python3, nothing more). Prints one line per finding:
`<path> <marker>`. Stops on SIGTERM.

Usage: python3 secret_watcher.py MARKER... (directories to watch are fixed below)
"""

from __future__ import annotations

import ctypes
import os
import signal
import struct
import sys

ROOTS = ("/tmp", "/var/tmp", "/dev/shm", "/run", "/etc", "/var/lib", "/home", "/opt")
IN_MODIFY, IN_ATTRIB, IN_CLOSE_WRITE, IN_MOVED_TO, IN_CREATE = 0x2, 0x4, 0x8, 0x80, 0x100
IN_ISDIR = 0x40000000
MASK = IN_MODIFY | IN_ATTRIB | IN_CLOSE_WRITE | IN_MOVED_TO | IN_CREATE
EVENT = struct.Struct("iIII")

libc = ctypes.CDLL("libc.so.6", use_errno=True)
watched: dict[int, str] = {}


def watch_tree(fd: int, top: str) -> None:
    for directory, subdirs, _ in os.walk(top, onerror=lambda _: None):
        if directory.startswith("/proc") or directory.startswith("/sys"):
            subdirs.clear()
            continue
        wd = libc.inotify_add_watch(fd, directory.encode(), MASK)
        if wd >= 0:
            watched[wd] = directory


def leaked_marker(path: str, markers: list[bytes]) -> bytes | None:
    try:
        with open(path, "rb") as handle:
            head = handle.read(1 << 20)
    except OSError:
        return None
    return next((marker for marker in markers if marker in head), None)


def report(path: str, markers: list[bytes], seen: set[str]) -> None:
    marker = leaked_marker(path, markers)
    if marker is not None and path not in seen:
        seen.add(path)
        print(path, marker.decode(), flush=True)


def main(markers: list[bytes]) -> None:
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    fd = libc.inotify_init1(0)
    if fd < 0:
        raise OSError(ctypes.get_errno(), "inotify_init1")
    for top in ROOTS:
        watch_tree(fd, top)
    print("watching", len(watched), "directories", flush=True)
    seen: set[str] = set()
    while True:
        data = os.read(fd, 1 << 16)
        offset = 0
        while offset < len(data):
            wd, mask, _, length = EVENT.unpack_from(data, offset)
            start = offset + EVENT.size
            name = data[start : start + length].rstrip(b"\0").decode(errors="replace")
            offset = start + length
            path = os.path.join(watched.get(wd, "?"), name)
            if mask & IN_ISDIR:  # files may have landed in it before its watch did
                watch_tree(fd, path)
                for directory, _, names in os.walk(path, onerror=lambda _: None):
                    for each in names:
                        report(os.path.join(directory, each), markers, seen)
            else:
                report(path, markers, seen)


if __name__ == "__main__":
    main([marker.encode() for marker in sys.argv[1:]])
