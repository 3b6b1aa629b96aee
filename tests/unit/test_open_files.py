"""The open-files limit: raised before pyinfra connects (config.py), a clear message when it cannot be."""

from __future__ import annotations

import os
import resource
import subprocess
import sys
from pathlib import Path

import pytest
from test_plan import KEY, PYINFRA, REPO, fleet

pytestmark = pytest.mark.unit


def soft_limit(limit: int, hard: bool = False) -> object:
    """A preexec_fn setting the child's open-files limit (soft only, or soft and hard)."""

    def apply() -> None:
        _, current_hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        resource.setrlimit(resource.RLIMIT_NOFILE, (limit, limit if hard else current_hard))

    return apply


def plan_under_limit(tmp_path: Path, limit: int, hard: bool = False) -> subprocess.CompletedProcess[str]:
    inventory = fleet(tmp_path, 4)
    env = {**os.environ, "OLLAMA_FLEET_API_KEY_TEAM": KEY, "PYINFRA_PROGRESS": "off"}
    return subprocess.run(
        [PYINFRA, "--dry", str(inventory), "deploys/ollama.py"],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
        preexec_fn=soft_limit(limit, hard),  # type: ignore[arg-type]
    )


def test_a_soft_limit_too_low_for_pyinfra_is_raised_before_it_connects(tmp_path: Path) -> None:
    # pyinfra alone caps hosts at once at (soft - 10) / 3 when imported: 0 here, and it would wait forever.
    done = plan_under_limit(tmp_path, 11)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    assert "Traceback" not in done.stdout + done.stderr


def test_a_hard_limit_too_low_stops_the_run_with_the_fix_and_no_traceback(tmp_path: Path) -> None:
    done = plan_under_limit(tmp_path, 11, hard=True)
    output = done.stdout + done.stderr
    assert done.returncode != 0
    assert "the open-files limit is 11 (hard 11)" in output and "ulimit -n" in output, output[-2000:]
    assert "Traceback" not in output and "internal exception" not in output


def test_the_cli_raises_its_soft_limit_to_the_hard_one() -> None:
    code = (
        "import resource, ollama_fleet.cli as c, sys\n"
        "c.build_parser = lambda: (_ for _ in ()).throw(SystemExit(0))\n"
        "try:\n    c.main([])\nexcept SystemExit:\n    pass\n"
        "print(*resource.getrlimit(resource.RLIMIT_NOFILE))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
        preexec_fn=soft_limit(64),  # type: ignore[arg-type]
    )
    soft, hard = done.stdout.split()
    assert soft == hard and int(soft) > 64
