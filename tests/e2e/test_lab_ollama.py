"""Issue 2's proof on a real lab host: the packed release, installed by hand, serves the tiny model.

On one lab host, over SSH and with the host's own tools, the steps an operator would take: fetch the tarball
and sha256sum.txt from the lab mirror, check the checksum, unpack into a scratch dir, start `ollama serve` on
a loopback port of its own with a private model store, create the tiny model from a Modelfile and ask it for
text with curl on the host (the server listens on the host's loopback); the JSON is read here, on the
controller. Everything lives in SCRATCH and the server is stopped by its PID, so the host is as bare as before
for the deploy tests that share the session's lab: the last test proves it.
"""

from __future__ import annotations

import json
import shlex
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest

from ollama_fleet.lab import artifacts
from ollama_fleet.lab.state import LabState

pytestmark = pytest.mark.e2e

VERSION = artifacts.DEFAULT_VERSION
SCRATCH = "/root/by-hand"
PORT = 11500  # not Ollama's default 11434, which the deployed fleet uses on the same hosts
BASE_URL = f"http://127.0.0.1:{PORT}"
# HOME too: the server and the CLI keep their key pair in ~/.ollama, which must stay inside the scratch dir.
OLLAMA_ENV = f"HOME={SCRATCH} OLLAMA_HOST=127.0.0.1:{PORT} OLLAMA_MODELS={SCRATCH}/models OLLAMA_NO_CLOUD=1"
MODEL = "tiny"
NUM_PREDICT = 16
MODELFILE = f"FROM ./tiny-llama.gguf\nPARAMETER num_predict {NUM_PREDICT}\n"
# What a host holds that the steps could touch outside SCRATCH; compared before and after.
SNAPSHOT = "ls -A /root /tmp /var/tmp"


