"""Per-request metrics, end to end on this machine: the rendered site in a real nginx with Debian's njs in
front of a fake Ollama, its metrics log read by Debian's mtail with the shipped program; and /metrics
open to a key with the `metrics` scope only."""

from __future__ import annotations

import contextlib
import re
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest
from test_render import (
    ALICE_KEY,
    _binary,
    _free_port,
    _nginx_prefix,
    _strict_context,
    _wait_listening,
)

from ollama_fleet.deploys.metrics import mtail_program
from ollama_fleet.pki import FleetCA
from ollama_fleet.settings import settings_for_host

pytestmark = pytest.mark.unit

MONITOR_KEY = "mon-Zq8r2Lx0Vb7Ny4Tk"
ENVIRON = {"OLLAMA_FLEET_API_KEY_ALICE": ALICE_KEY, "OLLAMA_FLEET_API_KEY_MONITOR": MONITOR_KEY}

# Ollama's NDJSON stream, cut where a client could see it cut: inside the first line and inside the last.
STREAM_CHUNKS = [
    b'{"model":"tiny","created_at":"2026-12-04T00:00:00Z","message":{"role":"assistant","con',
    b'tent":"Hel"},"done":false}\n{"model":"tiny","created_at":"2026-12-04T00:00:00Z","message":{"role":',
    b'"assistant","content":"lo \xc3\xa9"},"done":false}\n',
    b'{"model":"tiny","created_at":"2026-12-04T00:00:01Z","message":{"role":"assistant","content":""},"done'
    b'":true,"done_reason":"stop","total_duration":900000000,"load_duration":100000000,"prompt_eval_count":26,',
    b'"prompt_eval_duration":200000000,"eval_count":5,"eval_duration":500000000}\n',
]
# An OpenAI answer: one JSON object, no final newline.
OPENAI_ANSWER = (
    b'{"id":"chatcmpl-1","object":"chat.completion","created":1,"model":"tiny",'
    b'"choices":[{"index":0,"message":{"role":"assistant","content":"hi"},"finish_reason":"stop"}],'
    b'"usage":{"prompt_tokens":11,"completion_tokens":3,"total_tokens":14}}'
)


@dataclass
class FakeOllama:
    server: ThreadingHTTPServer
    port: int = 0
    sent: list[bytes] = field(default_factory=list)


def answers_by_path(path: str) -> list[bytes]:
    return STREAM_CHUNKS if path == "/api/chat" else [OPENAI_ANSWER]


def fake_ollama(chunks_for: Callable[[str], list[bytes]] = answers_by_path) -> FakeOllama:
    """Ollama as nginx sees it: each POST answered with `chunks_for(path)`, one chunked write per line, as
    Ollama flushes each token (the benchmark uses it too)."""
    fake: FakeOllama

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, format: str, *args: Any) -> None:
            pass

        def do_POST(self) -> None:
            self.rfile.read(int(self.headers.get("Content-Length") or 0))
            chunks = chunks_for(self.path)
            self.send_response(200)
            self.send_header("Content-Type", "application/x-ndjson")
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            for chunk in chunks:
                self.wfile.write(f"{len(chunk):x}\r\n".encode() + chunk + b"\r\n")
                self.wfile.flush()
            self.wfile.write(b"0\r\n\r\n")
            fake.sent.append(b"".join(chunks))

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    fake = FakeOllama(server, server.server_address[1])
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return fake


@dataclass
class Metered:
    url: str
    ca_file: Path
    log: Path
    upstream: FakeOllama

    def client(self) -> httpx.Client:
        return httpx.Client(base_url=self.url, verify=_strict_context(self.ca_file), timeout=10)


@pytest.fixture(scope="module")
def metered(tmp_path_factory: pytest.TempPathFactory, ca: FleetCA) -> Iterator[Metered]:
    tmp = tmp_path_factory.mktemp("metered")
    upstream = fake_ollama()
    port = _free_port()
    s = settings_for_host(
        "ollama1",
        {
            "nginx_server_names": ["localhost"],
            "nginx_https_port": port,
            "ollama_listen": f"127.0.0.1:{upstream.port}",
            "tls_remote_dir": str(tmp / "tls"),
            "firewall_enabled": False,
            "auth_key_names": ["alice", "monitor"],
            "auth_key_policies": {"monitor": {"scope": "metrics"}},
            "auth_secrets_file": str(tmp / "no-secrets.json"),
        },
        ENVIRON,
    )
    conf = _nginx_prefix(tmp, s, ca)
    process = subprocess.Popen([_binary("nginx"), "-p", str(tmp), "-c", str(conf)], stderr=subprocess.DEVNULL)
    try:
        _wait_listening(port, process, tmp / "error.log")
        yield Metered(
            f"https://127.0.0.1:{port}", ca.directory / "ca.pem", tmp / "ollama-fleet-metrics.log", upstream
        )
    finally:
        process.terminate()
        process.wait(timeout=10)
        upstream.server.shutdown()
        upstream.server.server_close()


