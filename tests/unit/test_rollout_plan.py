"""The rollout's batch planner, halt rule, state file and command-line refusals (no hosts)."""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from ollama_fleet.deploys.drain import DRAIN_KEY
from ollama_fleet.deploys.rollback import previous_release
from ollama_fleet.rollout import runner
from ollama_fleet.rollout import state as st
from ollama_fleet.rollout.commands import _starting_state, render_table
from ollama_fleet.rollout.plan import PlanError, batch_size, default_canary_group, plan_batches, should_halt

pytestmark = pytest.mark.unit

HOSTS = [f"h{i}" for i in range(1, 9)]
REPO = Path(__file__).resolve().parents[2]


def test_canary_first_then_batches_in_inventory_order() -> None:
    assert plan_batches(HOSTS, ["h3"], "3") == [["h3"], ["h1", "h2", "h4"], ["h5", "h6", "h7"], ["h8"]]


def test_percent_batches_round_up_and_never_are_empty() -> None:
    assert batch_size("25%", 7) == 2
    assert batch_size("1%", 3) == 1
    assert batch_size("100%", 7) == 7
    assert plan_batches(HOSTS, [], "50%") == [HOSTS[:4], HOSTS[4:]]


def test_no_canary_group_means_no_canary_batch() -> None:
    assert plan_batches(["a", "b"], [], "1") == [["a"], ["b"]]
    assert plan_batches(["a"], ["a"], "5") == [["a"]]


@pytest.mark.parametrize("spec", ["0", "0%", "101%", "-1", "abc", "3.5", ""])
def test_bad_batch_specs_are_refused_with_the_fix(spec: str) -> None:
    with pytest.raises(PlanError, match="give a host count"):
        batch_size(spec, 5)


def test_the_default_canary_is_canary_or_the_single_star_canary_group() -> None:
    assert default_canary_group({"canary": ["a"], "lab_canary": ["b"]}) == "canary"
    assert default_canary_group({"lab_canary": ["b"], "lab_rest": ["c"]}) == "lab_canary"
    assert default_canary_group({"a_canary": ["a"], "b_canary": ["b"]}) is None  # ambiguous: none
    assert default_canary_group({"gpu": ["a"]}) is None


def test_halt_once_more_hosts_failed_than_may_be_unavailable() -> None:
    assert should_halt(1, 0) and not should_halt(0, 0)
    assert not should_halt(2, 2) and should_halt(3, 2)


def test_state_round_trips_through_its_file(tmp_path: Path) -> None:
    state = st.RolloutState.new("inv.py", "deploys/ollama.py", [["h1"], ["h2", "h3"]])
    state.hosts["h1"].result, state.hosts["h1"].version_after = st.OK, "0.24.1"
    state.next_batch = 1
    path = tmp_path / "state.json"
    st.save(state, path)
    assert st.load(path) == state
    assert [h["host"] for h in json.loads(path.read_text())["hosts"]] == ["h1", "h2", "h3"]
    assert not list(tmp_path.glob(".*.tmp"))


def args(**overrides: object) -> argparse.Namespace:
    base = {
        "resume": False,
        "inventory": "inv.py",
        "deploy": "deploys/ollama.py",
        "canary": None,
        "batch": "1",
    }
    return argparse.Namespace(**{**base, **overrides})


def test_an_unfinished_rollout_must_be_resumed_not_restarted(tmp_path: Path) -> None:
    path = tmp_path / "state.json"
    halted = st.RolloutState.new("inv.py", "deploys/ollama.py", [["h1"], ["h2"]])
    halted.status, halted.halt_reason = st.HALTED, "batch 1 failed on h1"
    halted.hosts["h2"].result = st.SKIPPED
    st.save(halted, path)
    with pytest.raises(PlanError, match=r"halted .*batch 1 failed on h1.*--resume"):
        _starting_state(args(), ["h1", "h2"], {}, path)
    resumed = _starting_state(args(resume=True), ["h1", "h2"], {}, path)
    assert resumed.hosts["h2"].result == st.PENDING  # untouched hosts are pending again
    with pytest.raises(PlanError, match=r"is a rollout of deploys/ollama\.py to inv\.py, not of"):
        _starting_state(args(resume=True, inventory="other.py"), ["h1"], {}, path)


def test_resume_without_state_and_an_unknown_canary_are_refused(tmp_path: Path) -> None:
    with pytest.raises(PlanError, match="no rollout state"):
        _starting_state(args(resume=True), ["h1"], {}, tmp_path / "none.json")
    with pytest.raises(PlanError, match="--canary gpus: no such group"):
        _starting_state(args(canary="gpus"), ["h1"], {"lab": ["h1"]}, tmp_path / "none.json")


def test_the_table_shows_versions_and_the_halt(tmp_path: Path) -> None:
    state = st.RolloutState.new("inv.py", "d.py", [["h1"], ["h2"]])
    state.hosts["h1"].result, state.hosts["h1"].reason = st.FAILED, "Ollama 0.24.9 did not come up"
    state.hosts["h1"].version_before = state.hosts["h1"].version_after = "0.24.0"
    state.status, state.halt_reason = st.HALTED, "batch 1 failed on h1"
    table = render_table(state)
    assert "h1    1      0.24.0  0.24.0  failed   Ollama 0.24.9 did not come up" in table
    assert "h2    2      -       -       pending" in table
    assert table.endswith("HALTED: batch 1 failed on h1")


