"""`ollama-fleet init` and `ollama-fleet keys`, run as the CLI an operator runs (no hosts touched)."""

from __future__ import annotations

import json
import runpy
import stat
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from ollama_fleet import fleetrepo
from ollama_fleet.settings import settings_for_host

pytestmark = pytest.mark.unit

INIT = [
    "--host", "gpu-1=192.168.10.21", "--host", "gpu-2=192.168.10.22,cpu-1=192.168.10.31",
    "--client-subnet", "192.168.10.0/24", "--admin-subnet", "192.168.10.0/28",
    "--ssh-user", "admin", "--sudo", "--gateway", "cpu-1",
    "--set", 'models_pull=["llama3.2:1b"]',
]  # fmt: skip


def cli(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "ollama_fleet.cli", *args],
        capture_output=True, text=True, cwd=cwd, stdin=subprocess.DEVNULL, check=False,
    )  # fmt: skip


def loaded(fleet: Path) -> dict[str, dict[str, Any]]:
    """Each host's data as pyinfra would merge it (group data, then the host's own), from the files."""
    inventory = runpy.run_path(str(fleet / "inventory.py"))
    group_data = {k: v for k, v in runpy.run_path(str(fleet / "group_data/all.py")).items() if k[0] != "_"}
    hosts = {}
    for group in ("canary", "fleet", "gateway"):
        for entry in inventory.get(group, []):
            name, data = entry if isinstance(entry, tuple) else (entry, {})
            hosts[name] = {**group_data, **data, "auth_secrets_file": str(fleet / ".fleet/secrets.json")}
    return hosts


def secrets(fleet: Path) -> dict[str, Any]:
    document: dict[str, Any] = json.loads((fleet / ".fleet/secrets.json").read_text())
    return document


def test_init_writes_a_fleet_that_validates_with_fresh_keys(tmp_path: Path) -> None:
    fleet = tmp_path / "fleet"
    done = cli("init", str(fleet), *INIT)
    assert done.returncode == 0, done.stderr
    assert sorted(str(p.relative_to(fleet)) for p in fleet.rglob("*") if p.is_file()) == [
        ".fleet/secrets.json", ".gitignore", "README.md", "config.py", "deploy.py", "group_data/all.py",
        "inventory.py",
    ]  # fmt: skip
    assert stat.S_IMODE((fleet / ".fleet/secrets.json").stat().st_mode) == 0o600
    assert stat.S_IMODE((fleet / ".fleet/pki").stat().st_mode) == 0o700
    assert ".fleet/" in (fleet / ".gitignore").read_text().splitlines()
    hosts = loaded(fleet)
    assert list(hosts) == ["gpu-1", "gpu-2", "cpu-1"]
    inventory = runpy.run_path(str(fleet / "inventory.py"))
    assert [entry[0] for entry in inventory["canary"]] == ["gpu-1"]
    assert [entry[0] for entry in inventory["gateway"]] == ["cpu-1"]
    keys = secrets(fleet)["api_keys"]
    assert sorted(keys) == ["apps", "ops"] and len(set(keys.values())) == 2
    for name, data in hosts.items():
        s = settings_for_host(name, data, {})
        assert s.auth.policy("ops").scope == "admin" and s.auth.policy("apps").scope == "inference"
        assert s.models.pull == ["llama3.2:1b"]
    assert not any(value in done.stdout + done.stderr for value in keys.values())  # never printed


def test_init_refuses_to_overwrite_and_force_keeps_the_keys(tmp_path: Path) -> None:
    fleet = tmp_path / "fleet"
    assert cli("init", str(fleet), *INIT).returncode == 0
    keys = secrets(fleet)["api_keys"]
    again = cli("init", str(fleet), *INIT)
    assert again.returncode == 2
    assert "already has inventory.py" in again.stderr and "nothing was written" in again.stderr
    forced = cli("init", str(fleet), *INIT, "--force")
    assert forced.returncode == 0, forced.stderr
    assert "wrote" not in forced.stdout  # nothing differed
    assert secrets(fleet)["api_keys"] == keys


