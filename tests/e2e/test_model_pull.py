"""models_pull against a real registry: the lab mirror's /v2/ serves the tiny GGUF as `library/tiny:latest`.

One host pulls `<mirror host>/library/tiny:latest` over plain http (models_insecure_registries), showing
progress; the model is then listed and answers a chat through nginx; an identical deploy pulls nothing. A
pull of `library/stalls:latest`, whose blob the mirror stops sending halfway, fails the host once its bytes
stopped growing for models_pull_stall_timeout, while the host's deploy lock kept its heartbeat. The pulled
model is removed by hand afterwards (models_prune stays off), so later modules see the usual fleet.
"""

from __future__ import annotations

import json
import re
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest
from verify_fleet import DeployedFleet, deploy_fleet

from ollama_fleet.lab.registry import STALLING_REPOSITORY
from ollama_fleet.lab.state import LabState

pytestmark = pytest.mark.e2e

PULL_OPERATION = "Ollama models | Pull model {}"
# The on-host health check carries the model list, so adding or dropping a pull rewrites it too.
HEALTH_SCRIPT = "Ollama health timer | Write /usr/local/lib/ollama-fleet/health-check.py"
LOCK = "/run/ollama-fleet/deploy.lock"
STALL_S = 30  # models_pull_stall_timeout for the stalled pull


@dataclass(frozen=True)
class PullRun:
    returncode: int
    stdout: str
    stderr: str
    seconds: float

    def changed(self) -> dict[str, list[str]]:
        """Operation name -> hosts it changed (every operation: the checks and the lock report none)."""
        operations: list[dict[str, Any]] = json.loads(self.stdout)["results"]["operations"]
        return {op["name"]: op["success"] for op in operations if op["success"]}


@dataclass(frozen=True)
class Pull:
    fleet: DeployedFleet
    host: str
    model: str  # as /api/tags lists it
    registry: str  # host:port of the mirror

    def deploy(self, model: str | None = None, *extra: str) -> PullRun:
        started = time.monotonic()
        done = self.fleet.deploy(
            "--json",
            "--limit",
            self.host,
            "--data",
            f"models_pull={json.dumps([model or self.model])}",
            "--data",
            f"models_insecure_registries={json.dumps([self.registry])}",
            *extra,
        )
        return PullRun(done.returncode, done.stdout, done.stderr, time.monotonic() - started)

    def tags(self) -> dict[str, dict[str, Any]]:
        listed = json.loads(self.fleet.ssh_ok(self.host, "curl -fsS http://127.0.0.1:11434/api/tags"))
        return {model["name"]: model for model in listed["models"]}


@pytest.fixture(scope="module")
def pull(lab: LabState) -> Iterator[Pull]:
    fleet = deploy_fleet(lab)
    registry = lab.mirror_url.removeprefix("http://")
    setup = Pull(fleet, fleet.hosts[0], f"{registry}/library/tiny:latest", registry)
    assert setup.model not in setup.tags()
    yield setup
    fleet.ssh(setup.host, f"ollama rm {setup.model}")  # may already be gone; the last test checks


@pytest.fixture(scope="module")
def first(pull: Pull) -> PullRun:
    run = pull.deploy()
    print(f"\ndeploy that pulls {pull.model}: {run.seconds:.1f} s")
    return run


def test_pull_runs_with_progress(pull: Pull, first: PullRun) -> None:
    assert first.returncode == 0, first.stderr[-4000:]
    assert first.changed() == {PULL_OPERATION.format(pull.model): [pull.host], HEALTH_SCRIPT: [pull.host]}
    progress = first.stderr
    assert "pulling manifest" in progress
    # One line per layer and 10% step (PULL_PROGRESS_AWK): the GGUF layer and the config blob reach 100%.
    assert len(set(re.findall(r"pulling ([0-9a-f]{12}) 100%", progress))) == 2, progress[-4000:]
    assert "verifying sha256 digest" in progress and "writing manifest" in progress
    assert re.search(r"^.*\bsuccess$", progress, re.MULTILINE), progress[-4000:]


