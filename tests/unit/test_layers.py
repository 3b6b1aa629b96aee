"""Data flows one way: settings -> rendering -> operations -> deploys; verify reads hosts from outside."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

pytestmark = pytest.mark.unit

PACKAGE = Path(__file__).resolve().parents[2] / "src" / "ollama_fleet"

# module (or package) -> the project packages it must never import
FORBIDDEN = {
    "settings": ("render", "operations", "deploys", "verify", "rollout"),
    "render.py": ("operations", "deploys", "verify", "rollout"),
    "health.py": ("operations", "deploys", "verify", "rollout"),
    "operations": ("deploys", "verify", "rollout"),
    "verify": ("deploys", "operations", "rollout"),
    "deploys": ("rollout",),
}


def imported(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
        elif isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
    return {n.split(".")[1] for n in names if n.startswith("ollama_fleet.") and n.count(".") >= 1}


@pytest.mark.parametrize("part", sorted(FORBIDDEN))
def test_no_import_goes_against_the_flow(part: str) -> None:
    target = PACKAGE / part
    files = [target] if target.is_file() else sorted(target.rglob("*.py"))
    assert files
    for path in files:
        wrong = imported(path) & {p.removesuffix(".py") for p in FORBIDDEN[part]}
        assert not wrong, f"{path.relative_to(PACKAGE)} imports ollama_fleet.{', '.join(sorted(wrong))}"


def test_the_lab_commands_name_the_version_the_lab_builds() -> None:
    from ollama_fleet.lab import artifacts, commands

    assert commands.LAB_OLLAMA_VERSION == artifacts.DEFAULT_VERSION


def test_verify_needs_no_lab_dependency(tmp_path: Path) -> None:
    """Without numpy and gguf (the `lab` extra) the CLI starts and verify works; lab names the extra."""
    import subprocess
    import sys

    blocker = tmp_path / "sitecustomize.py"
    blocker.write_text(
        "import sys\n"
        "class Block:\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name.split('.')[0] in ('numpy', 'gguf'):\n"
        "            raise ModuleNotFoundError(f'No module named {name!r}', name=name)\n"
        "sys.meta_path.insert(0, Block())\n"
    )
    env = {"PYTHONPATH": str(tmp_path), "PATH": "/usr/bin:/bin"}

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        argv = [sys.executable, "-m", "ollama_fleet.cli", *args]
        return subprocess.run(argv, env=env, capture_output=True, text=True, check=False, cwd=tmp_path)

    assert cli("verify", "--help").returncode == 0
    assert cli("rollout", "--help").returncode == 0
    done = cli("lab", "status")
    assert done.returncode == 1
    assert re.search(
        r"the lab needs the 'lab' extra \((numpy|gguf) is not installed\): pip install", done.stderr
    )
