"""Day-2 decisions, pure: when a running Ollama or nginx is stale, where a failed release rolls back to,
what the deploy lock says, and which checks are quick. The shell pieces run locally where they can."""

from __future__ import annotations

import contextlib
import os
import shlex
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import gevent
import pytest
from test_render import _binary, _free_port

from ollama_fleet.deploys.service import rollback_target
from ollama_fleet.operations import deploy_record, lock, nginx, release
from ollama_fleet.operations.running import (
    NginxWorkers,
    OllamaProcess,
    ServiceProcess,
    WorkerStarts,
    nginx_reload_reason,
    ollama_restart_reason,
)
from ollama_fleet.settings import FleetSettings, settings_for_host
from ollama_fleet.verify.checks import CHECKS

pytestmark = pytest.mark.unit

BINARY = "/opt/ollama/0.24.1/bin/ollama"


def process(**overrides: object) -> ServiceProcess:
    base: ServiceProcess = {
        "active": True,
        "need_daemon_reload": False,
        "started": 2000,
        "exe": BINARY,
        "newest_file": 1990,
        "newest_path": "/etc/systemd/system/ollama.service.d/override.conf",
    }
    return {**base, **overrides}  # type: ignore[typeddict-item]


# --- restart Ollama on state ---------------------------------------------------------------------------


def test_a_process_newer_than_its_files_and_running_the_pinned_binary_is_left_alone() -> None:
    assert ollama_restart_reason(process(), BINARY) is None
    assert ollama_restart_reason(process(newest_file=2001), BINARY) is None  # within the clock slack


def test_a_process_older_than_a_file_it_reads_restarts() -> None:
    reason = ollama_restart_reason(process(newest_file=2002), BINARY)
    assert reason == "it started before /etc/systemd/system/ollama.service.d/override.conf last changed"


def test_a_process_running_another_release_restarts_even_with_old_files() -> None:
    old = "/opt/ollama/0.24.0/bin/ollama"
    assert ollama_restart_reason(process(exe=old), BINARY) == f"it runs {old}, not {BINARY}"
    gone = f"{old} (deleted)"
    assert "(deleted)" in str(ollama_restart_reason(process(exe=gone), BINARY))


def test_a_stopped_service_is_started_not_restarted() -> None:
    assert ollama_restart_reason(process(active=False, started=None), BINARY) is None
    # no start time readable: the binary is still compared
    assert ollama_restart_reason(process(started=None), BINARY) is None
    assert ollama_restart_reason(process(started=None, exe="/x"), BINARY) == f"it runs /x, not {BINARY}"


def test_ollama_process_fact_parses_systemctl_and_stat() -> None:
    output = [
        "ActiveState=active",
        "NeedDaemonReload=yes",
        f"exe={BINARY}",
        "started=1796229000",
        "newest 1796229100 /opt/ollama/current",
    ]
    parsed = OllamaProcess().process(output)
    assert parsed == {
        "active": True,
        "need_daemon_reload": True,
        "started": 1796229000,
        "exe": BINARY,
        "newest_file": 1796229100,
        "newest_path": "/opt/ollama/current",
    }
    assert OllamaProcess().process(["ActiveState=inactive"])["started"] is None


# --- reload nginx on state -----------------------------------------------------------------------------


def workers(newest_worker: int | None, newest_file: int | None) -> WorkerStarts:
    return {
        "running": newest_worker is not None,
        "newest_worker": newest_worker,
        "newest_file": newest_file,
        "newest_path": "/etc/nginx/ollama-fleet/api-keys.conf",
    }


def test_nginx_reloads_only_when_a_config_file_is_newer_than_its_workers_beyond_clock_slack() -> None:
    assert nginx_reload_reason(workers(1000, 990)) is None
    assert nginx_reload_reason(workers(1000, 1001)) is None  # boot time is whole seconds: within slack
    reason = nginx_reload_reason(workers(1000, 1002))
    assert reason == "its workers started before /etc/nginx/ollama-fleet/api-keys.conf last changed"
    assert nginx_reload_reason(workers(None, 1002)) is None  # not running: `running=True` starts it


