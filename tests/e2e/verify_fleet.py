"""A deployed lab fleet for the verify and client tests: the lab's inventory as `lab up` wrote it (keys,
CA, the tiny model and a CORS origin are the lab's own settings), deployed with
`pyinfra -y INVENTORY deploys/ollama.py`.

Every command here is what an operator types; only lab hosts (10.213.0.0/16) and loopback are contacted.
"""

from __future__ import annotations

import json
import ssl
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from ollama_fleet.lab.inventory import LAB_ORIGIN
from ollama_fleet.lab.paths import repo_root
from ollama_fleet.lab.state import LabState

ORIGIN = LAB_ORIGIN
SITE = "/etc/nginx/sites-available/ollama-fleet.conf"
API_KEYS = "/etc/nginx/ollama-fleet/api-keys.conf"
PYINFRA = str(Path(sys.executable).parent / "pyinfra")  # this interpreter's, venv or not


@dataclass(frozen=True)
class DeployedFleet:
    lab: LabState
    keys: dict[str, str] = field(repr=False)  # never in a failed test's output
    model: str

    @property
    def state_dir(self) -> Path:
        return Path(self.lab.key_path).parent

    @property
    def ca_file(self) -> Path:
        return self.state_dir / "pki" / "ca.pem"

    @property
    def hosts(self) -> list[str]:
        return [host.name for host in self.lab.hosts]

    def address(self, host: str) -> str:
        return self.lab.host(host).ip

    def address6(self, host: str) -> str:
        """The host's address in the lab's IPv6 client subnet."""
        index = [h.name for h in self.lab.hosts].index(host) + 1
        return self.lab.plan.host(index).ip6

    def run(self, argv: list[str], timeout: float = 600) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            argv, cwd=repo_root(), capture_output=True, text=True, timeout=timeout, check=False
        )

    def deploy(self, *extra: str) -> subprocess.CompletedProcess[str]:
        inventory = self.lab.inventory_path
        return self.run(
            [str(Path(sys.executable).parent / "pyinfra"), "-y", inventory, "deploys/ollama.py", *extra],
            timeout=900,
        )

    def ollama_fleet(self, command: str, *args: str) -> subprocess.CompletedProcess[str]:
        """`ollama-fleet COMMAND INVENTORY ARGS...`"""
        return self.run([sys.executable, "-m", "ollama_fleet.cli", command, self.lab.inventory_path, *args])

    def verify(self, *args: str) -> tuple[int, dict[str, Any]]:
        done = self.ollama_fleet("verify", "--json", *args)
        assert done.returncode in (0, 1), done.stderr
        return done.returncode, json.loads(done.stdout)

    def chat(self, host: str, model: str, key: str = "ci") -> httpx.Response:
        """One short chat completion through the host's nginx, trusting the fleet CA only."""
        trust = ssl.create_default_context(cafile=str(self.ca_file))
        with httpx.Client(verify=trust, trust_env=False, timeout=120) as client:
            return client.post(
                f"https://{self.address(host)}/v1/chat/completions",
                headers={"Authorization": f"Bearer {self.keys[key]}"},
                json={"model": model, "messages": [{"role": "user", "content": "Hello"}], "max_tokens": 8},
            )

    def ssh(
        self, host: str, command: str, timeout: float = 120, stdin: str | None = None
    ) -> subprocess.CompletedProcess[str]:
        argv = self.lab.ssh_command(host, command)
        return subprocess.run(argv, input=stdin, capture_output=True, text=True, timeout=timeout, check=False)

    def ssh_ok(self, host: str, command: str, stdin: str | None = None) -> str:
        done = self.ssh(host, command, stdin=stdin)
        assert done.returncode == 0, f"{host}: {command}: {done.stdout}{done.stderr}"
        return done.stdout


def statuses(report: dict[str, Any]) -> dict[str, dict[str, str]]:
    """host -> check -> status, from `verify --json`."""
    return {h["host"]: {c["check"]: c["status"] for c in h["checks"]} for h in report["hosts"]}


def reasons(report: dict[str, Any], host: str) -> dict[str, str]:
    entry = next(h for h in report["hosts"] if h["host"] == host)
    return {c["check"]: c["reason"] for c in entry["checks"]}


def deploy_fleet(lab: LabState) -> DeployedFleet:
    """Deploy the lab as its inventory describes it, and fail loudly if the deploy does not succeed."""
    secrets_file = Path(lab.key_path).parent / "secrets.json"
    keys: dict[str, str] = json.loads(secrets_file.read_text())["api_keys"]
    fleet = DeployedFleet(lab=lab, keys=keys, model="tiny:latest")
    done = fleet.deploy()
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-4000:]
    return fleet
