"""Data flows one way: settings -> rendering -> operations -> deploys; verify reads hosts from outside."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

pytestmark = pytest.mark.unit

PACKAGE = Path(__file__).resolve().parents[2] / "src" / "ollama_fleet"

# module (or package) -> the project packages it must never import
FORBIDDEN = {
    "settings.py": ("render", "operations", "deploys", "verify", "rollout"),
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
