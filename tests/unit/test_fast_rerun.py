"""The fast re-run's pure parts: who may take it, what its digests depend on, how the record is read."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path
from typing import Any

import pytest

from ollama_fleet import state_probe
from ollama_fleet.operations.converged import HostState, VerifiedState
from ollama_fleet.settings import FleetSettings, settings_for_host

pytestmark = pytest.mark.unit

PIN = "sha256:" + "a" * 64


def _settings(tmp_path: Path, **data: Any) -> FleetSettings:
    secrets = tmp_path / "secrets.json"
    if not secrets.exists():
        secrets.write_text('{"api_keys": {"ci": "ci-key-0123456789abcdef"}}')
        secrets.chmod(0o600)
    base = {"auth_key_names": ["ci"], "auth_secrets_file": str(secrets), "firewall_enabled": False}
    return settings_for_host("h1", {**base, **data}, {})


@pytest.mark.parametrize(
    ("data", "blocked_by"),
    [
        ({}, None),
        ({"deploy_fast_rerun": False}, "deploy_fast_rerun is false"),
        ({"models_pull": ["llama3.2:1b"]}, "unpinned models_pull"),
        ({"models_pull": [f"llama3.2:1b@{PIN}"]}, None),
        ({"models_pull": [f"llama3.2:1b@{PIN}"], "models_refresh": True}, "models_refresh"),
    ],
)
def test_only_hosts_whose_models_the_controller_knows_take_the_fast_rerun(
    tmp_path: Path, data: dict[str, Any], blocked_by: str | None
) -> None:
    blocker = state_probe.fast_rerun_blocker(_settings(tmp_path, **data))
    assert (blocker is None) if blocked_by is None else (blocked_by in (blocker or "")), blocker


def test_a_host_fetching_from_a_seed_always_gets_the_whole_deploy(tmp_path: Path) -> None:
    s = _settings(tmp_path, models_seed_host="seed", models_pull=[f"llama3.2:1b@{PIN}"])
    assert state_probe.fast_rerun_blocker(s) == "its models come from the seed seed"


def test_the_settings_text_changes_with_any_setting_and_with_a_rotated_key(tmp_path: Path) -> None:
    before = state_probe.settings_text(_settings(tmp_path))
    assert before == state_probe.settings_text(_settings(tmp_path))  # canonical
    assert before != state_probe.settings_text(_settings(tmp_path, ollama_keep_versions=3))
    (tmp_path / "secrets.json").write_text('{"api_keys": {"ci": "ci-key-rotated-456789abcdef"}}')
    rotated = state_probe.settings_text(_settings(tmp_path))
    assert rotated != before and "ci-key-rotated-456789abcdef" in rotated  # hashed, never printed


def test_the_desired_digest_depends_on_every_part_and_its_place() -> None:
    digest = state_probe.desired_digest(["a", "b"])
    assert re.fullmatch("[0-9a-f]{64}", digest)
    assert digest == state_probe.desired_digest(["a", "b"])
    assert len({digest, state_probe.desired_digest(["b", "a"]), state_probe.desired_digest(["ab"])}) == 3


def test_the_code_digest_changes_with_an_operators_template(tmp_path: Path) -> None:
    templates = tmp_path / "templates"
    templates.mkdir()
    (templates / "site.conf.j2").write_text("one")
    before = state_probe.code_digest(templates)
    (templates / "site.conf.j2").write_text("two")
    state_probe.code_digest.cache_clear()
    assert state_probe.code_digest(templates) != before


def test_the_probe_prints_one_digest_and_the_same_one_twice(tmp_path: Path) -> None:
    """Run here (any Linux shell): missing tools and paths are part of the state, never a failure."""
    script = state_probe.probe_script(_settings(tmp_path))
    runs = [subprocess.run(["sh", "-c", script], capture_output=True, text=True, check=True) for _ in "ab"]
    assert re.fullmatch("[0-9a-f]{64}\n", runs[0].stdout), runs[0]
    assert runs[0].stdout == runs[1].stdout


def test_the_probe_covers_what_the_deploy_reads(tmp_path: Path) -> None:
    script = state_probe.probe_script(_settings(tmp_path))
    for covered in (
        "/etc/nginx",
        "/etc/ufw",
        "/opt/ollama",
        "/usr/local/bin/ollama",
        "/usr/share/ollama/.ollama/models/manifests",
        "getent passwd ollama",
        "NeedDaemonReload",
        "ExecMainStartTimestampMonotonic",
        "ps -C nginx -o pid=,lstart=",  # workers older than the config: a reload is due
        "iptables -w -S ufw-user-input",
    ):
        assert covered in script, covered
    assert state_probe.RECORD_PATH not in script  # the record itself is not state


@pytest.mark.parametrize(
    ("output", "desired", "matches"),
    [
        (["recorded d1 s1", "state s1"], "d1", True),
        (["recorded d1 s1", "state s2"], "d1", False),  # the host changed
        (["recorded d1 s1", "state s1"], "d2", False),  # the settings or code changed
        (["recorded ", "state s1"], "d1", False),  # never verified
        (["state s1"], "d1", False),
    ],
)
def test_the_record_matches_only_the_same_desired_and_state(
    output: list[str], desired: str, matches: bool
) -> None:
    assert VerifiedState().process(output).matches(desired) is matches


def test_a_failed_read_means_a_whole_deploy() -> None:
    assert VerifiedState.default() == HostState("", "", "")
    assert not VerifiedState.default().matches("")