def test_init_checks_the_settings_before_writing_anything(tmp_path: Path) -> None:
    fleet = tmp_path / "fleet"
    bad = cli(
        "init",
        str(fleet),
        "--host",
        "h1",
        "--client-subnet",
        "192.168.10.1/24",
        "--admin-subnet",
        "10.0.0.0/8",
    )
    assert bad.returncode == 2
    assert "firewall_client_subnets" in bad.stderr and "192.168.10.1/24" in bad.stderr
    assert not fleet.exists()


def test_init_without_a_terminal_names_what_is_missing(tmp_path: Path) -> None:
    done = cli("init", str(tmp_path / "fleet"), "--host", "h1")
    assert done.returncode == 2
    assert "missing --client-subnet, --admin-subnet" in done.stderr


def test_keys_add_rotate_revoke_keep_the_secrets_private_and_print_no_value(tmp_path: Path) -> None:
    fleet = tmp_path / "fleet"
    assert cli("init", str(fleet), *INIT).returncode == 0
    added = cli(
        "keys", "add", "kiosk", "--models", "llama3.2:1b", "--rate", "60r/m", "--burst", "5", cwd=fleet
    )
    assert added.returncode == 0, added.stderr
    assert "added key 'kiosk'" in added.stderr and "pyinfra -y inventory.py deploy.py" in added.stderr
    assert added.stdout == ""
    kiosk = secrets(fleet)["api_keys"]["kiosk"]
    assert fleetrepo.read_keys((fleet / "group_data/all.py").read_text())["kiosk"] == {
        "models": ["llama3.2:1b"], "rate": "60r/m", "burst": 5,
    }  # fmt: skip
    listed = cli("keys", "list", cwd=fleet)
    assert "kiosk: scope inference, models llama3.2:1b, rate 60r/m (burst 5); value set" in listed.stdout
    assert kiosk not in listed.stdout + listed.stderr

    rotated = cli("keys", "rotate", "kiosk", "--print-value", cwd=fleet)
    assert rotated.returncode == 0, rotated.stderr
    document = secrets(fleet)
    assert rotated.stdout.strip() == document["api_keys"]["kiosk"] != kiosk
    assert document["revoked_api_keys"] == [kiosk]

    revoked = cli("keys", "revoke", "apps", cwd=fleet)
    assert revoked.returncode == 0, revoked.stderr
    assert "apps" not in secrets(fleet)["api_keys"] and "apps" not in loaded(fleet)["gpu-1"]["auth_key_names"]
    assert stat.S_IMODE((fleet / ".fleet/secrets.json").stat().st_mode) == 0o600
    for name, data in loaded(fleet).items():
        settings_for_host(name, data, {})  # still a valid fleet


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["add", "ops"], "key 'ops' exists"),
        (["rotate", "nobody"], "no key 'nobody'"),
        (["add", "bad name"], "may only hold letters"),
        (["add", "k2", "--rate", "fast"], "rate 'fast' is not an nginx rate"),
    ],
)
def test_keys_refuse_what_they_cannot_do(tmp_path: Path, args: list[str], message: str) -> None:
    fleet = tmp_path / "fleet"
    assert cli("init", str(fleet), *INIT).returncode == 0
    before = (fleet / "group_data/all.py").read_text(), secrets(fleet)
    done = cli("keys", *args, cwd=fleet)
    assert done.returncode == 2
    assert message in done.stderr
    assert ((fleet / "group_data/all.py").read_text(), secrets(fleet)) == before


# --- the settings reference --------------------------------------------------------------------------------


