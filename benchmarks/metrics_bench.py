"""What the per-request metrics cost a streamed answer, as ratios to the same nginx without them, in this run.

Two nginx instances serve the rendered site on loopback with the default settings (njs reads each request's
model for the cloud refusal), one with metrics_enabled (the metrics log and the njs body filter that reads
each answer's tokens) and one without, in front of one fake Ollama that streams
an NDJSON chat of N lines (Ollama's shape, the counts in the last). Rounds alternate between the two, each
over a fresh TLS connection. Printed: the median time to the first chunk and to the end, metrics on as a
multiple of off. Needs nginx and Debian's njs (as the unit tier); contacts loopback only.

    python benchmarks/metrics_bench.py [--rounds 200] [--lines 256]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "unit"))
from test_render import (  # the unit tier's nginx helpers
    ALICE_KEY,
    ENVIRON,
    _binary,
    _free_port,
    _nginx_prefix,
    _strict_context,
    _wait_listening,
)
from test_request_metrics import fake_ollama  # the unit tier's chunked fake Ollama

from ollama_fleet.pki import FleetCA
from ollama_fleet.settings import settings_for_host


def ndjson_stream(lines: int) -> list[bytes]:
    """A chat answer of `lines` tokens and Ollama's last chunk with its counts."""
    token = {"model": "tiny", "created_at": "2026-12-04T00:00:00Z", "message": {"role": "assistant"}}
    body = [json.dumps({**token, "message": {"content": "tok "}, "done": False}).encode() + b"\n"] * lines
    last = {**token, "done": True, "prompt_eval_count": 26, "eval_count": lines, "eval_duration": 10**9}
    return [*body, json.dumps(last).encode() + b"\n"]


def start_nginx(
    tmp: Path, ca: FleetCA, upstream_port: int, metrics: bool
) -> tuple[str, subprocess.Popen[bytes]]:
    port = _free_port()
    s = settings_for_host(
        "bench",
        {
            "nginx_server_names": ["localhost"],
            "nginx_https_port": port,
            "ollama_listen": f"127.0.0.1:{upstream_port}",
            "tls_remote_dir": str(tmp / "tls"),
            "firewall_enabled": False,
            "auth_key_names": ["alice"],
            "auth_secrets_file": str(tmp / "none.json"),
            "metrics_enabled": metrics,
        },
        ENVIRON,
    )
    conf = _nginx_prefix(tmp, s, ca)
    process = subprocess.Popen([_binary("nginx"), "-p", str(tmp), "-c", str(conf)], stderr=subprocess.DEVNULL)
    _wait_listening(port, process, tmp / "error.log")
    return f"https://127.0.0.1:{port}", process


def streamed(url: str, ca_file: Path) -> tuple[float, float]:
    started = time.perf_counter()
    first = 0.0
    with (
        httpx.Client(verify=_strict_context(ca_file), timeout=30) as client,
        client.stream(
            "POST",
            f"{url}/api/chat",
            json={"model": "tiny"},
            headers={"Authorization": f"Bearer {ALICE_KEY}"},
        ) as r,
    ):
        for index, _ in enumerate(r.iter_lines()):
            if index == 0:
                first = time.perf_counter() - started
    return first, time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--rounds", type=int, default=200)
    parser.add_argument("--lines", type=int, default=256)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp_dir:
        tmp = Path(tmp_dir)
        ca = FleetCA.load_or_create(tmp / "pki")
        chunks = ndjson_stream(args.lines)
        upstream = fake_ollama(lambda _path: chunks).server
        urls, processes = {}, []
        try:
            for name, metrics in (("on", True), ("off", False)):
                (tmp / name).mkdir()
                urls[name], process = start_nginx(tmp / name, ca, upstream.server_address[1], metrics)
                processes.append(process)
            times: dict[str, list[tuple[float, float]]] = {"on": [], "off": []}
            for round_ in range(args.rounds + 5):
                for name in ("on", "off") if round_ % 2 else ("off", "on"):
                    measured = streamed(urls[name], ca.directory / "ca.pem")
                    if round_ >= 5:  # warm-up rounds not counted
                        times[name].append(measured)
            logged = (tmp / "on" / "ollama-fleet-metrics.log").read_text().splitlines()[-1]
        finally:
            for process in processes:
                process.terminate()
                process.wait(timeout=10)
            upstream.shutdown()
    assert f"tokens_out={args.lines}" in logged, logged  # the metrics really were read
    for index, what in enumerate(("first chunk", "whole stream")):
        on = statistics.median(t[index] for t in times["on"])
        off = statistics.median(t[index] for t in times["off"])
        print(f"{what}: metrics on {on * 1000:.2f} ms, off {off * 1000:.2f} ms: {on / off:.3f}x")
    print(f"({args.rounds} rounds each, {args.lines} lines per answer, alternating)")


if __name__ == "__main__":
    main()