@contextlib.contextmanager
def running_mtail(program: Path, log: Path) -> Iterator[str]:
    """Debian's mtail as the hosts run it (a daemon following `log`, from its end), for the `with` block;
    yields its /metrics URL."""
    port = _free_port()
    argv = [_binary("mtail"), "--progs", str(program), "--logs", str(log), "--address", "127.0.0.1"]
    argv += ["--port", str(port), "--logtostderr", "--emit_prog_label=false"]
    process = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}/metrics"
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                httpx.get(url, timeout=2).raise_for_status()
                break
            except httpx.HTTPError:
                assert process.poll() is None and time.monotonic() < deadline, "mtail did not start"
                time.sleep(0.1)
        yield url
    finally:
        process.terminate()
        process.wait(timeout=10)


SAMPLE = re.compile(r"^(\w+)(?:\{(.*)\})? (\S+)$")
LABEL = re.compile(r'(\w+)="((?:[^"\\]|\\.)*)"')


def scraped(url: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    """(series name, its labels) -> value, from a Prometheus text page."""
    series = {}
    for line in httpx.get(url, timeout=5).text.splitlines():
        sample = SAMPLE.match(line)
        if sample:
            labels = frozenset(LABEL.findall(sample.group(2) or ""))
            series[(sample.group(1), labels)] = float(sample.group(3))
    return series


def value(series: dict[tuple[str, frozenset[tuple[str, str]]], float], name: str, **labels: str) -> float:
    return series.get((name, frozenset(labels.items())), 0.0)


def test_answers_pass_unchanged_and_their_counts_become_series(metered: Metered, tmp_path: Path) -> None:
    program = tmp_path / "ollama-fleet.mtail"
    program.write_text(mtail_program())
    with running_mtail(program, metered.log) as mtail, metered.client() as client:
        with client.stream(
            "POST", "/api/chat", json={"model": "tiny"}, headers={"Authorization": f"Bearer {ALICE_KEY}"}
        ) as streamed:
            received = b"".join(streamed.iter_raw())
        assert streamed.status_code == 200
        answer = client.post(
            "/v1/chat/completions",
            json={"model": "tiny:latest"},
            headers={"Authorization": f"Bearer {ALICE_KEY}"},
        )
        refused = client.post("/api/chat", json={"model": "tiny"}, headers={"Authorization": "Bearer wrong"})
        assert received == metered.upstream.sent[0]  # byte for byte, a split UTF-8 character included
        assert answer.content == OPENAI_ANSWER and refused.status_code == 401
        # mtail reads the lines as nginx writes them: wait for the last one.
        chat = {"server": "api", "key": "alice", "model": "tiny:latest", "route": "/api/chat"}
        deadline = time.monotonic() + 10
        while not value(
            series := scraped(mtail),
            "ollama_fleet_requests_total",
            **{**chat, "key": "", "model": "", "status": "401"},
        ):
            assert time.monotonic() < deadline, "mtail did not count the 401"
            time.sleep(0.1)
    log = metered.log.read_text()
    assert ALICE_KEY not in log and "key=alice" in log  # the key's name, never its value
    assert value(series, "ollama_fleet_requests_total", **chat, status="200") == 1
    assert value(series, "ollama_fleet_prompt_tokens_total", **chat) == 26
    assert value(series, "ollama_fleet_output_tokens_total", **chat) == 5
    assert value(series, "ollama_fleet_eval_seconds_total", **chat) == 0.5
    assert value(series, "ollama_fleet_ttft_seconds_count", **chat) == 1
    assert value(series, "ollama_fleet_request_seconds_count", **chat) == 1
    openai = {**chat, "route": "/v1/chat/completions"}
    assert value(series, "ollama_fleet_prompt_tokens_total", **openai) == 11
    assert value(series, "ollama_fleet_output_tokens_total", **openai) == 3
    # A refused request is counted, with no key name and no model, and no time to a first token.
    refused_labels = {**chat, "key": "", "model": ""}
    assert value(series, "ollama_fleet_ttft_seconds_count", **refused_labels) == 0


def test_metrics_answer_only_a_key_with_the_metrics_scope(metered: Metered) -> None:
    with metered.client() as client:
        keyless = client.get("/metrics")
        inference = client.get("/metrics", headers={"Authorization": f"Bearer {ALICE_KEY}"})
        monitor = client.get("/metrics", headers={"Authorization": f"Bearer {MONITOR_KEY}"})
        monitor_on_api = client.post(
            "/api/chat", json={"model": "tiny"}, headers={"Authorization": f"Bearer {MONITOR_KEY}"}
        )
    assert keyless.status_code == 401
    assert inference.status_code == 403 and inference.json()["error"]["code"] == "insufficient_scope"
    # Past the key check to mtail's address (502: no mtail listens in this test).
    assert monitor.status_code not in (401, 403)
    assert monitor_on_api.status_code == 403  # metrics only: no API
