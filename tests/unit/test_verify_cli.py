"""`ollama-fleet verify` and `status` as a user runs them: a pyinfra inventory with group_data, exit codes.

The commands run in a subprocess (loading an inventory monkey-patches the process with gevent, as pyinfra
does) against the fake host on 127.0.0.1; `status` gets a fake `ssh` first on PATH.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from verify_fakes import Behaviour, FakeHost, fake_host

pytestmark = pytest.mark.unit

KEY = "cli-key-0123456789abcdef"


@pytest.fixture
def host(tmp_path: Path) -> Iterator[FakeHost]:
    with fake_host(tmp_path / "pki", Behaviour(keys={KEY})) as served:
        yield served


def write_fleet(root: Path, host: FakeHost, extra: str = "") -> None:
    """An inventory of two names for the fake host; the settings come from group_data, as in a real repo."""
    (root / "inventories").mkdir(exist_ok=True)
    (root / "group_data").mkdir(exist_ok=True)
    (root / "inventories" / "fleet.py").write_text(
        'gpu = [("fake-1", {"ssh_hostname": "127.0.0.1"}), ("fake-2", {"ssh_hostname": "127.0.0.1"})]\n'
    )
    (root / "group_data" / "all.py").write_text(
        f"nginx_https_port = {host.port}\n"
        f"tls_ca_dir = {str(host.ca_dir)!r}\n"
        "auth_key_names = ['ci']\n"
        "ollama_origins = ['https://app.example.com']\n"
        "ollama_listen = '127.0.0.1:9'\n"  # discard port: nothing listens, a reset comes back
        "firewall_enabled = False\n"
    )
    # Group data of the inventory's group: proves group_data/<group>.py applies like in `pyinfra`.
    (root / "group_data" / "gpu.py").write_text("models_pull = ['tiny']\n" + extra)


def ollama_fleet(
    root: Path, *args: str, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    environ = {**os.environ, "OLLAMA_FLEET_API_KEY_CI": KEY, **(env or {})}
    return subprocess.run(
        [sys.executable, "-m", "ollama_fleet.cli", *args],
        cwd=root,
        env=environ,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_verify_json_passes_on_a_healthy_fleet(tmp_path: Path, host: FakeHost) -> None:
    write_fleet(tmp_path, host)
    done = ollama_fleet(tmp_path, "verify", "inventories/fleet.py", "--json")
    assert done.returncode == 0, done.stdout + done.stderr
    report = json.loads(done.stdout)
    assert report["ok"] is True
    assert [h["host"] for h in report["hosts"]] == ["fake-1", "fake-2"]
    models = next(c for c in report["hosts"][0]["checks"] if c["check"] == "models")
    assert models["figure"] == "1 configured of 1 on the host"  # models_pull came from group_data/gpu.py
    assert "[fake-2] stream: ok" in done.stderr  # progress while it runs
    assert KEY not in done.stdout + done.stderr


def test_verify_strict_fails_on_not_applicable_checks_and_says_which(tmp_path: Path, host: FakeHost) -> None:
    write_fleet(tmp_path, host)
    lenient = ollama_fleet(tmp_path, "verify", "inventories/fleet.py", "--hosts", "fake-1")
    assert lenient.returncode == 0, lenient.stdout + lenient.stderr
    # The firewall is off and this is no lab: raw_port, ipv6 and outsider proved nothing; gpu_vendor auto
    # shows where models run without requiring a GPU.
    assert lenient.stdout.splitlines()[-1].startswith("PASS: 10/14 checks passed, 4 n/a")
    strict = ollama_fleet(
        tmp_path, "verify", "inventories/fleet.py", "--hosts", "fake-1", "--strict", "--json"
    )
    assert strict.returncode == 1
    report = json.loads(strict.stdout)
    assert report["ok"] is False and report["failures"] == []
    assert {item["check"] for item in report["not_applicable"]} == {"raw_port", "ipv6", "outsider", "gpu"}


def test_verify_fails_with_exit_1_and_a_readable_table(tmp_path: Path, host: FakeHost) -> None:
    write_fleet(tmp_path, host)
    host.behaviour.version = "0.23.0"
    done = ollama_fleet(tmp_path, "verify", "inventories/fleet.py", "--hosts", "fake-2")
    assert done.returncode == 1
    lines = done.stdout.splitlines()
    assert lines[0].split()[:3] == ["host", "address", "tls"]
    assert lines[1].split()[0] == "fake-2" and "fake-1" not in done.stdout
    assert any("version" in line and "FAIL" in line and "ollama_version is 0.24.0" in line for line in lines)
    assert lines[-1].startswith("FAIL: ")


def test_bad_settings_exit_2_naming_host_and_key(tmp_path: Path, host: FakeHost) -> None:
    write_fleet(tmp_path, host, extra="ollama_env = {'OLLAMA_MAX_VRAM': '1'}\n")
    done = ollama_fleet(tmp_path, "verify", "inventories/fleet.py")
    assert done.returncode == 2
    assert "'fake-1'" in done.stderr and "'fake-2'" in done.stderr
    assert "OLLAMA_MAX_VRAM" in done.stderr
    assert done.stdout == ""


def test_a_missing_key_exits_2(tmp_path: Path, host: FakeHost) -> None:
    write_fleet(tmp_path, host)
    done = ollama_fleet(tmp_path, "verify", "inventories/fleet.py", env={"OLLAMA_FLEET_API_KEY_CI": ""})
    assert done.returncode == 2
    assert "OLLAMA_FLEET_API_KEY_CI" in done.stderr


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["verify", "inventories/none.py"], "not found"),
        (["verify", "inventories/fleet.py", "--hosts", "fake-1,nope"], "nope not in the inventory"),
        (["verify", "inventories/fleet.py", "--timeout", "0"], "--timeout must be positive"),
        (["status", "inventories/fleet.py", "--hosts", "nope"], "nope not in the inventory"),
    ],
)
def test_bad_input_exits_2(tmp_path: Path, host: FakeHost, args: list[str], message: str) -> None:
    write_fleet(tmp_path, host)
    done = ollama_fleet(tmp_path, *args)
    assert done.returncode == 2
    assert message in done.stderr


def fake_ssh(bin_dir: Path, replies: dict[str, str]) -> dict[str, str]:
    """An `ssh` that answers like the remote journalctl/systemctl would, per destination."""
    bin_dir.mkdir()
    script = bin_dir / "ssh"
    cases = "".join(f"    *{dest}*) cat <<'EOF'\n{out}\nEOF\n    ;;\n" for dest, out in replies.items())
    script.write_text(
        f'#!/bin/sh\necho "$@" >> {bin_dir}/calls\ncase "$*" in\n{cases}    *) exit 255;;\nesac\n'
    )
    script.chmod(0o755)
    return {"PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}"}


def journal_entry(message: str, age: float) -> str:
    return json.dumps({"MESSAGE": message, "__REALTIME_TIMESTAMP": str(int((time.time() - age) * 1e6))})


def test_status_reads_the_last_result_of_each_host(tmp_path: Path, host: FakeHost) -> None:
    write_fleet(tmp_path, host)
    (tmp_path / "inventories" / "fleet.py").write_text(
        'gpu = [("fake-1", {"ssh_hostname": "10.213.9.11", "ssh_user": "root", "ssh_port": 2222}),\n'
        '       ("fake-2", {"ssh_hostname": "10.213.9.12"})]\n'
    )
    env = fake_ssh(
        tmp_path / "bin",
        {
            "root@10.213.9.11": journal_entry("ok version=0.24.0 models=1 ms=4", 20) + "\n\ntimer=active",
            "10.213.9.12": journal_entry("FAIL models missing: tiny:latest (re-run the deploy)", 30)
            + "\n\ntimer=active",
        },
    )
    done = ollama_fleet(tmp_path, "status", "inventories/fleet.py", "--json", env=env)
    assert done.returncode == 1, done.stderr
    hosts = {h["host"]: h for h in json.loads(done.stdout)["hosts"]}
    assert hosts["fake-1"]["state"] == "ok" and hosts["fake-1"]["message"].startswith("ok version=0.24.0")
    assert hosts["fake-2"]["state"] == "FAIL" and "tiny:latest" in hosts["fake-2"]["message"]
    assert 15 < hosts["fake-1"]["age_seconds"] < 60
    calls = (tmp_path / "bin" / "calls").read_text()
    assert "-p 2222" in calls and "journalctl -t ollama-fleet-health -n 1 -o json" in calls


def test_status_table_and_exit_0_when_all_are_fresh_and_ok(tmp_path: Path, host: FakeHost) -> None:
    write_fleet(tmp_path, host)
    line = journal_entry("ok version=0.24.0 models=1 ms=3", 5) + "\n\ntimer=active"
    env = fake_ssh(tmp_path / "bin", {"127.0.0.1": line})
    done = ollama_fleet(tmp_path, "status", "inventories/fleet.py", env=env)
    assert done.returncode == 0, done.stdout + done.stderr
    # The health table first; the dashboard's view (test_fleet_view.py) after a blank line.
    health, view = done.stdout.split("\n\n", 1)
    assert view.startswith("straight from the hosts (no monitoring host)")
    rows = [row.split() for row in health.splitlines()]
    assert rows[0] == ["host", "state", "age", "timer", "last", "result"]
    assert [row[:2] for row in rows[1:]] == [["fake-1", "ok"], ["fake-2", "ok"]]
