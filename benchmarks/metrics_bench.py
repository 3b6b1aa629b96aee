"""What the per-request metrics cost a streamed answer, as ratios to the same nginx without them, in this run.

Two nginx instances serve the rendered site on loopback with the default settings (njs reads each request's
model for the cloud refusal), one with metrics_enabled (the metrics log and the njs body filter that reads
each answer's tokens) and one without, in front of one Ollama. Rounds alternate between the two, each over a
fresh TLS connection. Printed: the median time to the first chunk and to the end, metrics on as a multiple of
off, and the load average before and after.

The Ollama is either a fake that streams an NDJSON chat of N lines (Ollama's shape, the counts in the last;
`--ollama fake`, the default), or the real one (`--ollama real`): the Ollama binary this project builds
(`ollama_fleet.lab.artifacts`, built first if not cached) serving the tiny generated GGUF, created with
`ollama create` in a temporary OLLAMA_MODELS, kept loaded, and asked for N tokens on /api/chat and on
/v1/chat/completions (streamed, with usage). Needs nginx and Debian's njs (as the unit tier); contacts
loopback only.

    python benchmarks/metrics_bench.py [--ollama fake|real] [--rounds 200] [--lines 256]
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import json
import os
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

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

from ollama_fleet.lab import artifacts
from ollama_fleet.pki import FleetCA
from ollama_fleet.settings import settings_for_host

MODEL = "tiny"
PROMPT = "Say something about the fleet."
WARM_UP_ROUNDS = 5


def ndjson_stream(lines: int) -> list[bytes]:
    """A chat answer of `lines` tokens and Ollama's last chunk with its counts."""
    token = {"model": MODEL, "created_at": "2026-12-04T00:00:00Z", "message": {"role": "assistant"}}
    body = [json.dumps({**token, "message": {"content": "tok "}, "done": False}).encode() + b"\n"] * lines
    last = {**token, "done": True, "prompt_eval_count": 26, "eval_count": lines, "eval_duration": 10**9}
    return [*body, json.dumps(last).encode() + b"\n"]