def test_pulled_model_is_listed_with_its_gguf_details(pull: Pull, first: PullRun) -> None:
    listed = pull.tags()[pull.model]
    assert listed["details"]["format"] == "gguf"
    assert listed["details"]["family"] == "llama"
    manifest = pull.fleet.ssh_ok(
        pull.host,
        f"cat /usr/share/ollama/.ollama/models/manifests/{pull.model.replace(':latest', '/latest')}",
    )
    assert json.loads(manifest)["layers"][0]["mediaType"] == "application/vnd.ollama.image.model"


def test_pulled_model_answers_a_chat_through_nginx(pull: Pull, first: PullRun) -> None:
    reply = pull.fleet.chat(pull.host, pull.model)
    assert reply.status_code == 200, reply.text
    assert reply.json()["choices"][0]["message"]["content"].strip()


def test_identical_deploy_pulls_nothing(pull: Pull, first: PullRun) -> None:
    again = pull.deploy()
    print(f"\nidentical deploy: {again.seconds:.1f} s")
    assert again.returncode == 0, again.stderr[-4000:]
    assert again.changed() == {}
    assert "pulling manifest" not in again.stderr


def lock_heartbeats(pull: Pull, stop: threading.Event, seen: set[int]) -> None:
    """Collect the host's deploy-lock mtimes (each heartbeat touches it) until `stop`."""
    while not stop.wait(2):
        stat = pull.fleet.ssh(pull.host, f"stat -c %Y {LOCK}", timeout=10)
        if stat.returncode == 0:
            seen.add(int(stat.stdout))


def test_a_pull_whose_registry_stops_sending_mid_blob_fails_in_the_set_time(
    pull: Pull, first: PullRun
) -> None:
    stalled = f"{pull.registry}/{STALLING_REPOSITORY}:latest"
    stop, beats = threading.Event(), set[int]()
    watcher = threading.Thread(target=lock_heartbeats, args=(pull, stop, beats))
    watcher.start()
    try:
        run = pull.deploy(stalled, "--data", f"models_pull_stall_timeout={STALL_S}")
    finally:
        stop.set()
        watcher.join()
    print(f"\ndeploy whose pull stalled: {run.seconds:.1f} s; lock heartbeats seen: {len(beats)}")

    assert run.returncode != 0
    # Ollama kept sending progress (and retrying the part) all along: the bytes done are what stopped.
    failure = re.search(
        rf"ollama-fleet: pulling {re.escape(stalled)} stalled: 2\.0 of 4\.0 MB done "
        r"\(pulling [0-9a-f]{12}\), no byte more for (\d+) s \(models_pull_stall_timeout\)",
        run.stderr,
    )
    assert failure, run.stderr[-4000:]
    assert STALL_S <= int(failure.group(1)) <= STALL_S + 1
    assert "pulling " in run.stderr and " 50% (2.0 of 4.0 MB" in run.stderr  # its progress was shown
    # The deploy held the host's lock through the pull, refreshing it: a long pull keeps its lock.
    assert len(beats) >= 2, beats
    assert stalled not in pull.tags()
    # No partial download left behind for the modules after this one.
    pull.fleet.ssh_ok(pull.host, "rm -f /usr/share/ollama/.ollama/models/blobs/*-partial*")


def test_fleet_is_back_to_its_own_models(pull: Pull, first: PullRun) -> None:
    pull.fleet.ssh_ok(pull.host, f"ollama rm {pull.model}")
    assert pull.model not in pull.tags()
    back = pull.fleet.deploy("--json", "--limit", pull.host)
    assert back.returncode == 0, back.stderr[-4000:]
    assert PullRun(back.returncode, back.stdout, back.stderr, 0).changed() == {HEALTH_SCRIPT: [pull.host]}
    assert pull.model not in pull.tags()
