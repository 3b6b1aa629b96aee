"""Planning work grows with the fleet, not with its square: a guard on counts, not times.

The whole site is planned (`pyinfra --dry`, pyinfra's @fake connector: no host, no traffic) for 4 and for
16 hosts (one a gateway), in a pyinfra process that counts how often a host's settings are validated, how
often they are serialised for the fast re-run's digest, and how often a host's whole data is read. Each
count must grow in proportion to the hosts: a per-host step that reads every host's settings would make
the 16-host count per host four times the 4-host one.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from test_plan import KEY, REPO, fleet

pytestmark = pytest.mark.unit

COUNTING_PYINFRA = """
import atexit, collections, json, os, sys

counts = collections.Counter()

def counted(owner, name, label):
    original = getattr(owner, name)
    def wrapper(*args, **kwargs):
        counts[label] += 1
        return original(*args, **kwargs)
    setattr(owner, name, wrapper)

# Wrapped before the deploy code imports them by name.
import ollama_fleet.settings, ollama_fleet.state_probe
from pyinfra.api.host import HostData
counted(ollama_fleet.settings, "settings_for_host", "settings validated")
counted(ollama_fleet.state_probe, "settings_text", "settings serialised")
counted(HostData, "dict", "host data read")

# A real run's release check asks the network (a dry run's does not): that wait lets the other hosts'
# greenlets run. Kept here as a yield before the real check, so that a second validation of the fleet
# started meanwhile is counted (before the fix: every host validated the whole fleet, N x N).
import gevent, ollama_fleet.deploys.fleet
release_problems = ollama_fleet.deploys.fleet.release_problems
def release_problems_after_a_wait(settings):
    gevent.sleep(0.05)
    return release_problems(settings)
ollama_fleet.deploys.fleet.release_problems = release_problems_after_a_wait
atexit.register(lambda: open(os.environ["COUNTS_FILE"], "w").write(json.dumps(counts)))

from pyinfra_cli.main import main
sys.argv[0] = "pyinfra"
sys.exit(main())
"""


def planning_counts(tmp_path: Path, hosts: int) -> dict[str, int]:
    workdir = tmp_path / f"fleet{hosts}"
    workdir.mkdir()
    # h1 also serves the fleet's gateway, planned over every host.
    inventory = fleet(workdir, hosts, h1={"gateway_enabled": True})
    counts_file = workdir / "counts.json"
    env = {
        **os.environ,
        "OLLAMA_FLEET_API_KEY_TEAM": KEY,
        "PYINFRA_PROGRESS": "off",
        "COUNTS_FILE": str(counts_file),
    }
    argv = [sys.executable, "-c", COUNTING_PYINFRA, "--dry", str(inventory), "deploys/ollama.py"]
    result = subprocess.run(argv, cwd=REPO, env=env, capture_output=True, text=True, timeout=300, check=False)
    assert result.returncode == 0, result.stderr[-4000:]
    counts: dict[str, int] = json.loads(counts_file.read_text())
    return counts


def test_planning_reads_each_hosts_settings_a_fixed_number_of_times_whatever_the_fleet_size(
    tmp_path: Path,
) -> None:
    small, large = planning_counts(tmp_path, 4), planning_counts(tmp_path, 16)
    for label in ("settings validated", "settings serialised", "host data read"):
        assert small.get(label, 0) > 0, f"{label}: never counted; the counter no longer wraps the code"
        per_host_small, per_host_large = small[label] / 4, large[label] / 16
        assert per_host_large <= per_host_small, (
            f"{label}: {per_host_small:g} per host at 4 hosts, {per_host_large:g} at 16: some per-host step "
            "reads the whole fleet"
        )
    # Validation happens once per host per run, whatever the number of hosts.
    assert small["settings validated"] == 4 and large["settings validated"] == 16