def request_bodies(lines: int, real: bool) -> dict[str, dict[str, Any]]:
    """What each timed request posts, by route. The fake answers every route alike, so it gets one."""
    messages = [{"role": "user", "content": PROMPT}]  # led by a number in each request
    # A fixed seed: both sides of a round get the same tokens. The tiny model never ends an answer itself, so
    # exactly `lines` tokens come back. Not temperature 0: its answer repeats one word, and Ollama cuts a
    # stream after 30 repeats without the last chunk and its counts.
    options = {"num_predict": lines, "seed": 1}
    native = {"model": MODEL, "messages": messages, "options": options}
    if not real:
        return {"/api/chat": native}
    openai = {
        "model": MODEL,
        "messages": messages,
        "max_tokens": lines,
        "seed": 1,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    return {"/api/chat": native, "/v1/chat/completions": openai}


@contextlib.contextmanager
def fake_upstream(lines: int) -> Iterator[int]:
    chunks = ndjson_stream(lines)
    upstream = fake_ollama(lambda _path: chunks).server
    try:
        yield upstream.server_address[1]
    finally:
        upstream.shutdown()


def ollama_binary(tmp: Path) -> Path:
    """bin/ollama unpacked from the release archive this project builds and deploys."""
    release = artifacts.ensure_ollama_release()
    with tarfile.open(release / artifacts.TGZ_NAME) as archive:
        archive.extractall(tmp / "ollama", filter="data")
    return tmp / "ollama" / "bin" / "ollama"


def wait_for_ollama(url: str, process: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"ollama serve exited {process.returncode}:\n{log.read_text()[-2000:]}")
        with contextlib.suppress(httpx.TransportError):
            if httpx.get(f"{url}/api/version", timeout=2).status_code == 200:
                return
        time.sleep(0.2)
    raise RuntimeError(f"ollama serve did not answer within 60 s; see {log}")


@contextlib.contextmanager
def real_upstream(tmp: Path) -> Iterator[int]:
    """The real Ollama on a loopback port, holding the tiny model loaded for as long as it runs."""
    tmp.mkdir()
    binary = ollama_binary(tmp)
    port = _free_port()
    env = {
        **os.environ,
        "HOME": str(tmp),
        "OLLAMA_HOST": f"127.0.0.1:{port}",
        "OLLAMA_MODELS": str(tmp / "models"),
        "OLLAMA_KEEP_ALIVE": "-1",  # never unload: every timed request finds the model warm
    }
    log = tmp / "ollama.log"
    with log.open("wb") as log_file:
        process = subprocess.Popen([binary, "serve"], env=env, stdout=log_file, stderr=subprocess.STDOUT)
    try:
        url = f"http://127.0.0.1:{port}"
        wait_for_ollama(url, process, log)
        (tmp / "Modelfile").write_text(f"FROM {artifacts.ensure_tiny_model()}\n")
        subprocess.run(
            [binary, "create", MODEL, "-f", "Modelfile"], env=env, cwd=tmp, check=True, capture_output=True
        )
        # A request with no prompt loads the model and answers nothing.
        httpx.post(f"{url}/api/generate", json={"model": MODEL}, timeout=120).raise_for_status()
        yield port
    finally:
        process.terminate()
        process.wait(timeout=30)


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


def streamed(url: str, ca_file: Path, route: str, body: dict[str, Any]) -> tuple[float, float]:
    """Seconds to the first line of the answer and to its end, over a new TLS connection."""
    started = time.perf_counter()
    first = 0.0
    with (
        httpx.Client(verify=_strict_context(ca_file), timeout=60) as client,
        client.stream(
            "POST", f"{url}{route}", json=body, headers={"Authorization": f"Bearer {ALICE_KEY}"}
        ) as r,
    ):
        r.raise_for_status()
        for index, _ in enumerate(r.iter_lines()):
            if index == 0:
                first = time.perf_counter() - started
    return first, time.perf_counter() - started


def with_fresh_prompt(body: dict[str, Any], number: int) -> dict[str, Any]:
    """`body` asking a prompt no earlier request began with: Ollama keeps the last prompt's evaluation and
    would otherwise skip it, and a first token without it is not what a new conversation waits for."""
    return {**body, "messages": [{"role": "user", "content": f"{number:06d} {PROMPT}"}]}


def timed_rounds(
    urls: dict[str, str], ca_file: Path, bodies: dict[str, dict[str, Any]], rounds: int
) -> dict[tuple[str, str], list[tuple[float, float]]]:
    """(route, on|off) -> the counted rounds' times; each round runs both sides, in alternating order."""
    times: dict[tuple[str, str], list[tuple[float, float]]] = {(r, n): [] for r in bodies for n in urls}
    requests = itertools.count()
    for round_ in range(rounds + WARM_UP_ROUNDS):
        for route, body in bodies.items():
            for name in ("on", "off") if round_ % 2 else ("off", "on"):
                measured = streamed(urls[name], ca_file, route, with_fresh_prompt(body, next(requests)))
                if round_ >= WARM_UP_ROUNDS:
                    times[(route, name)].append(measured)
    return times


def check_metrics_read(log: Path, routes: list[str], lines: int) -> None:
    """The metrics really were read: every logged request of each route has its output tokens."""
    deadline = time.monotonic() + 5  # nginx logs a request after its last byte went out
    for route in routes:
        while not (logged := [line for line in log.read_text().splitlines() if f" route={route} " in line]):
            assert time.monotonic() < deadline, f"no {route} in {log}"
            time.sleep(0.1)
        uncounted = [line for line in logged if f" tokens_out={lines} " not in line]
        assert not uncounted, f"{len(uncounted)} of {len(logged)} {route} answers not counted: {uncounted[0]}"


def print_ratios(times: dict[tuple[str, str], list[tuple[float, float]]], routes: list[str]) -> None:
    for route in routes:
        for index, what in enumerate(("first chunk", "whole stream")):
            on = statistics.median(t[index] for t in times[(route, "on")])
            off = statistics.median(t[index] for t in times[(route, "off")])
            print(f"{route} {what}: metrics on {on * 1000:.2f} ms, off {off * 1000:.2f} ms: {on / off:.3f}x")


def load() -> str:
    return " ".join(f"{value:.2f}" for value in os.getloadavg())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--ollama", choices=("fake", "real"), default="fake")
    parser.add_argument("--rounds", type=int, default=200)
    parser.add_argument("--lines", type=int, default=256, help="tokens per answer")
    args = parser.parse_args()
    real = args.ollama == "real"
    bodies = request_bodies(args.lines, real)
    with tempfile.TemporaryDirectory() as tmp_dir, contextlib.ExitStack() as stack:
        tmp = Path(tmp_dir)
        ca = FleetCA.load_or_create(tmp / "pki")
        upstream = real_upstream(tmp / "ollama-home") if real else fake_upstream(args.lines)
        upstream_port = stack.enter_context(upstream)
        urls = {}
        for name, metrics in (("on", True), ("off", False)):
            (tmp / name).mkdir()
            urls[name], process = start_nginx(tmp / name, ca, upstream_port, metrics)
            stack.callback(process.wait, timeout=10)
            stack.callback(process.terminate)
        load_before = load()
        times = timed_rounds(urls, ca.directory / "ca.pem", bodies, args.rounds)
        load_after = load()
        check_metrics_read(tmp / "on" / "ollama-fleet-metrics.log", list(bodies), args.lines)
    print_ratios(times, list(bodies))
    print(
        f"({args.ollama} Ollama, {args.rounds} rounds each after {WARM_UP_ROUNDS} warm-up, "
        f"{args.lines} tokens per answer, alternating; load average {load_before} before, {load_after} after)"
    )


if __name__ == "__main__":
    main()
