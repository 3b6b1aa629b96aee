"""Which hosts a host's fast re-run digest depends on, found by planning the real site (`pyinfra --dry`,
@fake hosts): only the hosts its deploy reads. A host added, removed or unreachable elsewhere in the
inventory must leave a plain host's fast re-run alone (before: every host of 64 took a whole deploy when one
host was added); a gateway plans over every host, so any member changes its digest."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from test_plan import KEY, REPO, host_data, write_inventory

pytestmark = pytest.mark.unit

DIGESTS_PYINFRA = """
import atexit, json, os, sys
import ollama_fleet.deploys.fast_rerun as fast_rerun
from pyinfra.context import host

found = {}
desired_state = fast_rerun.desired_state

def recorded(*args, **kwargs):
    found[host.name.removeprefix("@fake/")] = digest = desired_state(*args, **kwargs)
    return digest

fast_rerun.desired_state = recorded
atexit.register(lambda: open(os.environ["DIGESTS_FILE"], "w").write(json.dumps(found)))

from pyinfra_cli.main import main
sys.argv[0] = "pyinfra"
sys.exit(main())
"""


def planned_digests(tmp_path: Path, hosts: dict[str, dict[str, Any]]) -> dict[str, str]:
    """Each host's desired digest as the planning of `hosts` (name: extra data) computes it."""
    # One CA directory and fixed addresses for every planning: only the inventory differs.
    inventory = write_inventory(
        tmp_path, {name: host_data(tmp_path, int(name[1:]), **extra) for name, extra in hosts.items()}
    )
    digests_file = tmp_path / "digests.json"
    env = {**os.environ, "OLLAMA_FLEET_API_KEY_TEAM": KEY, "PYINFRA_PROGRESS": "off"}
    env["DIGESTS_FILE"] = str(digests_file)
    argv = [sys.executable, "-c", DIGESTS_PYINFRA, "--dry", str(inventory), "deploys/ollama.py"]
    result = subprocess.run(argv, cwd=REPO, env=env, capture_output=True, text=True, timeout=300, check=False)
    assert result.returncode == 0, result.stderr[-4000:]
    digests: dict[str, str] = json.loads(digests_file.read_text())
    assert sorted(digests) == sorted(hosts), digests
    return digests


GATEWAY = {"gateway_enabled": True}


def test_a_host_added_or_removed_elsewhere_changes_only_the_gateways_digest(tmp_path: Path) -> None:
    base = planned_digests(tmp_path, {"h1": GATEWAY, "h2": {}, "h3": {}, "h4": {}})
    added = planned_digests(tmp_path, {"h1": GATEWAY, "h2": {}, "h3": {}, "h4": {}, "h5": {}})
    removed = planned_digests(tmp_path, {"h1": GATEWAY, "h2": {}, "h3": {}})
    for plain in ("h2", "h3"):
        assert base[plain] == added[plain] == removed[plain], plain
    assert base["h4"] == added["h4"]
    # The gateway balances over every host: a member more or less is a change of its site.
    assert len({base["h1"], added["h1"], removed["h1"]}) == 3


def test_a_members_setting_changes_its_own_and_the_gateways_digest_only(tmp_path: Path) -> None:
    base = planned_digests(tmp_path, {"h1": GATEWAY, "h2": {}, "h3": {}})
    changed = planned_digests(tmp_path, {"h1": GATEWAY, "h2": {}, "h3": {"ollama_keep_versions": 3}})
    assert base["h2"] == changed["h2"]
    assert base["h3"] != changed["h3"]
    assert base["h1"] != changed["h1"]
