"""The deploy on the lab: from bare hosts to a working fleet, idempotent, and safe when things go wrong.

The tests run in file order on the session's lab: the first deploy, the re-run, the testinfra checks, then
faults (bad settings, a tampered release, a broken nginx template, a removed subnet), each of which must
leave the fleet serving; the last test proves the fleet is back to "no change".
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import ssl
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from ollama_fleet.lab.artifacts import ensure_ollama_release
from ollama_fleet.lab.state import LabState

pytestmark = pytest.mark.e2e

REPO = Path(__file__).resolve().parents[2]
PYINFRA = str(Path(sys.executable).parent / "pyinfra")


@dataclass
class Run:
    returncode: int
    stdout: str
    stderr: str
    seconds: float

    @property
    def results(self) -> dict[str, Any]:
        results: dict[str, Any] = json.loads(self.stdout)["results"]
        return results

    def changed(self) -> dict[str, list[str]]:
        """Operation name -> hosts it changed (every operation: the checks and the lock report none)."""
        return {op["name"]: op["success"] for op in self.results["operations"] if op["success"]}


@dataclass
class Fleet:
    """The lab as its inventory describes it: keys, CA and models are the lab's own settings."""

    lab: LabState
    work: Path

    @property
    def state_dir(self) -> Path:
        return Path(self.lab.key_path).parent

    @property
    def key(self) -> str:
        keys: dict[str, str] = json.loads((self.state_dir / "secrets.json").read_text())["api_keys"]
        return keys["ci"]

    def deploy(self, *args: str, group_data: tuple[Path, ...] = ()) -> Run:
        extra = [arg for d in group_data for arg in ("--group-data", str(d))]
        env = {**os.environ, "PYINFRA_PROGRESS": "off"}
        started = time.monotonic()
        result = subprocess.run(
            [PYINFRA, "-y", *extra, *args, self.lab.inventory_path, "deploys/ollama.py"],
            cwd=REPO,
            env=env,
            capture_output=True,
            text=True,
            timeout=1800,
            check=False,
        )
        return Run(result.returncode, result.stdout, result.stderr, time.monotonic() - started)

    def ssh(self, host: str, command: str) -> str:
        result = subprocess.run(
            self.lab.ssh_command(host, command), capture_output=True, text=True, timeout=60, check=True
        )
        return result.stdout

    def https(self, host: str, path: str, key: str | None = "") -> httpx.Response:
        """GET with the fleet's key (key="", the default), another key, or none (key=None)."""
        key = self.key if key == "" else key
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        ip = self.lab.host(host).ip
        trust = ssl.create_default_context(cafile=str(self.state_dir / "pki" / "ca.pem"))
        with httpx.Client(verify=trust, timeout=30) as client:
            return client.get(f"https://{ip}{path}", headers=headers)

    @property
    def names(self) -> list[str]:
        return [h.name for h in self.lab.hosts]


def fingerprint(fleet: Fleet, host: str) -> str:
    """What a deploy would change on a host: our files, the current release, the firewall rules."""
    return fleet.ssh(
        host,
        "sha256sum /etc/systemd/system/ollama.service /etc/systemd/system/ollama.service.d/override.conf "
        "/etc/nginx/sites-available/ollama-fleet.conf /etc/nginx/ollama-fleet/api-keys.conf "
        "/etc/ollama-fleet/tls/fullchain.pem /etc/ufw/user.rules 2>&1; "
        "readlink /opt/ollama/current; ls /opt/ollama",
    )


@pytest.fixture(scope="module")
def fleet(lab: LabState, tmp_path_factory: pytest.TempPathFactory) -> Fleet:
    return Fleet(lab, tmp_path_factory.mktemp("fleet"))


@pytest.fixture(scope="module")
def first(fleet: Fleet) -> Run:
    for name in fleet.names:
        assert "no-ollama" in fleet.ssh(name, "test -e /opt/ollama && echo installed || echo no-ollama")
    run = fleet.deploy("--json")
    print(f"\nfirst deploy of {len(fleet.names)} bare hosts: {run.seconds:.1f} s")
    return run