def test_nginx_workers_fact_takes_the_newest_worker() -> None:
    parsed = NginxWorkers().process(["worker 1000", "worker 1500", "newest 1200 /etc/x.conf"])
    assert parsed == {
        "running": True,
        "newest_worker": 1500,
        "newest_file": 1200,
        "newest_path": "/etc/x.conf",
    }


def test_nginx_workers_fact_reads_this_machines_proc(tmp_path: Path) -> None:
    """The command's /proc arithmetic, run here against this shell's own children."""
    config = tmp_path / "site.conf"
    config.write_text("x")
    command = NginxWorkers().command([str(config)])
    sleeper = subprocess.Popen(["sleep", "30"])
    try:
        # stand in for `systemctl show nginx.service -p MainPID --value` with this test's own PID
        script = command.replace("systemctl show nginx.service -p MainPID --value", "echo $PPID")
        output = subprocess.run(["bash", "-c", script], capture_output=True, text=True, check=True).stdout
    finally:
        sleeper.kill()
        sleeper.wait()
    parsed = NginxWorkers().process(output.splitlines())
    assert parsed["running"] and parsed["newest_file"] is not None
    assert abs(int(parsed["newest_worker"] or 0) - int(config.stat().st_mtime)) <= 2


# --- rollback ------------------------------------------------------------------------------------------


def settings(**data: object) -> FleetSettings:
    base: dict[str, object] = {"auth_enabled": False, "firewall_enabled": False, "ollama_version": "0.24.1"}
    return settings_for_host("h1", {**base, **data}, environ={})


def releases(current: str | None, *versions: str) -> release.InstalledReleases:
    return {"current": current, "versions": dict.fromkeys(versions, "sha"), "foreign": []}


def test_rollback_goes_to_the_release_that_was_serving() -> None:
    s = settings()
    serving_old = process(exe="/opt/ollama/0.24.0/bin/ollama")
    assert rollback_target(s, serving_old, releases("0.24.0", "0.24.0")) == "0.24.0"
    # a run cut off after the switch: current is already the new one, the process still runs the old
    assert rollback_target(s, serving_old, releases("0.24.1", "0.24.0", "0.24.1")) == "0.24.0"


def test_no_rollback_on_a_bare_host_or_when_nothing_else_is_installed() -> None:
    s = settings()
    assert rollback_target(s, process(active=False, exe=None), releases(None)) is None
    assert rollback_target(s, process(), releases("0.24.1", "0.24.1")) is None


def test_unhealthy_reasons_name_what_was_seen() -> None:
    assert release.unhealthy_reason("serving 0.24.1", "0.24.1", 60) is None
    assert "reports 0.24.0" in str(release.unhealthy_reason("other 0.24.0", "0.24.1", 60))
    crashed = release.unhealthy_reason("down crashed (its process exited: auto-restart)", "0.24.1", 60)
    assert crashed == (
        "did not come up: ollama.service crashed (its process exited: auto-restart) "
        "(see journalctl -u ollama)"
    )
    assert "is activating after 60s" in str(release.unhealthy_reason("down activating", "0.24.1", 60))


def test_the_wait_script_reports_down_when_nothing_answers() -> None:
    script = release.wait_for_version_script("http://127.0.0.1:9", "0.24.1", 1)
    done = subprocess.run(["bash", "-c", script], capture_output=True, text=True, check=False)
    assert done.returncode == 1
    assert done.stdout.splitlines()[-1].startswith("down")


def test_pruning_counts_the_version_just_deployed_as_current() -> None:
    # the fact was read before the switch (current 0.24.0): the new 0.24.1 must survive, not the old
    assert release.versions_to_remove(["0.23.0", "0.24.0", "0.24.1"], "0.24.1", keep=2) == ["0.23.0"]
    assert release.versions_to_remove(["0.24.0", "0.24.1"], "0.24.1", keep=1) == ["0.24.0"]


# --- the deploy lock -----------------------------------------------------------------------------------


