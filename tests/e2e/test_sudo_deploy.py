"""A deploy through a non-root sudo user (the lab's `deployer`), the way most LANs are reached: it works,
and no secret is readable by another local user at any moment, nor left in /tmp afterwards.

A watcher runs on the host as `nobody` during the deploy (tests/e2e/secret_watcher.py). It is first shown
to catch what it looks for: a plain pyinfra `files.put` under sudo stages its file in /tmp/pyinfra-<sha1>
readable by everyone, and the watcher reports it.
"""

from __future__ import annotations

import json
import shutil
import ssl
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from secrets import token_urlsafe

import httpx
import pytest
from verify_fleet import PYINFRA, DeployedFleet, deploy_fleet

from ollama_fleet.lab.hosts import LAB_SUDO_USER
from ollama_fleet.lab.state import LabState

pytestmark = pytest.mark.e2e

WATCHER = Path(__file__).with_name("secret_watcher.py")
REMOTE_WATCHER = "/usr/local/lib/secret_watcher.py"
CONTROL_MARKER = "CONTROL PRIVATE KEY-----"
ROTATED = "rotated"


@pytest.fixture(scope="module")
def fleet(lab: LabState) -> DeployedFleet:
    fleet = deploy_fleet(lab)
    host = fleet.hosts[0]
    fleet.ssh_ok(host, f"cat > {REMOTE_WATCHER} && chmod 644 {REMOTE_WATCHER}", stdin=WATCHER.read_text())
    return fleet


def markers(keys: dict[str, str]) -> list[str]:
    """What a leaked secret would contain: a PEM private key, or a lab API key's `lab-<name>-` prefix (no
    random part of a key goes on the host's command line)."""
    prefixes = [f"lab-{name}-" for name in keys]
    assert all(value.startswith(prefix) for prefix, value in zip(prefixes, keys.values(), strict=True))
    return ["PRIVATE KEY-----", *prefixes]


@contextmanager
def watching(fleet: DeployedFleet, host: str, looking_for: list[str]) -> Iterator[list[str]]:
    """Findings of a watcher run as nobody on `host` for the duration of the block (filled in at its end)."""
    args = " ".join(f"'{m}'" for m in looking_for)
    out = "/run/secret-watcher.out"
    fleet.ssh_ok(
        host,
        f"rm -f {out}; touch {out}; chown nobody {out}; "
        f"nohup setpriv --reuid=nobody --regid=nogroup --clear-groups python3 {REMOTE_WATCHER} {args} "
        f">> {out} 2>&1 < /dev/null & echo $! > /run/secret-watcher.pid",
    )
    for _ in range(100):  # walking the directories takes a moment
        if "watching" in fleet.ssh_ok(host, f"cat {out}"):
            break
        time.sleep(0.1)
    else:
        pytest.fail(f"the watcher did not start: {fleet.ssh_ok(host, f'cat {out}')}")
    findings: list[str] = []
    try:
        yield findings
    finally:
        time.sleep(0.5)  # the last events in flight
        fleet.ssh_ok(host, "kill $(cat /run/secret-watcher.pid)")
        lines = fleet.ssh_ok(host, f"cat {out}").splitlines()
        findings.extend(line for line in lines if not line.startswith("watching"))


def as_sudo_user(fleet: DeployedFleet, deploy_file: str, *extra: str) -> subprocess.CompletedProcess[str]:
    host = fleet.hosts[0]
    return fleet.run(
        [PYINFRA, "-y", fleet.lab.inventory_path, deploy_file, "--limit", host, "--user", LAB_SUDO_USER,
         "--sudo", *extra],
        timeout=900,
    )  # fmt: skip


def test_the_watcher_sees_a_world_readable_staging_file(fleet: DeployedFleet, tmp_path: Path) -> None:
    control = tmp_path / "control_put.py"
    control.write_text(
        "from io import StringIO\nfrom pyinfra.operations import files\n"
        f"files.put(name='control', src=StringIO('{CONTROL_MARKER}'), dest='/root/control.pem', mode='600')\n"
    )
    host = fleet.hosts[0]
    with watching(fleet, host, [CONTROL_MARKER]) as findings:
        done = as_sudo_user(fleet, str(control))
    fleet.ssh_ok(host, "rm -f /root/control.pem")
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert any(line.startswith("/tmp/pyinfra-") for line in findings), findings


