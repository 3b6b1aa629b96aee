"""Controller paths mean one place (the fleet root), and a deploy never silently replaces the fleet CA the
hosts carry: the real `pyinfra` CLI on @fake hosts, started from a directory that is not the fleet's."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from test_plan import KEY, PYINFRA, REPO, fake_facts, host_data, write_inventory

from ollama_fleet.pki import CA_CERT, FleetCA, ca_change_problem, fingerprint
from ollama_fleet.settings.paths import FleetRootError, fleet_root, with_controller_paths

pytestmark = pytest.mark.unit

INSTALLED_CA = "cat /etc/ollama-fleet/tls/ca.pem 2>/dev/null || true"


def test_the_fleet_root_is_the_inventory_directory_or_the_parent_of_inventories(tmp_path: Path) -> None:
    assert fleet_root(tmp_path / "fleet.py") == tmp_path.resolve()
    assert fleet_root(tmp_path / "inventories" / "fleet.py") == tmp_path.resolve()
    assert fleet_root(REPO / "inventories" / "lan.py") == REPO


def test_relative_controller_paths_and_their_defaults_resolve_against_the_root(tmp_path: Path) -> None:
    data = {
        "auth_secrets_file": "keys/secrets.json",
        "tls_cert_file": "/abs/cert.pem",
        "nginx_template_dirs": ["templates", "/srv/t"],
        "models_gguf": {"tiny": "models/tiny.gguf"},
        "ollama_controller_dir": "~/releases",
        "firewall_client_subnets": ["10.0.0.0/24"],
    }
    resolved = with_controller_paths(data, tmp_path)
    assert resolved["tls_ca_dir"] == str(tmp_path / ".fleet" / "pki")  # the default, made absolute
    assert resolved["auth_secrets_file"] == str(tmp_path / "keys" / "secrets.json")
    assert resolved["tls_cert_file"] == "/abs/cert.pem"
    assert resolved["nginx_template_dirs"] == [str(tmp_path / "templates"), "/srv/t"]
    assert resolved["models_gguf"] == {"tiny": str(tmp_path / "models" / "tiny.gguf")}
    assert resolved["ollama_controller_dir"] == str(Path("~/releases").expanduser())
    assert resolved["firewall_client_subnets"] == ["10.0.0.0/24"]
    assert "tls_key_file" not in resolved


def test_a_relative_path_with_no_inventory_file_is_refused() -> None:
    with pytest.raises(FleetRootError, match=r"tls_ca_dir '\.fleet/pki'.*give absolute paths"):
        with_controller_paths({"auth_secrets_file": "/abs/s.json"}, None)


def test_verify_and_rollout_read_the_fleet_root_not_the_working_directory(tmp_path: Path) -> None:
    inventory = tmp_path / "inventories" / "fleet.py"
    inventory.parent.mkdir()
    inventory.write_text('hosts = [("h1", {"firewall_enabled": False, "auth_enabled": False})]\n')
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    # In a process of its own: loading an inventory imports pyinfra_cli, which monkey-patches with gevent.
    script = (
        "import sys\n"
        "from ollama_fleet.rollout.state import default_state_path\n"
        "from ollama_fleet.verify.targets import load_targets\n"
        "[target] = load_targets(sys.argv[1])\n"
        "print(target.ca_file)\n"
        "print(default_state_path(sys.argv[1]))\n"
    )
    found = subprocess.run(
        [sys.executable, "-c", script, str(inventory)],
        cwd=elsewhere,
        capture_output=True,
        text=True,
        check=True,
    )
    assert found.stdout.split() == [
        str(tmp_path / ".fleet" / "pki" / "ca.pem"),
        str(tmp_path / ".fleet" / "rollout-fleet.json"),
    ]


def test_no_change_of_ca_for_a_fresh_host_or_the_same_ca(tmp_path: Path) -> None:
    ca = FleetCA.load_or_create(tmp_path / "pki")
    assert ca_change_problem(None, None, tmp_path / "empty") is None
    assert ca_change_problem(ca.cert_pem, ca, tmp_path / "pki") is None


def test_a_new_or_another_ca_over_a_carried_one_names_both_and_the_roll(tmp_path: Path) -> None:
    carried = FleetCA.load_or_create(tmp_path / "old")
    other = FleetCA.load_or_create(tmp_path / "other")
    new = ca_change_problem(carried.cert_pem, None, tmp_path / "empty")
    assert new is not None
    assert carried.fingerprint in new and "holds no CA, so this deploy would create a new one" in new
    assert "--data tls_ca_roll=true" in new
    another = ca_change_problem(carried.cert_pem, other, tmp_path / "other")
    assert another is not None
    assert carried.fingerprint in another and other.fingerprint in another
    assert carried.fingerprint != other.fingerprint == fingerprint(other.cert)


def pyinfra_from(cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """The real CLI started from `cwd`, a directory that is not the fleet's."""
    env = {"OLLAMA_FLEET_API_KEY_TEAM": KEY, "PYINFRA_PROGRESS": "off", "PATH": "/usr/bin:/bin"}
    return subprocess.run(
        [PYINFRA, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=300, check=False
    )


def relative_fleet(tmp_path: Path, carried_ca: str | None = None, **extra: Any) -> Path:
    """tmp/inventories/fleet.py with one host and `tls_ca_dir = ".fleet/pki"` (relative, as by default)."""
    responses = fake_facts(**({INSTALLED_CA: carried_ca} if carried_ca else {}))
    data = {**host_data(tmp_path, 1), "fake_responses": responses, "tls_ca_dir": ".fleet/pki", **extra}
    (tmp_path / "inventories").mkdir(exist_ok=True)
    inventory = write_inventory(tmp_path, {"h1": data})
    return inventory.rename(tmp_path / "inventories" / "fleet.py")


def test_a_deploy_started_elsewhere_uses_the_fleet_roots_ca(tmp_path: Path) -> None:
    ca = FleetCA.load_or_create(tmp_path / ".fleet" / "pki")
    inventory = relative_fleet(tmp_path, carried_ca=ca.cert_pem)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    result = pyinfra_from(elsewhere, "--dry", str(inventory), str(REPO / "deploys" / "ollama.py"))
    assert result.returncode == 0, result.stderr
    assert not (elsewhere / ".fleet").exists()
    issued = tmp_path / ".fleet" / "pki" / "hosts" / "%40fake%2Fh1" / "fullchain.pem"
    assert issued.is_file()


def test_a_new_ca_over_the_hosts_ca_stops_before_any_change(tmp_path: Path) -> None:
    carried = FleetCA.load_or_create(tmp_path / "the-fleets-ca")
    inventory = relative_fleet(tmp_path, carried_ca=carried.cert_pem)
    result = pyinfra_from(tmp_path, "--dry", str(inventory), str(REPO / "deploys" / "ollama.py"))
    assert result.returncode != 0
    assert (
        f"@fake/h1: TLS: the host carries certificates from the fleet CA {carried.fingerprint}"
        in result.stderr
    )
    assert f"tls_ca_dir {tmp_path / '.fleet' / 'pki'} holds no CA" in result.stderr
    assert "--data tls_ca_roll=true" in result.stderr
    assert not (tmp_path / ".fleet" / "pki" / CA_CERT).exists()  # no CA was made
    assert "Take the deploy lock" not in result.stdout  # no operation was planned


def test_another_ca_in_the_ca_dir_names_both_fingerprints_and_the_roll_goes_ahead(tmp_path: Path) -> None:
    carried = FleetCA.load_or_create(tmp_path / "the-fleets-ca")
    ours = FleetCA.load_or_create(tmp_path / ".fleet" / "pki")
    inventory = relative_fleet(tmp_path, carried_ca=carried.cert_pem)
    deploy = str(REPO / "deploys" / "ollama.py")
    stopped = pyinfra_from(tmp_path, "--dry", str(inventory), deploy)
    assert stopped.returncode != 0
    assert carried.fingerprint in stopped.stderr and ours.fingerprint in stopped.stderr
    rolled = pyinfra_from(tmp_path, "--dry", "--data", "tls_ca_roll=true", str(inventory), deploy)
    assert rolled.returncode == 0, rolled.stderr
