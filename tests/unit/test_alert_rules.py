"""The shipped alert rules, checked and unit-tested by Prometheus's own promtool (Debian's prometheus
package; bootstrap.sh installs it)."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from ollama_fleet.render import builtin_templates_dir

pytestmark = pytest.mark.unit

RULES = builtin_templates_dir() / "monitoring" / "ollama-fleet-rules.yml"
TESTS = Path(__file__).parent / "promtool" / "ollama-fleet-rules_test.yml"


def _promtool() -> str:
    found = shutil.which("promtool")
    if not found:
        pytest.fail("promtool is not installed: on Debian 12 apt-get install prometheus, on 13 promtool")
    return found


def _run(*argv: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([_promtool(), *argv], capture_output=True, text=True, timeout=120, cwd=cwd)


def test_the_rules_are_valid() -> None:
    checked = _run("check", "rules", str(RULES))
    assert checked.returncode == 0, checked.stdout + checked.stderr


def test_each_alert_fires_when_it_should_and_not_otherwise(tmp_path: Path) -> None:
    # promtool reads rule_files relative to the test file: a copy of the tests names the shipped rules.
    tests = tmp_path / "rules_test.yml"
    tests.write_text(f"rule_files:\n  - {RULES}\n" + TESTS.read_text())
    tested = _run("test", "rules", str(tests))
    assert tested.returncode == 0, tested.stdout + tested.stderr