@dataclass
class ByHand:
    """Ollama installed and started by hand on one lab host, with what the operator's steps printed."""

    lab: LabState
    host: str
    before: str = ""
    checksum_report: str = ""
    version_report: str = ""
    create_report: str = ""
    pid: int | None = None

    def run(self, command: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            self.lab.ssh_command(self.host, command), capture_output=True, text=True, timeout=timeout
        )

    def ok(self, command: str, timeout: float = 120) -> str:
        result = self.run(command, timeout)
        assert result.returncode == 0, f"{self.host}: {command}\n{result.stdout}\n{result.stderr}"
        return result.stdout.strip()

    def curl(self, path: str, body: dict[str, Any] | None = None, *options: str) -> str:
        """curl on the host against the by-hand server; a JSON body makes it a POST."""
        data = ["-H", "Content-Type: application/json", "-d", json.dumps(body)] if body is not None else []
        argv = ["curl", "-sS", "--fail-with-body", *options, *data, f"{BASE_URL}{path}"]
        return self.ok(shlex.join(argv))

    def curl_json(self, path: str, body: dict[str, Any] | None = None) -> Any:
        return json.loads(self.curl(path, body))

    # ------------------------------------------------------------------------------ the operator's steps

    def fetch_and_check_release(self) -> None:
        release = f"{self.lab.mirror_url}/ollama-builds/v{VERSION}"  # the lab's build, in both formats
        self.ok(f"mkdir {SCRATCH}")  # no -p: a leftover from another run must fail loudly, not be reused
        self.ok(
            f"cd {SCRATCH} && curl -fsSO {release}/{artifacts.TGZ_NAME} && curl -fsSO {release}/sha256sum.txt"
        )
        # The sums list the .tar.zst too, which an operator on the .tgz does not fetch.
        self.checksum_report = self.ok(f"cd {SCRATCH} && sha256sum -c --ignore-missing sha256sum.txt")

    def unpack(self) -> None:
        self.ok(f"tar -xzf {SCRATCH}/{artifacts.TGZ_NAME} -C {SCRATCH}")
        # No server answers on PORT yet, so the CLI reports only its own (client) version.
        self.version_report = self.ok(f"cd {SCRATCH} && {OLLAMA_ENV} bin/ollama --version 2>&1")

    def start_server(self) -> None:
        # `cd` on a line of its own: `cd x && cmd &` backgrounds the whole list, so `$!` would be the PID of a
        # subshell that also holds the SSH session open.
        started = self.ok(
            f"cd {SCRATCH} || exit 1\n"
            f"{OLLAMA_ENV} nohup bin/ollama serve >serve.log 2>&1 </dev/null &\n"
            "echo $!"
        )
        self.pid = int(started)
        self.ok(
            "for i in $(seq 300); do\n"
            f'  [ "$(curl -fsS {BASE_URL}/ 2>/dev/null)" = "Ollama is running" ] && exit 0\n'
            f"  [ -e /proc/{self.pid} ] || break\n"
            "  sleep 0.1\n"
            "done\n"
            f"tail -20 {SCRATCH}/serve.log; exit 1"
        )

    def create_model(self) -> None:
        self.ok(f"cd {SCRATCH} && curl -fsSO {self.lab.mirror_url}/models/tiny-llama.gguf")
        self.ok(f"cd {SCRATCH} && printf %s {shlex.quote(MODELFILE)} > Modelfile")
        self.create_report = self.ok(
            f"cd {SCRATCH} && {OLLAMA_ENV} bin/ollama create {MODEL} -f Modelfile 2>&1"
        )

    def stop_and_remove(self) -> None:
        """Stop the server by its PID (it stops its runners), then remove SCRATCH. Safe to run twice."""
        if self.pid is not None:
            # Checked, not asserted: whatever happens here, the strays and the dir below still go.
            self.run(
                f'[ "$(readlink /proc/{self.pid}/exe)" = {SCRATCH}/bin/ollama ] && kill -TERM {self.pid}\n'
                f"for i in $(seq 200); do [ -e /proc/{self.pid} ] || exit 0; sleep 0.1; done; exit 1"
            )
            self.pid = None
        # Only a failed stop leaves any: they run our scratch binary, so they are ours; killed by PID.
        strays = self.processes_from_scratch()
        if strays:
            self.ok(f"kill -KILL {' '.join(strays)}")
        self.ok(f"rm -rf {SCRATCH}")

    # ------------------------------------------------------------------------------------ what is left

    def processes_from_scratch(self) -> list[str]:
        """PIDs of processes running a binary from SCRATCH (readlink adds " (deleted)" once it is gone)."""
        return self.ok(
            "for p in /proc/[0-9]*; do\n"
            f'  case "$(readlink $p/exe 2>/dev/null)" in {SCRATCH}/*) echo "${{p#/proc/}}";; esac\n'
            "done"
        ).split()

    def leftovers(self) -> list[str]:
        found = [f"process {pid}" for pid in self.processes_from_scratch()]
        found += [f"listener {line}" for line in self.ok(f"ss -Hltn 'sport = :{PORT}'").splitlines()]
        found += [f"dir {SCRATCH}"] * (self.run(f"test -e {SCRATCH}").returncode == 0)
        return found


@pytest.fixture(scope="module")
def by_hand(lab: LabState) -> Iterator[ByHand]:
    # The mirror serves the artifact cache: make sure both are in it (seconds when already built).
    artifacts.ensure_ollama_release(VERSION)
    artifacts.ensure_tiny_model()
    install = ByHand(lab, lab.hosts[0].name)
    install.before = install.ok(SNAPSHOT)
    try:
        install.fetch_and_check_release()
        install.unpack()
        install.start_server()
        install.create_model()
        yield install
    finally:
        install.stop_and_remove()


def server_sent_events(response: str) -> tuple[str, list[str]]:
    """Headers and non-empty body lines of a `curl -i` response (CRLFs already read as newlines)."""
    headers, _, body = response.partition("\n\n")
    return headers, [line for line in body.splitlines() if line]


def test_tarball_from_the_mirror_matches_its_checksum(by_hand: ByHand) -> None:
    lines = [line.removeprefix("./") for line in by_hand.checksum_report.splitlines()]
    assert lines == [f"{artifacts.TGZ_NAME}: OK"]