def test_a_lock_held_by_a_live_run_is_respected_and_named() -> None:
    held = lock.LockState(acquired=False, holder="ctl pid=42 user=ops since=x run=r", age_seconds=75)
    assert lock.stale_reason(held, controller="ctl", alive=lambda pid: True) is None
    assert lock.stale_reason(held, controller="other", alive=lambda pid: False) is None  # can't tell: wait
    message = lock.held_message(held)
    assert "held by ctl pid=42 user=ops since=x run=r, last heartbeat 75 s ago" in message
    # A run that has held its lock for hours (a long pull) but beats: never taken over.
    long_held = lock.LockState(acquired=False, holder="elsewhere pid=1 since=hours-ago", age_seconds=14)
    assert lock.stale_reason(long_held, controller="ctl", alive=lambda pid: False) is None


def test_a_lock_is_stale_when_its_controller_process_is_gone_or_its_heartbeat_is_old() -> None:
    held = lock.LockState(acquired=False, holder="ctl pid=42 user=ops since=x run=r", age_seconds=5)
    assert "no longer runs" in str(lock.stale_reason(held, controller="ctl", alive=lambda pid: False))
    old = lock.LockState(acquired=False, holder="elsewhere pid=1", age_seconds=lock.LOCK_STALE_SECONDS + 1)
    reason = lock.stale_reason(old, controller="ctl", alive=lambda pid: True)
    beats = "(a deploy holding it beats every 15 s)"
    assert reason == f"its last heartbeat was {lock.LOCK_STALE_SECONDS + 1} s ago {beats}"
    assert lock.LOCK_STALE_SECONDS >= 10 * lock.LOCK_HEARTBEAT_SECONDS  # a few slow beats are no death


def test_the_heartbeat_beats_until_stopped_or_the_lock_is_lost() -> None:
    beats: list[int] = []
    heartbeat = lock.Heartbeat(lambda: beats.append(1) is None, every=0.01)
    gevent.sleep(0.2)
    heartbeat.stop()
    counted = len(beats)
    assert counted >= 5
    gevent.sleep(0.05)
    assert len(beats) == counted  # stopped: no beat after
    lost = lock.Heartbeat(lambda: beats.append(2) is None and False, every=0.01)
    gevent.sleep(0.1)
    assert beats.count(2) == 1 and lost.greenlet.dead  # "lost": the lock is another's, stop beating


def test_the_heartbeat_touches_the_lock_only_while_its_holder_holds_it(tmp_path: Path) -> None:
    path = tmp_path / "deploy.lock"
    (path).mkdir()
    (path / "holder").write_text("me pid=1\n")
    os.utime(path, (1, 1))

    def run(holder: str) -> str:
        command = lock.heartbeat_command(str(path), holder)
        return subprocess.run(["sh", "-c", command], capture_output=True, text=True, check=True).stdout

    assert run("someone else") == "lost\n"
    assert path.stat().st_mtime == 1
    assert run("me pid=1") == "beat\n"
    assert path.stat().st_mtime > 1


def test_lock_facts_take_refuse_and_release_on_a_real_directory(tmp_path: Path) -> None:
    path = str(tmp_path / "run" / "deploy.lock")

    def run(command: str) -> list[str]:
        return subprocess.run(["sh", "-c", command], capture_output=True, text=True, check=True).stdout.split(
            "\n"
        )

    def fact(cls: type, **kwargs: str) -> object:
        out = [line for line in run(cls().command(path=path, **kwargs)) if line]
        return cls().process(out)

    assert fact(lock.LockTaken, holder="me pid=1") == lock.LockState(acquired=True)
    assert fact(lock.LockTaken, holder="me pid=1") == lock.LockState(acquired=True)  # ours: taken again
    theirs = fact(lock.LockTaken, holder="you pid=2")
    assert isinstance(theirs, lock.LockState) and not theirs.acquired and theirs.holder == "me pid=1"
    assert fact(lock.LockTakenOver, holder="you pid=2", stale="someone else") != lock.LockState(True)
    assert fact(lock.LockTakenOver, holder="you pid=2", stale="me pid=1") == lock.LockState(acquired=True)
    assert fact(lock.LockReleased, holder="me pid=1") == ("released",)  # not the holder any more: left alone
    assert Path(path).is_dir()
    assert fact(lock.LockReleased, holder="you pid=2") == ("released",)
    assert not Path(path).exists()