@pytest.fixture(scope="module")
def second(fleet: Fleet, first: Run) -> Run:
    # Every operation asked again (not the fast re-run): each must find nothing to do.
    run = fleet.deploy("--json", "--data", "deploy_fast_rerun=false")
    print(f"\nsecond deploy (no change, whole): {run.seconds:.1f} s")
    return run


def test_first_deploy_from_bare_hosts_succeeds(fleet: Fleet, first: Run) -> None:
    assert first.returncode == 0, first.stderr[-4000:]
    assert first.results["failed_hosts"] == []
    changed = first.changed()
    for op in (
        "Install Ollama | Download, verify and unpack Ollama 0.24.0",
        "Ollama service | Restart ollama after a change",
        "nginx proxy | Install the ollama-fleet site after nginx -t on a staging copy",
        "ufw firewall | Enable ufw",
        "Ollama models | Create model vehicle-assistant:latest from its Modelfile",
    ):
        assert sorted(changed[op]) == sorted(fleet.names), op


def test_second_deploy_changes_nothing_on_any_host(second: Run) -> None:
    assert second.returncode == 0, second.stderr[-4000:]
    assert second.changed() == {}
    assert second.results["totals"]["error"] == 0


def test_plain_http_is_closed_from_the_client_subnet(fleet: Fleet, second: Run) -> None:
    """No listener and no ufw rule on port 80: a client set to http:// fails before it sends a key."""
    for name in fleet.names:
        ip = fleet.lab.host(name).ip
        with pytest.raises((httpx.ConnectError, httpx.ConnectTimeout)):
            httpx.get(f"http://{ip}/v1/models", timeout=3, headers={"Authorization": "Bearer not-sent"})
        assert fleet.ssh(name, "ss -Hltn 'sport = :80'").strip() == ""


def test_api_key_never_appears_in_deploy_output(fleet: Fleet, first: Run, second: Run) -> None:
    for run in (first, second):
        assert fleet.key not in run.stdout + run.stderr
        assert "PRIVATE KEY" not in run.stdout + run.stderr


def test_hosts_pass_the_testinfra_checks(fleet: Fleet, second: Run) -> None:
    env = {
        **os.environ,
        "OLLAMA_FLEET_INVENTORY": fleet.lab.inventory_path,
    }
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests/infra",
         f"--ssh-config={fleet.lab.ssh_config_path}"],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout[-6000:]
    assert f"{11 * len(fleet.names)} passed" in result.stdout


def test_bad_settings_on_one_host_change_no_host(fleet: Fleet, second: Run, tmp_path: Path) -> None:
    faulty = tmp_path / "group_data"
    faulty.mkdir()
    # a valid change for every host, and a removed variable for the canary only
    (faulty / "all.py").write_text('ollama_env = {"OLLAMA_KEEP_ALIVE": "42m"}\n')
    (faulty / "lab_canary.py").write_text('ollama_env = {"OLLAMA_MAX_VRAM": "8000000000"}\n')
    before = {name: fingerprint(fleet, name) for name in fleet.names}

    run = fleet.deploy(group_data=(faulty,))

    assert run.returncode != 0
    canary = fleet.names[0]
    assert f"invalid settings for host '{canary}'" in run.stderr
    assert "ollama_env" in run.stderr and "OLLAMA_MAX_VRAM" in run.stderr
    assert "nothing was changed on any host" in run.stderr
    assert "Beginning operation run" not in run.stderr
    assert {name: fingerprint(fleet, name) for name in fleet.names} == before
    for name in fleet.names[1:]:
        assert "42m" not in fleet.ssh(name, "cat /etc/systemd/system/ollama.service.d/override.conf")