@pytest.fixture(scope="module")
def rotated(fleet: DeployedFleet, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A copy of the lab's secrets with one key more, and of its CA without this host's pair (so the deploy
    uploads a new keys file and a new TLS private key)."""
    work = tmp_path_factory.mktemp("rotated")
    secrets = json.loads((fleet.state_dir / "secrets.json").read_text())
    secrets["api_keys"][ROTATED] = f"lab-{ROTATED}-{token_urlsafe(24)}"
    secrets_file = work / "secrets.json"
    secrets_file.touch(mode=0o600)
    secrets_file.write_text(json.dumps(secrets))
    pki = work / "pki"
    shutil.copytree(fleet.state_dir / "pki", pki)
    shutil.rmtree(pki / "hosts" / fleet.hosts[0])
    return {"secrets": secrets_file, "pki": pki}


@pytest.fixture(scope="module")
def sudo_deploy(
    fleet: DeployedFleet, rotated: dict[str, Path]
) -> Iterator[tuple[subprocess.CompletedProcess[str], list[str], dict[str, str]]]:
    keys = json.loads(rotated["secrets"].read_text())["api_keys"]
    data = {
        "auth_secrets_file": str(rotated["secrets"]),
        "auth_key_names": list(keys),
        "tls_ca_dir": str(rotated["pki"]),
    }
    with watching(fleet, fleet.hosts[0], markers(keys)) as findings:
        done = as_sudo_user(
            fleet, "deploys/ollama.py", *(f"--data={k}={json.dumps(v)}" for k, v in data.items())
        )
    yield done, findings, keys
    deploy_fleet(fleet.lab)  # the lab's own keys and certificate back, for the modules after this one


def test_a_sudo_user_deploys_and_the_new_key_and_certificate_serve(
    fleet: DeployedFleet,
    rotated: dict[str, Path],
    sudo_deploy: tuple[subprocess.CompletedProcess[str], list[str], dict[str, str]],
) -> None:
    done, _, keys = sudo_deploy
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-4000:]
    host = fleet.hosts[0]
    context = ssl.create_default_context(cafile=str(fleet.ca_file))
    with httpx.Client(base_url=f"https://{fleet.address(host)}", verify=context, trust_env=False) as api:
        answer = api.get("/v1/models", headers={"Authorization": f"Bearer {keys[ROTATED]}"})
    assert answer.status_code == 200, answer.text
    served = ssl.get_server_certificate((fleet.address(host), 443), ca_certs=str(fleet.ca_file), timeout=10)
    issued = (rotated["pki"] / "hosts" / host / "fullchain.pem").read_text()
    assert served.split("-----END")[0] == issued.split("-----END")[0]  # the leaf: the one just reissued


def test_no_secret_was_readable_by_another_user_during_the_deploy(
    sudo_deploy: tuple[subprocess.CompletedProcess[str], list[str], dict[str, str]],
) -> None:
    _, findings, _ = sudo_deploy
    assert findings == []


def test_nothing_is_left_in_tmp_and_secrets_are_root_only(fleet: DeployedFleet, sudo_deploy: object) -> None:
    host = fleet.hosts[0]
    assert fleet.ssh_ok(host, "ls -A /tmp | grep '^pyinfra-' || true") == ""
    assert fleet.ssh(host, "test -e /run/ollama-fleet-uploads").returncode == 1
    modes = fleet.ssh_ok(
        host, "stat -c '%n %a %U:%G' /etc/nginx/ollama-fleet/api-keys.conf /etc/ollama-fleet/tls/privkey.pem"
    )
    assert modes.split("\n")[:2] == [
        "/etc/nginx/ollama-fleet/api-keys.conf 600 root:root",
        "/etc/ollama-fleet/tls/privkey.pem 600 root:root",
    ]