def test_the_deploy_record_is_written_by_the_lock_commands_only_while_the_lock_is_this_runs(
    tmp_path: Path,
) -> None:
    """One command each way: the record's "started" once the lock is taken (or a stale one taken over),
    "passed" before its release; a run refused the lock writes nothing (the record stays the holder's)."""
    path, record = str(tmp_path / "run" / "deploy.lock"), tmp_path / "textfile" / "deploy.prom"

    def fact(cls: type, **kwargs: str) -> object:
        done = subprocess.run(
            ["sh", "-c", cls().command(path=path, **kwargs)], capture_output=True, text=True, check=True
        )
        return cls().process([line for line in done.stdout.split("\n") if line])

    started = deploy_record.record_command(str(record), passed=False)
    assert fact(lock.LockTaken, holder="me pid=1", then=started) == lock.LockState(True, then="recorded")
    assert f"{deploy_record.SUCCESS} 0" in record.read_text()
    record.write_text("theirs")
    refused = fact(lock.LockTaken, holder="you pid=2", then=started)
    assert isinstance(refused, lock.LockState) and not refused.acquired and refused.holder == "me pid=1"
    assert record.read_text() == "theirs"
    # a stale lock taken over: the record is written in the takeover's command, and only if it took it
    not_stale = fact(lock.LockTakenOver, holder="you pid=2", stale="someone else", then=started)
    assert isinstance(not_stale, lock.LockState) and not not_stale.acquired
    assert record.read_text() == "theirs"
    taken = fact(lock.LockTakenOver, holder="you pid=2", stale="me pid=1", then=started)
    assert taken == lock.LockState(True, then="recorded")
    assert f"{deploy_record.SUCCESS} 0" in record.read_text()
    record.unlink()
    passed = deploy_record.record_command(str(record), passed=True)
    assert fact(lock.LockReleased, holder="you pid=2", first=passed) == ("recorded", "released")
    assert f"{deploy_record.SUCCESS} 1" in record.read_text()
    assert not Path(path).exists()
    unwritable = deploy_record.record_command("/proc/ollama-fleet-test/deploy.prom", passed=True)
    assert fact(lock.LockReleased, holder="me pid=1", first=unwritable) == ("released",)


# --- quick checks --------------------------------------------------------------------------------------


def test_quick_checks_load_no_model_and_wait_for_no_timeout() -> None:
    quick = [spec.name for spec in CHECKS if spec.quick]
    assert quick == ["tls", "root", "auth", "scopes", "version", "models", "cors"]


def test_ungranted_and_revoked_keys_are_known_as_refused(tmp_path: Path) -> None:
    secrets = tmp_path / "secrets.json"
    secrets.write_text(
        '{"api_keys": {"ci": "ci-key-0123456789abcdef", "old": "old-key-0123456789abcdef"},'
        ' "revoked_api_keys": ["rotated-0123456789abcdef"]}'
    )
    secrets.chmod(0o600)
    s = settings_for_host(
        "h1", {"auth_key_names": ["ci"], "auth_secrets_file": str(secrets), "firewall_enabled": False}, {}
    )
    assert [k.name for k in s.auth.keys] == ["ci"]
    assert [(k.name, k.key.get_secret_value()) for k in s.auth.refused_keys] == [
        ("old", "old-key-0123456789abcdef"),
        ("revoked_api_keys[0]", "rotated-0123456789abcdef"),
    ]
    assert "old-key" not in repr(s)  # secrets stay hidden in reprs


@contextlib.contextmanager
def _old_worker(seconds: float, title: str = "nginx: worker process") -> Iterator[int]:
    """The pid of a process titled like an nginx worker (one from before a reload, finishing its requests);
    not our child, so it is reaped when it ends, as nginx's master reaps its workers."""
    title = shlex.quote(title)
    started = subprocess.run(
        ["bash", "-c", f"(exec -a {title} sleep {seconds}) >/dev/null 2>&1 & echo $!"],
        capture_output=True,
        text=True,
        check=True,
    )
    pid = int(started.stdout)
    try:
        yield pid
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


def test_the_drain_waits_for_the_workers_from_before_the_reload_and_says_how_long() -> None:
    assert _wait(5, []).startswith("gateway: the requests in flight before the drain finished after 0 s")
    with _old_worker(2) as pid:
        said = _wait(10, [pid])
    waited = int(said.split("after ")[1].split()[0])
    assert said.startswith("gateway: the requests in flight") and 1 <= waited <= 4, said