def test_tampered_tarball_fails_the_checksum(by_hand: ByHand) -> None:
    tampered = f"{SCRATCH}/tampered"
    by_hand.ok(
        f"mkdir {tampered} && cp {SCRATCH}/sha256sum.txt {tampered}/ && "
        f"head -c 4096 {SCRATCH}/{artifacts.TGZ_NAME} > {tampered}/{artifacts.TGZ_NAME}"
    )
    check = by_hand.run(f"cd {tampered} && sha256sum -c --ignore-missing sha256sum.txt")
    assert check.returncode != 0
    assert f"{artifacts.TGZ_NAME}: FAILED" in check.stdout


def test_unpacked_binary_says_its_version(by_hand: ByHand) -> None:
    assert f"client version is {VERSION}" in by_hand.version_report
    # The official release layout: the binary and its (here empty) library dir beside it.
    assert by_hand.ok(f"cd {SCRATCH} && ls bin lib").split() == ["bin:", "ollama", "lib:", "ollama"]


def test_server_runs_from_the_scratch_dir_and_reports_the_release(by_hand: ByHand) -> None:
    assert str(by_hand.pid) in by_hand.processes_from_scratch()
    assert by_hand.curl_json("/api/version") == {"version": VERSION}


def test_model_created_from_the_modelfile_keeps_its_parameters(by_hand: ByHand) -> None:
    assert "success" in by_hand.create_report
    names = [model["name"] for model in by_hand.curl_json("/api/tags")["models"]]
    assert names == [f"{MODEL}:latest"]
    shown = by_hand.curl_json("/api/show", {"model": MODEL})
    assert shown["parameters"].split() == ["num_predict", str(NUM_PREDICT)]


def test_generate_returns_text(by_hand: ByHand) -> None:
    body = {"model": MODEL, "prompt": "Tell me about the fleet.", "stream": False}
    reply = by_hand.curl_json("/api/generate", body)
    assert reply["response"].strip()
    # The tiny model never emits EOS: the Modelfile's num_predict ends it.
    assert reply["done_reason"] == "length"
    assert reply["eval_count"] == NUM_PREDICT


def test_chat_completions_returns_text(by_hand: ByHand) -> None:
    body = {"model": MODEL, "messages": [{"role": "user", "content": "Hello, fleet."}]}
    reply = by_hand.curl_json("/v1/chat/completions", body)
    assert reply["object"] == "chat.completion"
    choice = reply["choices"][0]
    assert choice["message"]["role"] == "assistant"
    assert choice["message"]["content"].strip()
    assert choice["finish_reason"] == "length"
    # No max_tokens in the request: the Modelfile's num_predict applies through the OpenAI API too.
    assert reply["usage"]["completion_tokens"] == NUM_PREDICT


def test_chat_completions_streams_sse_ending_with_done(by_hand: ByHand) -> None:
    body = {"model": MODEL, "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 8, "stream": True}
    headers, events = server_sent_events(by_hand.curl("/v1/chat/completions", body, "-i", "-N"))
    assert "content-type: text/event-stream" in headers.lower()
    assert all(event.startswith("data: ") for event in events)
    assert events[-1] == "data: [DONE]"
    chunks = [json.loads(event.removeprefix("data: ")) for event in events[:-1]]
    assert {chunk["object"] for chunk in chunks} == {"chat.completion.chunk"}
    deltas = [chunk["choices"][0]["delta"].get("content", "") for chunk in chunks]
    assert len([delta for delta in deltas if delta]) > 1  # text arrives piece by piece, not in one event
    assert "".join(deltas).strip()
    assert chunks[-1]["choices"][0]["finish_reason"] == "length"


def test_host_is_bare_again_after_stop_and_remove(by_hand: ByHand) -> None:
    """Last in the file: the operator's clean-up (the fixture repeats it, a no-op then) leaves nothing."""
    server = by_hand.pid
    by_hand.stop_and_remove()
    assert by_hand.leftovers() == []
    assert by_hand.run(f"test -e /proc/{server}").returncode != 0
    assert by_hand.ok(SNAPSHOT) == by_hand.before
