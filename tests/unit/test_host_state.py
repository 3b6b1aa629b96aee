"""The host's state for Prometheus: the state writer (rendered as a host gets it) run against an Ollama that
answers /api/version and /api/ps as Ollama does, its file checked by promtool; node-exporter's flags."""

from __future__ import annotations

import importlib.util
import json
import shutil
import subprocess
import sys
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
from test_render import fleet_settings

from ollama_fleet import host_state

pytestmark = pytest.mark.unit

# Ollama's /api/ps as 0.24 answers it: one model all in VRAM, one split (6 of its 9 GiB on the GPU).
API_PS = {
    "models": [
        {
            "name": "tiny:latest",
            "model": "tiny:latest",
            "size": 104857600,
            "digest": "0f" * 32,
            "details": {
                "parent_model": "",
                "format": "gguf",
                "family": "llama",
                "families": ["llama"],
                "parameter_size": "15M",
                "quantization_level": "Q8_0",
            },
            "expires_at": "2026-12-05T02:10:00.123456789Z",
            "size_vram": 104857600,
            "context_length": 4096,
        },
        {
            "name": 'odd"name\\:7b',
            "model": 'odd"name\\:7b',
            "size": 9663676416,
            "digest": "1e" * 32,
            "details": {"format": "gguf", "family": "qwen2", "parameter_size": "7.6B"},
            "expires_at": "2026-12-05T02:10:00Z",
            "size_vram": 6442450944,
            "context_length": 32768,
        },
    ]
}
API_VERSION = {"version": "0.24.0"}


@pytest.fixture
def ollama() -> Iterator[str]:
    """A local HTTP server answering GET /api/version and /api/ps with Ollama's JSON."""

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, format: str, *args: Any) -> None:
            pass

        def do_GET(self) -> None:
            answer = {"/api/version": API_VERSION, "/api/ps": API_PS}.get(self.path)
            body = json.dumps(answer).encode()
            self.send_response(200 if answer else 404)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()


def writer_script(tmp_path: Path, listen: str, gpu: bool, **data: Any) -> tuple[Path, Path]:
    """The script as a host gets it, writing into tmp_path/textfile; (script, its textfile)."""
    s = fleet_settings(tmp_path, ollama_listen=listen, **data)
    (tmp_path / "textfile").mkdir()
    target = tmp_path / "textfile" / "ollama-fleet-state.prom"
    files = host_state.render_state_files(s, ("nvidia",) if gpu else (), textfile=str(target))
    script = tmp_path / "state.py"
    script.write_text(files[0].text)
    return script, target


def load(script: Path) -> ModuleType:
    spec = importlib.util.spec_from_file_location("state_writer", script)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def promtool_accepts(text: str) -> None:
    promtool = shutil.which("promtool")
    if not promtool:
        pytest.fail("promtool is not installed: on Debian 12 apt-get install prometheus, on 13 promtool")
    checked = subprocess.run([promtool, "check", "metrics"], input=text, capture_output=True, text=True)
    assert checked.returncode == 0, checked.stdout + checked.stderr


def samples(text: str) -> dict[str, str]:
    return dict(line.rsplit(" ", 1) for line in text.splitlines() if line and not line.startswith("#"))


def test_the_writer_reports_each_loaded_model_with_its_size_and_vram(tmp_path: Path, ollama: str) -> None:
    script, target = writer_script(tmp_path, ollama, gpu=True, health_enabled=False)
    done = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    text = target.read_text()
    promtool_accepts(text)
    found = samples(text)
    assert found["ollama_fleet_ollama_up"] == "1" and found["ollama_fleet_gpu_expected"] == "1"
    assert found['ollama_fleet_ollama_version_info{version="0.24.0"}'] == "1"
    assert found['ollama_fleet_model_loaded_size_bytes{model="tiny:latest"}'] == "104857600"
    assert found['ollama_fleet_model_loaded_vram_bytes{model="tiny:latest"}'] == "104857600"
    # A name with a quote and a backslash is escaped as Prometheus's text format wants.
    assert found['ollama_fleet_model_loaded_vram_bytes{model="odd\\"name\\\\:7b"}'] == "6442450944"
    avail = [k for k in found if k.startswith("ollama_fleet_models_filesystem_avail_bytes{")]
    assert len(avail) == 1 and 'path="/usr/share/ollama/.ollama/models"' in avail[0]
    assert not any(k.startswith("ollama_fleet_health_") for k in found)  # health_enabled false
    assert [p.name for p in target.parent.iterdir()] == [target.name]  # the temporary file was renamed


def test_an_ollama_that_does_not_answer_is_down_with_no_model(tmp_path: Path) -> None:
    writer = load(writer_script(tmp_path, "127.0.0.1:9", gpu=False)[0])
    text = "\n".join(writer.ollama_lines(*writer.read_ollama())) + "\n"
    promtool_accepts(text)
    assert samples(text) == {"ollama_fleet_ollama_up": "0", "ollama_fleet_gpu_expected": "0"}


def test_the_health_checks_last_result_comes_from_its_service(tmp_path: Path) -> None:
    writer = load(writer_script(tmp_path, "127.0.0.1:9", gpu=False)[0])
    failed = samples("\n".join(writer.health_lines("Result=exit-code\nExecMainExitTimestamp=@1764900000\n")))
    assert failed == {
        "ollama_fleet_health_last_success": "0",
        "ollama_fleet_health_last_run_timestamp_seconds": "1764900000",
        "ollama_fleet_health_interval_seconds": "60",
    }
    passed = samples("\n".join(writer.health_lines("Result=success\nExecMainExitTimestamp=@1764900060\n")))
    assert passed["ollama_fleet_health_last_success"] == "1"
    assert writer.health_lines("Result=success\nExecMainExitTimestamp=\n") == []  # not run yet


def test_the_models_filesystem_is_the_longest_mount_point_above_the_directory(tmp_path: Path) -> None:
    writer = load(writer_script(tmp_path, "127.0.0.1:9", gpu=False)[0])
    mountinfo = (
        "22 1 8:1 / / rw,relatime - ext4 /dev/sda1 rw\n"
        "30 22 8:17 / /srv rw,relatime - ext4 /dev/sdb1 rw\n"
        "31 22 8:33 / /srv/models\\040fast rw - xfs /dev/sdc1 rw\n"
        "32 22 8:49 / /usr/share/ollama/.ollama rw - xfs /dev/sdd1 rw\n"
    )
    assert writer.mount_point("/usr/share/ollama/.ollama/models", mountinfo) == "/usr/share/ollama/.ollama"
    assert writer.mount_point("/srv/models fast/m", mountinfo) == "/srv/models fast"
    assert writer.mount_point("/srv2/models", mountinfo) == "/"


def test_node_exporter_listens_on_loopback_with_flags_debian_12_and_13_both_have() -> None:
    args = host_state.exporter_args()
    assert "--web.listen-address=127.0.0.1:9100" in args
    assert f"--collector.textfile.directory={host_state.TEXTFILE_DIR}" in args
    # Renamed or removed between node-exporter 1.5 and 1.9: never used.
    assert "ignored-mount-points" not in args and "ignored-fs-types" not in args
    # That both releases' node-exporter start with them: e2e test_metrics, on lab-1 (13) and lab-2 (12).
