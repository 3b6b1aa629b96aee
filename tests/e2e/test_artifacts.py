"""The packed Ollama release really serves the tiny model, on the controller's loopback.

Unpacks the cached release tarball like an installer would, starts `ollama serve` on a free loopback port
with a private model store, creates the tiny model from a Modelfile with the CLI and asks it for text
through the native and the OpenAI-compatible API, streaming and not. The server is stopped by its PID.
"""

from __future__ import annotations

import gzip
import json
import os
import shutil
import signal
import socket
import subprocess
import tarfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from ollama_fleet.lab import artifacts
from ollama_fleet.localfiles import sha256_of

pytestmark = pytest.mark.e2e

VERSION = artifacts.DEFAULT_VERSION
NUM_PREDICT = 16


@dataclass(frozen=True)
class Server:
    url: str
    env: dict[str, str]
    binary: Path


@pytest.fixture(scope="module")
def release_dir() -> Path:
    return artifacts.ensure_ollama_release(VERSION)


@pytest.fixture(scope="module")
def install_dir(release_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Unpacked with GNU tar, as Ollama's install script does."""
    root = tmp_path_factory.mktemp("install")
    subprocess.run(["tar", "-xzf", str(release_dir / artifacts.TGZ_NAME), "-C", str(root)], check=True)
    return root


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _server_env(home: Path, port: int) -> dict[str, str]:
    return {
        "PATH": "/usr/bin:/bin",
        "HOME": str(home),
        "OLLAMA_HOST": f"127.0.0.1:{port}",
        "OLLAMA_MODELS": str(home / "models"),
        # Keep the server off the internet: no ollama.com lookups, and any other request goes to a dead
        # loopback proxy instead of a real address.
        "OLLAMA_NO_CLOUD": "1",
        "HTTPS_PROXY": "http://127.0.0.1:9",
        "HTTP_PROXY": "http://127.0.0.1:9",
        "NO_PROXY": "127.0.0.1,localhost",
    }


def _wait_until_up(url: str, proc: subprocess.Popen[bytes], timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"ollama serve exited with {proc.returncode}")
        try:
            if httpx.get(url, timeout=1.0).text == "Ollama is running":
                return
        except httpx.TransportError:
            pass
        time.sleep(0.2)
    raise TimeoutError(f"ollama serve did not answer on {url} within {timeout}s")


def _stop(proc: subprocess.Popen[bytes]) -> None:
    """SIGTERM our own server PID (Ollama then stops its runners), SIGKILL it only after a timeout."""
    if proc.poll() is None:
        os.kill(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)


@pytest.fixture(scope="module")
def server(install_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    home = tmp_path_factory.mktemp("home")
    port = _free_port()
    env = _server_env(home, port)
    binary = install_dir / "bin" / "ollama"
    with (home / "serve.log").open("wb") as log:
        proc = subprocess.Popen([str(binary), "serve"], env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        _wait_until_up(f"http://127.0.0.1:{port}/", proc)
        yield Server(f"http://127.0.0.1:{port}", env, binary)
    finally:
        _stop(proc)
    assert proc.returncode is not None


@pytest.fixture(scope="module")
def tiny(server: Server, tmp_path_factory: pytest.TempPathFactory) -> str:
    workdir = tmp_path_factory.mktemp("modelfile")
    shutil.copy(artifacts.ensure_tiny_model(), workdir / "tiny-llama.gguf")
    (workdir / "Modelfile").write_text(
        "FROM ./tiny-llama.gguf\n"
        f"PARAMETER num_predict {NUM_PREDICT}\n"
        "PARAMETER temperature 0.8\n"
        "PARAMETER seed 7\n"
    )
    subprocess.run(
        [str(server.binary), "create", "tiny", "-f", "Modelfile"],
        cwd=workdir,
        env=server.env,
        check=True,
        capture_output=True,
        timeout=120,
    )
    return "tiny"


def test_sha256sum_matches_both_archives(release_dir: Path) -> None:
    sums = artifacts.read_sums(release_dir)
    assert set(sums) == {artifacts.TGZ_NAME, artifacts.ZST_NAME}
    for name, digest in sums.items():
        assert sha256_of(release_dir / name) == digest


def test_archives_hold_the_release_layout(release_dir: Path) -> None:
    tar_bytes = gzip.decompress((release_dir / artifacts.TGZ_NAME).read_bytes())
    zst = subprocess.run(
        ["zstd", "-dc", str(release_dir / artifacts.ZST_NAME)], capture_output=True, check=True
    )
    assert zst.stdout == tar_bytes
    with tarfile.open(release_dir / artifacts.TGZ_NAME) as tar:
        assert tar.getnames() == ["bin", "bin/ollama", "lib", "lib/ollama"]


def test_packed_binary_reports_the_release_version(install_dir: Path) -> None:
    assert artifacts.binary_version(install_dir / "bin" / "ollama") == VERSION


def test_server_reports_its_version(server: Server) -> None:
    assert httpx.get(f"{server.url}/api/version").json() == {"version": VERSION}


def test_created_model_is_listed(server: Server, tiny: str) -> None:
    names = [m["name"] for m in httpx.get(f"{server.url}/api/tags").json()["models"]]
    assert f"{tiny}:latest" in names


def test_generate_returns_text(server: Server, tiny: str) -> None:
    body = {"model": tiny, "prompt": "Tell me about the fleet.", "stream": False}
    reply = httpx.post(f"{server.url}/api/generate", json=body, timeout=120).json()
    assert reply["done"] is True
    assert reply["done_reason"] == "length"  # the tiny model never emits EOS; num_predict ends it
    assert reply["eval_count"] == NUM_PREDICT
    assert reply["response"].strip()


def test_generate_streams_ndjson(server: Server, tiny: str) -> None:
    body = {"model": tiny, "prompt": "Hello", "stream": True}
    with httpx.stream("POST", f"{server.url}/api/generate", json=body, timeout=120) as response:
        chunks = [json.loads(line) for line in response.iter_lines() if line]
    assert chunks[-1]["done"] is True
    assert "".join(c["response"] for c in chunks).strip()
    assert len(chunks) > 2


def test_chat_completions_returns_text(server: Server, tiny: str) -> None:
    body = {"model": tiny, "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 12}
    reply = httpx.post(f"{server.url}/v1/chat/completions", json=body, timeout=120).json()
    assert reply["object"] == "chat.completion"
    assert reply["choices"][0]["message"]["content"].strip()
    assert reply["choices"][0]["finish_reason"] == "length"


def test_chat_completions_streams_sse_ending_with_done(server: Server, tiny: str) -> None:
    body = {"model": tiny, "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 12, "stream": True}
    with httpx.stream("POST", f"{server.url}/v1/chat/completions", json=body, timeout=120) as response:
        assert response.headers["content-type"].startswith("text/event-stream")
        events = [line for line in response.iter_lines() if line]
    assert all(event.startswith("data: ") for event in events)
    assert events[-1] == "data: [DONE]"
    chunks = [json.loads(event.removeprefix("data: ")) for event in events[:-1]]
    assert {c["object"] for c in chunks} == {"chat.completion.chunk"}
    assert "".join(c["choices"][0]["delta"].get("content", "") for c in chunks).strip()
