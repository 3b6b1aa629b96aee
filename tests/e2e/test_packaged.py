"""ollama-fleet as a user installs it: `pip install` of the project (no extras) into an empty virtual
environment, used from a directory outside the checkout with a two-line deploy file of their own.

The packaged deploy must find its templates inside the package: run against the lab fleet deployed from the
checkout, it changes nothing (every file it renders is byte for byte what is there).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from verify_fleet import DeployedFleet, deploy_fleet

from ollama_fleet.lab.paths import repo_root
from ollama_fleet.lab.state import LabState

pytestmark = pytest.mark.e2e

USER_DEPLOY = "from ollama_fleet.deploys import deploy_site\n\ndeploy_site()\n"


@pytest.fixture(scope="module")
def fleet(lab: LabState) -> DeployedFleet:
    return deploy_fleet(lab)


@pytest.fixture(scope="module")
def venv(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An empty virtual environment with the project installed from its source tree, no extras."""
    where = tmp_path_factory.mktemp("user") / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(where)], check=True)
    installed = subprocess.run(
        [str(where / "bin/pip"), "install", "-q", str(repo_root())],
        capture_output=True, text=True, env=_outside_env(), timeout=600, check=False,
    )  # fmt: skip
    assert installed.returncode == 0, installed.stderr[-3000:]
    return where


def _outside_env() -> dict[str, str]:
    """The user's shell: nothing pointing into the checkout."""
    return {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}


def _run(venv: Path, argv: list[str], cwd: Path, timeout: float = 900) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(venv / "bin" / argv[0]), *argv[1:]],
        cwd=cwd, env=_outside_env(), capture_output=True, text=True, timeout=timeout, check=False,
    )  # fmt: skip


def test_the_package_brings_its_templates_and_no_lab_dependencies(venv: Path, tmp_path: Path) -> None:
    where = _run(
        venv, ["python", "-c", "import ollama_fleet.render as r; print(r.builtin_templates_dir())"], tmp_path
    )
    templates = Path(where.stdout.strip())
    assert templates.is_relative_to(venv) and (templates / "nginx-site.conf.j2").is_file(), where
    assert (templates / "nginx-model-allow-list.js").is_file()
    assert _run(venv, ["python", "-c", "import numpy"], tmp_path).returncode != 0  # the lab extra is not in
    assert _run(venv, ["ollama-fleet", "verify", "--help"], tmp_path).returncode == 0
    explained = _run(venv, ["ollama-fleet", "settings", "explain", "ollama_version"], tmp_path)
    assert explained.stdout.startswith('ollama_version = "0.24.0"\n'), explained  # the packaged defaults
    lab = _run(venv, ["ollama-fleet", "lab", "build"], tmp_path)
    assert lab.returncode != 0
    assert "pip install 'ollama-fleet[lab]'" in lab.stderr + lab.stdout


def test_a_users_own_deploy_outside_the_checkout_changes_nothing_on_a_deployed_fleet(
    fleet: DeployedFleet, venv: Path, tmp_path: Path
) -> None:
    infra = tmp_path / "their-infra"
    infra.mkdir()
    (infra / "deploy.py").write_text(USER_DEPLOY)
    shutil.copy(fleet.lab.inventory_path, infra / "fleet.py")
    host = fleet.hosts[0]
    done = _run(venv, ["pyinfra", "-y", "--json", "fleet.py", "deploy.py", "--limit", host], infra)
    assert done.returncode == 0, done.stderr[-4000:]
    operations = json.loads(done.stdout)["results"]["operations"]
    assert [op["name"] for op in operations if op["success"]] == []
    assert "quick client check (0 operation(s) changed this host)" in done.stderr
    checked = _run(venv, ["ollama-fleet", "verify", "fleet.py", "--quick", "--hosts", host], infra)
    assert checked.returncode == 0, checked.stdout[-3000:] + checked.stderr[-3000:]
