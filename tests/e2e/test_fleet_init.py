"""A newcomer's path on the lab's hosts: `ollama-fleet init` in a directory outside the checkout, then the
deploy and verify it prints, with no file edited by hand; then `keys rotate` and a deploy (old key 401,
new key 200). The hosts' TLS material is removed first, as on hosts this fleet has never had (the lab's CA
is not this fleet's); later modules deploy the lab's own settings again."""

from __future__ import annotations

import json
import ssl
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from ollama_fleet.lab import artifacts
from ollama_fleet.lab.state import LabState

pytestmark = pytest.mark.e2e

BIN = Path(sys.executable).parent


def run(argv: list[str], cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        argv, cwd=cwd, capture_output=True, text=True, timeout=900, stdin=subprocess.DEVNULL, check=False
    )


def forget_tls(lab: LabState) -> None:
    """The hosts' certificates and CA gone, as on hosts no fleet CA has signed for (a deploy stops rather
    than replace another CA's certificates)."""
    for host in lab.hosts:
        subprocess.run(lab.ssh_command(host.name, "rm -rf /etc/ollama-fleet/tls"), check=True)


@pytest.fixture(scope="module")
def fleet_dir(lab: LabState, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    home = tmp_path_factory.mktemp("newcomer")
    home.chmod(0o755)
    forget_tls(lab)
    argv = [
        str(BIN / "ollama-fleet"), "init", "myfleet",
        "--host", ",".join(f"{host.name}={host.ip}" for host in lab.hosts),
        "--client-subnet", lab.plan.hosts_subnet, "--admin-subnet", lab.plan.hosts_subnet,
        "--ssh-user", "root", "--ssh-key", lab.key_path,
        "--set", "ssh_known_hosts_file=/dev/null", "--set", "ssh_strict_host_key_checking=no",
        # What differs on the lab: the release page and a model, as a fleet would name its own.
        "--set", f"ollama_release_url={lab.mirror_url}/ollama",
        "--set", "models_gguf=" + json.dumps({"tiny": str(artifacts.ensure_tiny_model())}),
    ]  # fmt: skip
    done = run(argv, home)
    assert done.returncode == 0, done.stderr
    yield home / "myfleet"
    forget_tls(lab)  # the lab's own deploy comes next, with the lab's CA


def https(lab: LabState, fleet: Path, key: str) -> int:
    trust = ssl.create_default_context(cafile=str(fleet / ".fleet/pki/ca.pem"))
    with httpx.Client(verify=trust, trust_env=False, timeout=60) as client:
        reply = client.get(f"https://{lab.hosts[1].ip}/v1/models", headers={"Authorization": f"Bearer {key}"})
    return reply.status_code


def test_init_then_deploy_then_verify_as_printed(lab: LabState, fleet_dir: Path) -> None:
    deployed = run([str(BIN / "pyinfra"), "-y", "inventory.py", "deploy.py"], fleet_dir)
    assert deployed.returncode == 0, deployed.stdout[-3000:] + deployed.stderr[-3000:]
    verified = run([str(BIN / "ollama-fleet"), "verify", "inventory.py", "--json"], fleet_dir)
    assert verified.returncode == 0, verified.stdout[-4000:] + verified.stderr[-2000:]
    report = json.loads(verified.stdout)
    assert sorted(h["host"] for h in report["hosts"]) == sorted(h.name for h in lab.hosts)


def test_a_rotated_key_is_refused_and_its_new_value_served_after_a_deploy(
    lab: LabState, fleet_dir: Path
) -> None:
    old = json.loads((fleet_dir / ".fleet/secrets.json").read_text())["api_keys"]["apps"]
    assert https(lab, fleet_dir, old) == 200
    rotated = run([str(BIN / "ollama-fleet"), "keys", "rotate", "apps", "--print-value"], fleet_dir)
    assert rotated.returncode == 0, rotated.stderr
    new = rotated.stdout.strip()
    deployed = run([str(BIN / "pyinfra"), "-y", "inventory.py", "deploy.py"], fleet_dir)
    assert deployed.returncode == 0, deployed.stderr[-3000:]
    assert https(lab, fleet_dir, old) == 401
    assert https(lab, fleet_dir, new) == 200
