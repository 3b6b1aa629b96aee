"""The on-host health timer: rendered files, the check script run against a fake Ollama, status parsing."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from verify_fakes import Behaviour, fake_host

from ollama_fleet.health import CPU_FALLBACK_EXIT, SCRIPT_PATH, TAG, render_health_files
from ollama_fleet.settings import FleetSettings, SettingsError, settings_for_host, timespan_seconds
from ollama_fleet.verify.status import parse_status, ssh_argv, stale_after
from ollama_fleet.verify.targets import Target

pytestmark = pytest.mark.unit

KEYS = {"OLLAMA_FLEET_API_KEY_CI": "health-key-0123456789abcdef"}


def settings(**data: object) -> FleetSettings:
    base: dict[str, object] = {
        "auth_key_names": ["ci"],
        "auth_secrets_file": "/nonexistent/secrets.json",
        "firewall_enabled": False,
        "models_pull": ["tiny", "llama3.2:1b"],
    }
    return settings_for_host("lab-1", {**base, **data}, environ=KEYS)


def files_of(s: FleetSettings) -> dict[str, str]:
    return {str(item.path): item.text for item in render_health_files(s)}


def test_the_units_run_the_script_every_interval_with_a_stable_tag() -> None:
    rendered = files_of(settings(health_interval="2min"))
    service = rendered["/etc/systemd/system/ollama-fleet-health.service"]
    timer = rendered["/etc/systemd/system/ollama-fleet-health.timer"]
    assert f"ExecStart=/usr/bin/python3 {SCRIPT_PATH}\n" in service
    assert f"SyslogIdentifier={TAG}\n" in service
    assert "Type=oneshot\n" in service and "DynamicUser=yes\n" in service
    assert "OnUnitActiveSec=2min\n" in timer and "WantedBy=timers.target" in timer


def test_the_script_knows_the_port_and_every_model() -> None:
    script = files_of(settings(ollama_listen="127.0.0.1:11500"))[str(SCRIPT_PATH)]
    compile(script, "health-check.py", "exec")
    assert 'BASE_URL = "http://127.0.0.1:11500"' in script
    assert 'MODELS = ["tiny:latest", "llama3.2:1b"]' in script
    assert "health-key" not in script  # the local API needs no key: nothing secret on the host's disk


def test_rendering_is_stable() -> None:
    assert files_of(settings()) == files_of(settings())


def run_script(tmp_path: Path, s: FleetSettings) -> subprocess.CompletedProcess[str]:
    script = tmp_path / "health-check.py"
    script.write_text(files_of(s)[str(SCRIPT_PATH)])
    return subprocess.run(
        [sys.executable, str(script)], capture_output=True, text=True, timeout=60, check=False
    )


def test_the_script_says_ok_with_version_and_model_count(tmp_path: Path) -> None:
    behaviour = Behaviour(models=["tiny:latest", "llama3.2:1b", "extra:latest"])
    with fake_host(tmp_path / "ca", behaviour, tls=False) as ollama:
        done = run_script(tmp_path, settings(ollama_listen=f"127.0.0.1:{ollama.port}"))
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout.startswith("ok version=0.24.0 models=3 ms=")


def test_the_script_fails_naming_a_missing_model(tmp_path: Path) -> None:
    with fake_host(tmp_path / "ca", Behaviour(models=["tiny:latest"]), tls=False) as ollama:
        done = run_script(tmp_path, settings(ollama_listen=f"127.0.0.1:{ollama.port}"))
    assert done.returncode == 1
    assert done.stdout.strip() == "FAIL models missing: llama3.2:1b (re-run the deploy)"


def test_the_script_fails_when_ollama_answers_an_error(tmp_path: Path) -> None:
    with fake_host(tmp_path / "ca", Behaviour(root_status=500), tls=False) as ollama:
        done = run_script(tmp_path, settings(ollama_listen=f"127.0.0.1:{ollama.port}"))
    assert done.returncode == 1
    assert done.stdout.strip() == "FAIL HTTP 500 from GET /"


def test_the_script_fails_when_ollama_is_down(tmp_path: Path) -> None:
    done = run_script(tmp_path, settings(ollama_listen="127.0.0.1:9"))
    assert done.returncode == 1
    assert done.stdout.startswith("FAIL Ollama API at http://127.0.0.1:9 unreachable")


@pytest.mark.parametrize(
    ("span", "seconds"), [("1min", 60), ("90s", 90), ("45", 45), ("1h 30min", 5400), ("2 minutes", 120)]
)
def test_timespans_as_systemd_reads_them(span: str, seconds: float) -> None:
    assert timespan_seconds(span) == seconds


@pytest.mark.parametrize("span", ["every minute", "1 fortnight", "5s", "", "1min;rm"])
def test_bad_or_too_short_intervals_are_refused_with_the_settings(span: str) -> None:
    with pytest.raises(SettingsError, match="health_interval"):
        settings(health_interval=span)


NOW = 1_800_000_000.0


def entry(message: str | list[int], age: float) -> str:
    return json.dumps({"MESSAGE": message, "__REALTIME_TIMESTAMP": str(int((NOW - age) * 1e6))})


def test_status_parses_ok_fail_stale_and_never() -> None:
    ok = parse_status("lab-1", entry("ok version=0.24.0 models=1 ms=3", 30) + "\n\ntimer=active\n", NOW, 200)
    assert (ok.state, ok.ok, ok.timer, round(ok.age_seconds or 0)) == ("ok", True, "active", 30)
    failed = parse_status("lab-1", entry("FAIL HTTP 500 from GET /", 30) + "\ntimer=active", NOW, 200)
    assert (failed.state, failed.ok) == ("FAIL", False)
    stale = parse_status("lab-1", entry("ok version=0.24.0", 900) + "\ntimer=inactive", NOW, 200)
    assert stale.state == "stale" and "900 s old (timer inactive)" in stale.message
    never = parse_status("lab-1", "\ntimer=active\n", NOW, 200)
    assert never.state == "none" and not never.ok
    raw = parse_status("lab-1", entry(list(b"ok caf\xc3\xa9"), 1) + "\ntimer=active", NOW, 200)
    assert raw.message == "ok café"


def test_stale_means_two_intervals_plus_the_checks_own_time() -> None:
    assert stale_after("1min", 10) == 2 * 60 + 30 + 30


def test_ssh_argv_follows_the_inventorys_ssh_data() -> None:
    data = {
        "ssh_user": "admin",
        "ssh_port": 2222,
        "ssh_key": "/keys/id",
        "ssh_known_hosts_file": "/dev/null",
        "ssh_strict_host_key_checking": "no",
        "_sudo": True,
    }
    argv = ssh_argv(Target("lab-1", "10.213.4.11", settings(), data), "journalctl -n 1")
    assert argv[:5] == ["ssh", "-o", "BatchMode=yes", "-o", "ConnectTimeout=10"]
    assert argv[argv.index("-i") : argv.index("-i") + 2] == ["-i", "/keys/id"]
    assert argv[argv.index("-p") : argv.index("-p") + 2] == ["-p", "2222"]
    assert "UserKnownHostsFile=/dev/null" in argv and "StrictHostKeyChecking=no" in argv
    assert argv[-2:] == ["admin@10.213.4.11", "sudo -n sh -c 'journalctl -n 1'"]


# --- on a GPU host: the CPU fallback ----------------------------------------------------------------------

CUDA_START = (
    'time=2026-05-20T10:01:02.123Z level=INFO source=types.go:42 msg="inference compute" id=GPU-8f6a4b2c '
    'library=CUDA compute=8.6 name=CUDA0 description="NVIDIA GeForce RTX 3090" libdirs=ollama,cuda_v12'
)
CPU_START = (
    'time=2026-05-21T07:00:00.000Z level=INFO source=types.go:60 msg="inference compute" id=cpu library=cpu'
)


def run_gpu_script(
    tmp_path: Path, s: FleetSettings, journal: list[str], vendors: tuple[str, ...] = ("nvidia",)
) -> subprocess.CompletedProcess[str]:
    """The script as rendered for a GPU host, with journalctl replaced by a recorded journal."""
    fake_journal = tmp_path / "journalctl"
    (tmp_path / "journal.txt").write_text("".join(f"{line}\n" for line in journal))
    fake_journal.write_text(f"#!/bin/sh\ncat {tmp_path / 'journal.txt'}\n")
    fake_journal.chmod(0o755)
    fake_smi = tmp_path / "nvidia-smi"  # its recorded --query-gpu=name,memory.used,memory.total answer
    fake_smi.write_text("#!/bin/sh\necho 'NVIDIA GeForce RTX 3090, 412, 24576'\n")
    fake_smi.chmod(0o755)
    text = {str(i.path): i.text for i in render_health_files(s, vendors)}[str(SCRIPT_PATH)]
    assert '["journalctl", "-u", "ollama.service"' in text and '["nvidia-smi", "--query-gpu' in text
    script = tmp_path / "health-check.py"
    text = text.replace('["journalctl",', f'["{fake_journal}",').replace('["nvidia-smi",', f'["{fake_smi}",')
    script.write_text(text)
    return subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=60)


def gpu_ollama(tmp_path: Path, share: float) -> Any:
    return fake_host(
        tmp_path / "ca", Behaviour(models=["tiny:latest", "llama3.2:1b"], vram_share=share), tls=False
    )


def test_a_gpu_host_in_vram_is_ok(tmp_path: Path) -> None:
    with gpu_ollama(tmp_path, 1.0) as ollama:
        done = run_gpu_script(tmp_path, settings(ollama_listen=f"127.0.0.1:{ollama.port}"), [CUDA_START])
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout.startswith("ok version=0.24.0")
    # what `ollama-fleet status` shows of the host's GPUs and where its models run
    assert done.stdout.rstrip().endswith(
        " gpus=[NVIDIA GeForce RTX 3090 412/24576 MiB] loaded=[tiny:latest 100% GPU, llama3.2:1b 100% GPU]"
    )


def test_a_gpu_host_whose_models_run_on_the_cpu_fails_with_its_own_status(tmp_path: Path) -> None:
    with gpu_ollama(tmp_path, 0.0) as ollama:
        done = run_gpu_script(tmp_path, settings(ollama_listen=f"127.0.0.1:{ollama.port}"), [CUDA_START])
    assert done.returncode == CPU_FALLBACK_EXIT
    assert done.stdout.startswith(
        "FAIL GPU host (nvidia) on the CPU: tiny:latest 100% on CPU, llama3.2:1b 100% on CPU; restart ollama"
    )
    assert "loaded=[tiny:latest 100% CPU, llama3.2:1b 100% CPU]" in done.stdout


def test_a_gpu_host_that_started_without_its_gpu_fails_from_the_log(tmp_path: Path) -> None:
    """The last start counts: CUDA found at an earlier start, none after the resume's restart."""
    with gpu_ollama(tmp_path, 1.0) as ollama:
        s = settings(ollama_listen=f"127.0.0.1:{ollama.port}")
        done = run_gpu_script(tmp_path, s, [CUDA_START, "msg=other", CPU_START])
    assert done.returncode == CPU_FALLBACK_EXIT
    assert "Ollama found no GPU at its last start (library=cpu)" in done.stdout