def cli(*argv: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """The CLI in its own process: loading an inventory imports pyinfra, which monkey-patches with gevent."""
    return subprocess.run(
        [sys.executable, "-m", "ollama_fleet.cli", *argv],
        cwd=REPO,
        env={**os.environ, **(env or {})},
        capture_output=True,
        text=True,
        check=False,
    )


def test_rollout_cli_refuses_bad_input_with_exit_2() -> None:
    done = cli("rollout", "inventories/lan.py", "no/such/deploy.py")
    assert done.returncode == 2 and "deploy file 'no/such/deploy.py' not found" in done.stderr
    assert cli("rollout", "inventories/lan.py", "--max-unavailable", "-1").returncode == 2
    done = cli("rollout", "no-such-inventory.py")
    assert done.returncode == 2 and "inventory 'no-such-inventory.py' not found" in done.stderr
    done = cli("rollout", "inventories/lan.py", "--batch", "0")
    assert done.returncode == 2 and "--batch '0': give a host count" in done.stderr


def test_rollback_refuses_a_gateway_only_host_before_touching_any() -> None:
    keys = {
        "OLLAMA_FLEET_API_KEY_TEAM": "exampleTEAMkey0123456789",
        "OLLAMA_FLEET_API_KEY_CI": "exampleCIkey012345",
    }
    done = cli("rollback", "inventories/lan.py", "--hosts", "cpu-1.example.lan,gw-1.example.lan", env=keys)
    assert done.returncode == 2, done.stderr
    assert "gw-1.example.lan run no Ollama (gateway_only): nothing to roll back" in done.stderr
    assert "rolling back" not in done.stderr


def test_rollback_goes_one_release_back_never_forward() -> None:
    assert previous_release("0.24.1", ["0.23.0", "0.24.0", "0.24.1", "0.25.0"]) == "0.24.0"
    assert previous_release("0.24.0", ["0.24.0", "0.24.1"]) is None
    assert previous_release(None, ["0.24.0"]) is None


class FakePyinfra:
    """Stands in for a rollout's pyinfra runs: records each (kind, hosts, drained), fails the `failing` hosts
    of the rollout's own deploy, and with `drain_fails` every host of a drain run."""

    def __init__(self, failing: tuple[str, ...] = (), drain_fails: bool = False) -> None:
        self.calls: list[tuple[str, list[str], list[str] | None]] = []
        self.failing, self.drain_fails = set(failing), drain_fails

    def __call__(
        self,
        options: runner.RolloutOptions,
        hosts: list[str],
        log: object,
        deploy: str | None = None,
        data: dict[str, Any] | None = None,
    ) -> tuple[set[str], dict[str, str]]:
        if deploy == runner.DRAIN_DEPLOY:
            self.calls.append(("drain", list(hosts), list((data or {})[DRAIN_KEY])))
            failed = set(hosts) if self.drain_fails else set()
        else:
            self.calls.append(("deploy", list(hosts), None))
            failed = set(hosts) & self.failing
        return failed, {h: "it broke" for h in failed}


def rollout_with(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, fake: FakePyinfra) -> st.RolloutState:
    monkeypatch.setattr(runner, "run_pyinfra", fake)
    monkeypatch.setattr(runner, "verify_batch", lambda targets, timeout: {})
    monkeypatch.setattr(runner, "serving_version", lambda target, timeout: "0.24.0")
    monkeypatch.setattr(runner, "ssh_reachable", lambda target: None)
    state = st.RolloutState.new("inv.py", "deploys/ollama.py", [["a"], ["b", "c"]])
    options = runner.RolloutOptions("inv.py", "deploys/ollama.py", gateways=("gw",))
    targets: dict[str, Any] = {h: h for h in "abc"}
    return runner.run_rollout(state, targets, options, tmp_path / "state.json", lambda line: None)


def test_each_batch_is_drained_at_the_gateways_first_and_put_back_once_verified(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    fake = FakePyinfra(failing=("c",))
    done = rollout_with(monkeypatch, tmp_path, fake)
    assert fake.calls == [
        ("drain", ["gw"], ["a"]),
        ("deploy", ["a"], None),
        ("drain", ["gw"], []),  # a passed: back in rotation
        ("drain", ["gw"], ["b", "c"]),
        ("deploy", ["b", "c"], None),
        ("drain", ["gw"], ["c"]),  # c failed: it stays out
    ]
    assert done.status == st.HALTED and done.hosts["c"].result == st.FAILED


def test_a_drain_that_fails_halts_before_the_batch_touches_any_host(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    fake = FakePyinfra(drain_fails=True)
    done = rollout_with(monkeypatch, tmp_path, fake)
    assert fake.calls == [("drain", ["gw"], ["a"])]
    assert done.status == st.HALTED and "gateway gw: it broke" in done.halt_reason
    assert {o.result for o in done.hosts.values()} == {st.SKIPPED}
