"""What is running, against what is installed: restarts and reloads that converge on state.

A restart decided only from "this run changed a file" is lost when a run is cut off between the change and
the restart: every later run sees matching files and restarts nothing. So the deploy also reads the running
processes and restarts Ollama (or reloads nginx) whenever they are older than, or not running, the files
on disk. The decisions are pure functions of the facts, so the unit tier covers them.
"""

from __future__ import annotations

import shlex
from typing import TypedDict

from pyinfra.api.facts import FactBase

# Seconds of slack when comparing a process's start time with a file's mtime: the kernel's boot time is
# whole seconds, so a start time computed from it can read up to a second early.
CLOCK_SLACK = 1


class ServiceProcess(TypedDict):
    active: bool
    need_daemon_reload: bool
    started: int | None  # unix seconds of the main process's start (may read up to CLOCK_SLACK early)
    exe: str | None  # what the main process runs (/proc/PID/exe), " (deleted)" when removed under it
    newest_file: int | None  # unix seconds of the newest mtime among the files it reads
    newest_path: str | None


def _start_time_script(pid: str, prefix: str) -> str:
    """Prints `<prefix><unix seconds>`: when process `pid` started, from the kernel's boot time and field 22
    of /proc/PID/stat (clock ticks since boot). Any systemd version; the same for Ollama and nginx."""
    printf = f'{{printf "{prefix}%d\\n", b + $22 / hz}}'
    return (
        "btime=$(awk '/^btime/ {print $2}' /proc/stat); hz=$(getconf CLK_TCK); "
        f'awk -v b="$btime" -v hz="$hz" \'{printf}\' /proc/{pid}/stat 2>/dev/null'
    )


def _newest_mtime_script(paths: list[str]) -> str:
    """Prints `newest <mtime> <path>` for the newest of `paths` (symlinks by their own mtime)."""
    quoted = " ".join(shlex.quote(p) for p in paths)
    return f"stat -c '%Y %n' {quoted} 2>/dev/null | sort -n | tail -1 | sed 's/^/newest /'"


class OllamaProcess(FactBase[ServiceProcess]):
    """The ollama service's main process: active, started when, running which binary; and its files' age."""

    @staticmethod
    def default() -> ServiceProcess:
        return {
            "active": False,
            "need_daemon_reload": False,
            "started": None,
            "exe": None,
            "newest_file": None,
            "newest_path": None,
        }

    def command(self, service: str, files: list[str]) -> str:
        unit = shlex.quote(service)
        return (
            f"systemctl show {unit} -p ActiveState -p NeedDaemonReload 2>/dev/null; "
            f"pid=$(systemctl show {unit} -p MainPID --value 2>/dev/null); "
            'if [ -n "$pid" ] && [ "$pid" != 0 ]; then echo "exe=$(readlink /proc/$pid/exe)"; '
            + _start_time_script("$pid", "started=")
            + "; fi; "
            + _newest_mtime_script(files)
        )

    def process(self, output: list[str]) -> ServiceProcess:
        found = self.default()
        for line in output:
            key, _, value = line.strip().partition("=")
            if key == "ActiveState":
                found["active"] = value == "active"
            elif key == "NeedDaemonReload":
                found["need_daemon_reload"] = value == "yes"
            elif key == "started" and value.isdigit():
                found["started"] = int(value)
            elif key == "exe" and value:
                found["exe"] = value
            elif line.startswith("newest "):
                _, mtime, path = line.split(" ", 2)
                found["newest_file"], found["newest_path"] = int(mtime), path
        return found


def ollama_restart_reason(process: ServiceProcess, binary: str) -> str | None:
    """Why the running Ollama does not match what is installed and configured, or None when it does.

    `binary` is the resolved path the service should run (install_dir/<version>/bin/ollama).
    """
    if not process["active"]:
        return None  # not running: starting it is the job of `running=True`, not of a restart
    if process["exe"] is not None and process["exe"] != binary:
        return f"it runs {process['exe']}, not {binary}"
    if process["started"] is None:
        return None
    newest = process["newest_file"]
    if newest is not None and newest > process["started"] + CLOCK_SLACK:
        return f"it started before {process['newest_path']} last changed"
    return None


class WorkerStarts(TypedDict):
    running: bool
    newest_worker: int | None  # unix seconds: when the newest worker process started (the last reload)
    newest_file: int | None
    newest_path: str | None


def with_nginx_master(script: str) -> str:
    """Run `script` with $master set to nginx.service's main PID (its master), when nginx runs: not
    another nginx on the host (one in a container shows in ps too)."""
    return (
        "master=$(systemctl show nginx.service -p MainPID --value 2>/dev/null); "
        f'if [ -n "$master" ] && [ "$master" != 0 ]; then {script}; fi'
    )


class NginxWorkers(FactBase[WorkerStarts]):
    """When nginx last (re)loaded its config, read from its newest worker, and the age of the config files.

    On a reload the master starts new workers with the new config; so a config file newer than the newest
    worker has not been loaded.
    """

    @staticmethod
    def default() -> WorkerStarts:
        return {"running": False, "newest_worker": None, "newest_file": None, "newest_path": None}

    def command(self, files: list[str]) -> str:
        workers = (
            "for pid in $(cat /proc/$master/task/$master/children 2>/dev/null); do "
            + _start_time_script("$pid", "worker ")
            + "; done"
        )
        return f"{with_nginx_master(workers)}; {_newest_mtime_script(files)}"

    def process(self, output: list[str]) -> WorkerStarts:
        found = self.default()
        workers = []
        for line in output:
            if line.startswith("worker "):
                workers.append(int(line.split()[1]))
            elif line.startswith("newest "):
                _, mtime, path = line.split(" ", 2)
                found["newest_file"], found["newest_path"] = int(mtime), path
        if workers:
            found["running"], found["newest_worker"] = True, max(workers)
        return found


def nginx_reload_reason(workers: WorkerStarts) -> str | None:
    """Why nginx must reload (it has not loaded the newest config file), or None."""
    if not workers["running"] or workers["newest_worker"] is None or workers["newest_file"] is None:
        return None
    if workers["newest_file"] > workers["newest_worker"] + CLOCK_SLACK:
        return f"its workers started before {workers['newest_path']} last changed"
    return None