def test_checksum_mismatch_leaves_the_installed_version_serving(
    fleet: Fleet, second: Run, tmp_path: Path
) -> None:
    release = tmp_path / "release"
    release.mkdir()
    shutil.copy(ensure_ollama_release() / "ollama-linux-amd64.tar.zst", release)
    sums = (ensure_ollama_release() / "sha256sum.txt").read_text().splitlines()
    tampered = [
        "0" * 64 + line[64:] if line.endswith("ollama-linux-amd64.tar.zst") else line for line in sums
    ]
    assert tampered != sums
    (release / "sha256sum.txt").write_text("\n".join(tampered) + "\n")
    target = fleet.names[1]

    run = fleet.deploy(
        "--limit", target,
        "--data", "ollama_source=controller",
        "--data", f"ollama_controller_dir={release}",
        "--data", "ollama_version=0.24.1",
    )  # fmt: skip

    assert run.returncode != 0
    assert "checksum mismatch for ollama-linux-amd64.tar.zst" in run.stdout + run.stderr
    assert fleet.ssh(target, "readlink /opt/ollama/current").strip() == "0.24.0"
    assert fleet.ssh(target, "ls /opt/ollama").split() == ["0.24.0", "current"]
    assert fleet.ssh(target, "ls -A /var/lib/ollama-fleet/staging").strip() == ""
    assert fleet.https(target, "/api/version").json() == {"version": "0.24.0"}


def test_a_tampered_release_with_a_recomputed_sha256sum_txt_is_refused_by_the_pin(
    fleet: Fleet, second: Run, tmp_path: Path
) -> None:
    genuine_dir = ensure_ollama_release()
    genuine = hashlib.sha256((genuine_dir / "ollama-linux-amd64.tar.zst").read_bytes()).hexdigest()
    release = tmp_path / "release"
    release.mkdir()
    tampered = (genuine_dir / "ollama-linux-amd64.tar.zst").read_bytes() + b"tampered"
    (release / "ollama-linux-amd64.tar.zst").write_bytes(tampered)
    (release / "sha256sum.txt").write_text(
        f"{hashlib.sha256(tampered).hexdigest()}  ./ollama-linux-amd64.tar.zst\n"
    )
    target = fleet.names[1]

    run = fleet.deploy(
        "--limit", target,
        "--data", "ollama_source=controller",
        "--data", f"ollama_controller_dir={release}",
        "--data", "ollama_version=0.24.1",
        "--data", "ollama_sha256=" + json.dumps({"0.24.1/ollama-linux-amd64.tar.zst": genuine}),
    )  # fmt: skip

    assert run.returncode != 0
    assert (
        f"checksum mismatch for ollama-linux-amd64.tar.zst: expected {genuine} (ollama_sha256)" in run.stderr
    )
    assert fleet.ssh(target, "readlink /opt/ollama/current").strip() == "0.24.0"
    assert fleet.ssh(target, "ls /opt/ollama").split() == ["0.24.0", "current"]
    assert fleet.https(target, "/api/version").json() == {"version": "0.24.0"}


def test_bad_nginx_template_never_goes_live(fleet: Fleet, second: Run, tmp_path: Path) -> None:
    templates = tmp_path / "templates"
    templates.mkdir()
    site = (REPO / "templates" / "nginx-site.conf.j2").read_text()
    broken = site.replace("    server_tokens off;\n", "    server_tokens off;\n    no_such_directive on;\n")
    assert broken != site
    (templates / "nginx-site.conf.j2").write_text(broken)
    target = fleet.names[2]
    live = "sha256sum /etc/nginx/sites-available/ollama-fleet.conf"
    before = fleet.ssh(target, live)

    run = fleet.deploy("--limit", target, "--data", f'nginx_template_dirs=["{templates}"]')

    assert run.returncode != 0
    output = run.stdout + run.stderr
    assert 'unknown directive "no_such_directive"' in output
    assert "nginx rejected the new site; the live configuration is unchanged" in output
    assert fleet.ssh(target, live) == before
    assert fleet.https(target, "/health", key=None).text == "Ollama is running"
    assert fleet.https(target, "/api/version").status_code == 200