def test_the_settings_reference_is_generated_and_fresh() -> None:
    from ollama_fleet import reference

    page = Path(__file__).resolve().parents[2] / "docs" / "settings.md"
    assert page.read_text() == reference.markdown(), "run: ollama-fleet settings reference > docs/settings.md"
    found = reference.entries()
    assert found["ollama_archive_format"].kind == 'one of "auto", "tgz", "tar.zst"'
    assert found["nginx_read_timeout"].kind == "int (>= 600)"
    assert found["ollama_archive_format"].doc.startswith("Archive format of the release")
    assert all(entry.doc and entry.kind != "?" for entry in found.values()), [
        key for key, entry in found.items() if not entry.doc or entry.kind == "?"
    ]


def test_settings_explain_names_the_closest_key_for_a_typo() -> None:
    done = cli("settings", "explain", "ollama_overlays", "tls_ca_dr")
    assert done.returncode == 2
    assert done.stdout.startswith("ollama_overlays = []\n  type: list of one of")
    assert "tls_ca_dr: unknown setting; did you mean tls_ca_dir?" in done.stderr


# --- doctor ------------------------------------------------------------------------------------------------

HEALTHY = {
    "ollama_active": "active",
    "ollama_pid": "812",
    "listener": 'LISTEN 0 4096 127.0.0.1:11434 0.0.0.0:* users:(("ollama",pid=812,fd=3))',
    "models_dir": "ollama ollama 755",
    "disk": "/dev/vda1 250000 16000 234000 7% /",
    "load_errors": "",
    "nginx_active": "active",
    "nginx_test": "nginx: the configuration file /etc/nginx/nginx.conf syntax is ok\n"
    "nginx: configuration file /etc/nginx/nginx.conf test is successful",
    "nginx_errors": "",
    "ufw": "Status: active",
    "last_deploy": "1764870000\n1764871000",
}


def doctor_output(**changed: str) -> str:
    sections = {**HEALTHY, **changed}
    return "".join(f"### {name}\n{text}\n" for name, text in sections.items())


def doctor_settings(tmp_path: Path) -> Any:
    data = {
        "firewall_client_subnets": ["10.0.0.0/24"], "firewall_admin_subnets": ["10.0.0.0/24"],
        "auth_enabled": False, "tls_ca_dir": str(tmp_path / "pki"),
    }  # fmt: skip
    return settings_for_host("h1", data, {})


@pytest.mark.parametrize(
    ("changed", "finding"),
    [
        (
            {
                "ollama_active": "activating",
                "listener": 'LISTEN 0 5 127.0.0.1:11434 0.0.0.0:* users:(("python3",pid=990,fd=3))',
            },
            'Ollama\'s port 11434 is taken by another process: (("python3",pid=990,fd=3))',
        ),
        ({"models_dir": "root root 755"}, "is owned by root:root, not ollama:ollama"),
        (
            {"disk": "tmpfs 64 63 1 99% /usr/share/ollama/.ollama/models"},
            "1 MB free (99% used) on /usr/share",
        ),
        ({"ufw": "Status: inactive"}, "ufw is not active (Status: inactive)"),
        (
            {"nginx_test": "nginx: [emerg] unknown directive"},
            "nginx -t fails: nginx: [emerg] unknown directive",
        ),
        (
            {"load_errors": "llama runner process has terminated: exit status 2"},
            "a model failed since Ollama started",
        ),
        ({"last_deploy": "1764871000"}, "no deploy of this host passed its client check yet"),
    ],
)
def test_doctor_names_each_fault_with_its_fix(tmp_path: Path, changed: dict[str, str], finding: str) -> None:
    from ollama_fleet import doctor

    found = doctor.diagnose("h1", doctor_settings(tmp_path), doctor_output(**changed))
    assert [f.what for f in found.findings if finding in f.what], found.findings
    assert all(f.fix for f in found.findings)


def test_doctor_finds_nothing_on_a_healthy_host(tmp_path: Path) -> None:
    from ollama_fleet import doctor

    found = doctor.diagnose("h1", doctor_settings(tmp_path), doctor_output())
    assert found.healthy, found.findings
    assert set(doctor.split_sections(doctor_output())) == set(doctor.probe_script(doctor_settings(tmp_path)))
