"""A deployed lab fleet for the verify and client tests: the lab's inventory plus group data with keys,
the tiny model and a CORS origin, deployed with `pyinfra -y INVENTORY deploys/ollama.py --group-data DIR`.

Every command here is what an operator types; only lab hosts (10.213.0.0/16) and loopback are contacted.
"""

from __future__ import annotations

import json
import secrets
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ollama_fleet.lab import artifacts
from ollama_fleet.lab.paths import repo_root
from ollama_fleet.lab.state import LabState

ORIGIN = "https://app.lab.example"
SITE = "/etc/nginx/sites-available/ollama-fleet.conf"
API_KEYS = "/etc/nginx/ollama-fleet/api-keys.conf"


@dataclass(frozen=True)
class DeployedFleet:
    lab: LabState
    workdir: Path
    keys: dict[str, str]
    model: str

    @property
    def group_data(self) -> Path:
        return self.workdir / "group_data"

    @property
    def ca_file(self) -> Path:
        return self.workdir / "pki" / "ca.pem"

    @property
    def hosts(self) -> list[str]:
        return [host.name for host in self.lab.hosts]

    def address(self, host: str) -> str:
        return self.lab.host(host).ip

    def run(self, argv: list[str], timeout: float = 600) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            argv, cwd=repo_root(), capture_output=True, text=True, timeout=timeout, check=False
        )

    def deploy(self, *extra: str) -> subprocess.CompletedProcess[str]:
        inventory = self.lab.inventory_path
        argv = ["pyinfra", "-y", inventory, "deploys/ollama.py", "--group-data", str(self.group_data)]
        return self.run([*argv, *extra], timeout=900)

    def ollama_fleet(self, command: str, *args: str) -> subprocess.CompletedProcess[str]:
        """`ollama-fleet COMMAND INVENTORY --group-data DIR ARGS...`"""
        argv = [sys.executable, "-m", "ollama_fleet.cli", command, self.lab.inventory_path]
        return self.run([*argv, "--group-data", str(self.group_data), *args])

    def verify(self, *args: str) -> tuple[int, dict[str, Any]]:
        done = self.ollama_fleet("verify", "--json", *args)
        assert done.returncode in (0, 1), done.stderr
        return done.returncode, json.loads(done.stdout)

    def ssh(self, host: str, command: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            self.lab.ssh_command(host, command), capture_output=True, text=True, timeout=timeout, check=False
        )

    def ssh_ok(self, host: str, command: str) -> str:
        done = self.ssh(host, command)
        assert done.returncode == 0, f"{host}: {command}: {done.stdout}{done.stderr}"
        return done.stdout


def statuses(report: dict[str, Any]) -> dict[str, dict[str, str]]:
    """host -> check -> status, from `verify --json`."""
    return {h["host"]: {c["check"]: c["status"] for c in h["checks"]} for h in report["hosts"]}


def reasons(report: dict[str, Any], host: str) -> dict[str, str]:
    entry = next(h for h in report["hosts"] if h["host"] == host)
    return {c["check"]: c["reason"] for c in entry["checks"]}


def deploy_fleet(lab: LabState, workdir: Path) -> DeployedFleet:
    """Write the group data and secrets, deploy the lab, and fail loudly if the deploy does not succeed."""
    keys = {name: f"{name}-{secrets.token_hex(16)}" for name in ("ci", "ops")}
    (workdir / "group_data").mkdir(parents=True, exist_ok=True)
    secrets_file = workdir / "secrets.json"
    secrets_file.write_text(json.dumps({"api_keys": keys}))
    secrets_file.chmod(0o600)
    settings = {
        "auth_key_names": list(keys),
        "auth_secrets_file": str(secrets_file),
        "models_gguf": {"tiny": str(artifacts.ensure_tiny_model())},
        "ollama_origins": [ORIGIN],
        "tls_ca_dir": str(workdir / "pki"),
    }
    # `all` of an extra --group-data directory overrides ./group_data/all.py key by key.
    (workdir / "group_data" / "all.py").write_text(
        "".join(f"{key} = {value!r}\n" for key, value in settings.items())
    )
    fleet = DeployedFleet(lab=lab, workdir=workdir, keys=keys, model="tiny:latest")
    done = fleet.deploy()
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-4000:]
    return fleet