def test_the_drain_goes_on_after_its_wait_naming_the_busy_workers() -> None:
    with _old_worker(30) as pid:
        said = _wait(1, [pid])
    assert said.startswith("gateway: 1 old nginx worker(s) still busy after "), said


def test_a_reload_lists_the_workers_of_nginx_services_master_first() -> None:
    """Not another nginx's workers (one in a container shows in ps too): it would never be replaced."""
    listed = nginx.drain_reload_script(1).split("; nginx -t -q")[0] + '; echo "$old"'
    title = shlex.quote("nginx: worker process")
    master = subprocess.Popen(["bash", "-c", f"(exec -a {title} sleep 30) & wait"])
    try:
        ours = _workers_of(str(master.pid), count=1, title="nginx: worker process 30")
        script = listed.replace("systemctl show nginx.service -p MainPID --value", f"echo {master.pid}")
        with _old_worker(30) as foreign:
            found = subprocess.run(["sh", "-c", script], capture_output=True, text=True, check=True).stdout
    finally:
        subprocess.run(["pkill", "-P", str(master.pid)], check=False)
        master.wait(timeout=10)
    assert found.split() == ours and str(foreign) not in found.split()
    stopped = listed.replace("systemctl show nginx.service -p MainPID --value", "echo 0")
    assert subprocess.run(["sh", "-c", stopped], capture_output=True, text=True).stdout.strip() == ""


def _wait(seconds: int, pids: list[int]) -> str:
    script = f"old='{' '.join(map(str, pids))}'; " + nginx.in_flight_wait_script(seconds)
    return subprocess.run(["sh", "-c", script], capture_output=True, text=True, check=True).stdout


def test_a_reload_returns_once_the_old_workers_take_no_more_connections(tmp_path: Path) -> None:
    conf = tmp_path / "nginx.conf"
    conf.write_text(
        f"worker_processes 2; pid {tmp_path}/nginx.pid; error_log {tmp_path}/error.log; daemon off;\n"
        "events {}\n"
        f"http {{ access_log off; server {{ listen 127.0.0.1:{_free_port()}; return 200; }} }}\n"
    )
    master = subprocess.Popen(
        [_binary("nginx"), "-p", str(tmp_path), "-c", str(conf)], stderr=subprocess.DEVNULL
    )
    try:
        old = _workers_of(str(master.pid), count=2)
        script = f"old='{' '.join(old)}'; kill -HUP {master.pid}; " + nginx.workers_replaced_wait_script(10)
        subprocess.run(["sh", "-c", script], check=True, timeout=20)
        titles = [_title(pid) for pid in old]  # "" once a worker has exited
        assert all(t in ("", "nginx: worker process is shutting down") for t in titles), titles
    finally:
        master.terminate()
        master.wait(timeout=10)


def test_a_reload_that_kept_its_old_workers_fails_saying_so() -> None:
    with _old_worker(30) as pid:
        done = _replaced([pid], seconds=1)
    assert done.returncode == 1
    assert "nginx still serves with its workers from before the reload after 1 s" in done.stderr
    with _old_worker(30, "nginx: worker process is shutting down") as pid:
        assert _replaced([pid], seconds=1).returncode == 0  # finishing its requests: it takes no new ones
    assert _replaced([], seconds=1).returncode == 0  # nginx was started, not reloaded


def _replaced(pids: list[int], seconds: int) -> subprocess.CompletedProcess[str]:
    script = f"old='{' '.join(map(str, pids))}'; " + nginx.workers_replaced_wait_script(seconds)
    return subprocess.run(["sh", "-c", script], capture_output=True, text=True, timeout=seconds + 10)


def _workers_of(master: str, count: int, title: str = "nginx: worker process") -> list[str]:
    for _ in range(100):
        found = subprocess.run(["pgrep", "-P", master], capture_output=True, text=True).stdout.split()
        if len(found) == count and all(_title(p) == title for p in found):
            return found
        time.sleep(0.05)
    pytest.fail(f"nginx {master} did not start {count} workers")


def _title(pid: str) -> str:
    return subprocess.run(["ps", "-o", "args=", "-p", pid], capture_output=True, text=True).stdout.strip()