def test_a_cpu_host_is_not_checked_for_a_gpu(tmp_path: Path) -> None:
    with gpu_ollama(tmp_path, 0.0) as ollama:
        done = run_script(tmp_path, settings(ollama_listen=f"127.0.0.1:{ollama.port}"))
    assert done.returncode == 0 and done.stdout.startswith("ok ")


def test_the_gpu_unit_reads_the_journal_and_restarts_only_when_asked() -> None:
    def service(s: FleetSettings, vendors: tuple[str, ...]) -> str:
        return {str(i.path): i.text for i in render_health_files(s, vendors)}[
            "/etc/systemd/system/ollama-fleet-health.service"
        ]

    cpu = service(settings(gpu_restart_on_cpu_fallback=True), ())
    assert "SupplementaryGroups" not in cpu and "ExecStopPost" not in cpu
    plain = service(settings(), ("amd",))
    assert "SupplementaryGroups=systemd-journal\n" in plain and "ExecStopPost" not in plain
    restarting = service(settings(gpu_restart_on_cpu_fallback=True), ("nvidia",))
    assert f'ExecStopPost=+/bin/sh -c \'if [ "$$EXIT_STATUS" = {CPU_FALLBACK_EXIT} ]' in restarting
    assert "systemctl restart --no-block ollama.service" in restarting and "-mmin -30" in restarting