def test_removing_a_client_subnet_removes_its_rule(fleet: Fleet, second: Run) -> None:
    target = fleet.names[1]
    lab_subnet = f"{fleet.lab.plan.hosts_subnet}"
    extra = "192.0.2.0/24"

    added = fleet.deploy("--limit", target, "--data", f'firewall_client_subnets=["{lab_subnet}", "{extra}"]')
    assert added.returncode == 0, added.stderr[-4000:]
    rules = fleet.ssh(target, "ufw show added")
    assert f"allow from {extra} to any port 443 proto tcp comment 'ollama-fleet'" in rules

    removed = fleet.deploy("--limit", target)
    assert removed.returncode == 0, removed.stderr[-4000:]
    rules = fleet.ssh(target, "ufw show added")
    assert extra not in rules
    assert f"allow from {lab_subnet} to any port 443 proto tcp comment 'ollama-fleet'" in rules


def test_deploy_refuses_to_lock_out_its_own_ssh_connection(fleet: Fleet, second: Run) -> None:
    target = fleet.names[0]
    before = fingerprint(fleet, target)
    run = fleet.deploy("--limit", target, "--data", 'firewall_admin_subnets=["192.0.2.0/24"]')
    assert run.returncode != 0
    controller = fleet.lab.plan.gateway_ip  # the address the hosts see our SSH connection come from
    assert (
        f"{target}: this deploy connects from {controller}, which is not in firewall_admin_subnets"
        in run.stderr
    )
    assert "Beginning operation run" not in run.stderr
    assert fingerprint(fleet, target) == before


def test_custom_model_is_recreated_only_when_its_modelfile_changes(fleet: Fleet, second: Run) -> None:
    target = fleet.names[0]
    custom = [{"name": "vehicle-assistant", "base": "tiny", "system": "Only trucks.", "parameters": {}}]
    run = fleet.deploy("--json", "--limit", target, "--data", f"models_custom={json.dumps(custom)}")
    assert run.returncode == 0, run.stderr[-4000:]
    assert run.changed() == {
        "Ollama models | Create model vehicle-assistant:latest from its Modelfile": [target]
    }
    show = 'curl -fsS http://127.0.0.1:11434/api/show -d \'{"model": "vehicle-assistant"}\''
    assert json.loads(fleet.ssh(target, show))["system"] == "Only trucks."

    back = fleet.deploy("--json", "--limit", target)  # the original Modelfile: re-created once more
    assert back.returncode == 0, back.stderr[-4000:]
    assert back.changed() == {
        "Ollama models | Create model vehicle-assistant:latest from its Modelfile": [target]
    }
    assert json.loads(fleet.ssh(target, show))["system"] == "You answer questions about vehicles."


def test_prune_removes_unlisted_models_only(fleet: Fleet, second: Run) -> None:
    target = fleet.names[0]
    fleet.ssh(target, "ollama cp tiny stray-model")
    run = fleet.deploy("--json", "--limit", target, "--data", "models_prune=true")
    assert run.returncode == 0, run.stderr[-4000:]
    assert "Ollama models | Remove unlisted models" in run.changed()
    names = {
        m["name"]
        for m in json.loads(fleet.ssh(target, "curl -fsS http://127.0.0.1:11434/api/tags"))["models"]
    }
    assert names == {"tiny:latest", "vehicle-assistant:latest"}


def test_fleet_is_back_to_no_change_after_the_faults(fleet: Fleet, second: Run) -> None:
    run = fleet.deploy("--json")
    assert run.returncode == 0, run.stderr[-4000:]
    assert run.changed() == {}


def test_fingerprint_is_sensitive(fleet: Fleet, second: Run) -> None:
    """The no-change checks above compare fingerprints: make sure one notices a changed file."""
    host = fleet.names[0]
    before = fingerprint(fleet, host)
    fleet.ssh(host, "cp /etc/ufw/user.rules /tmp/user.rules && echo '# x' >> /etc/ufw/user.rules")
    try:
        assert fingerprint(fleet, host) != before
    finally:
        fleet.ssh(host, "mv /tmp/user.rules /etc/ufw/user.rules")
    assert fingerprint(fleet, host) == before
