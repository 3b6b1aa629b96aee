"""A deploy started from another directory uses the fleet's CA and keys (relative settings paths mean the
fleet root), and a deploy that would put another CA on the hosts stops before it changes any host."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from cryptography import x509
from verify_fleet import DeployedFleet, deploy_fleet

from ollama_fleet.lab.paths import repo_root
from ollama_fleet.lab.state import LabState
from ollama_fleet.pki import CA_CERT, FleetCA, fingerprint

pytestmark = pytest.mark.e2e

TLS_FILES = "/etc/ollama-fleet/tls/ca.pem /etc/ollama-fleet/tls/fullchain.pem"


@pytest.fixture(scope="module")
def fleet(lab: LabState) -> DeployedFleet:
    return deploy_fleet(lab)


def pyinfra_from(cwd: Path, fleet: DeployedFleet, *data: str) -> subprocess.CompletedProcess[str]:
    """`cd CWD && pyinfra -y /abs/inventories/labN.py /abs/deploys/ollama.py --data ...`"""
    argv = [str(Path(sys.executable).parent / "pyinfra"), "-y", fleet.lab.inventory_path]
    argv += [str(repo_root() / "deploys" / "ollama.py")]
    for item in data:
        argv += ["--data", item]
    return subprocess.run(argv, cwd=cwd, capture_output=True, text=True, timeout=900, check=False)


def tls_on_hosts(fleet: DeployedFleet) -> dict[str, str]:
    return {host: fleet.ssh_ok(host, f"sha256sum {TLS_FILES}") for host in fleet.hosts}


def relative_to_root(path: Path) -> str:
    relative = path.resolve().relative_to(repo_root())
    assert not relative.is_absolute()
    return str(relative)


def test_a_deploy_from_another_directory_with_relative_paths_keeps_the_fleets_ca(
    fleet: DeployedFleet, tmp_path: Path
) -> None:
    before = tls_on_hosts(fleet)
    # The lab's inventory sits in inventories/, so these mean <checkout>/.lab/slotN/...: the same CA and keys.
    done = pyinfra_from(
        tmp_path,
        fleet,
        f"tls_ca_dir={relative_to_root(fleet.state_dir / 'pki')}",
        f"auth_secrets_file={relative_to_root(fleet.state_dir / 'secrets.json')}",
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert list(tmp_path.iterdir()) == []  # nothing was made in the working directory
    assert tls_on_hosts(fleet) == before  # the same CA, the same host certificates


def test_a_deploy_whose_ca_dir_is_empty_stops_naming_the_hosts_ca(
    fleet: DeployedFleet, tmp_path: Path
) -> None:
    carried = fingerprint(x509.load_pem_x509_certificate(fleet.ca_file.read_bytes()))
    before = tls_on_hosts(fleet)
    empty = tmp_path / "pki"
    done = pyinfra_from(tmp_path, fleet, f"tls_ca_dir={empty}")
    assert done.returncode != 0
    output = done.stdout + done.stderr
    assert f"the host carries certificates from the fleet CA {carried}" in output, output[-3000:]
    assert f"tls_ca_dir {empty} holds no CA, so this deploy would create a new one" in output
    assert "--data tls_ca_roll=true" in output
    assert not (empty / CA_CERT).exists()  # no new CA
    assert tls_on_hosts(fleet) == before


def test_a_deploy_with_another_ca_stops_naming_both_fingerprints(
    fleet: DeployedFleet, tmp_path: Path
) -> None:
    carried = fingerprint(x509.load_pem_x509_certificate(fleet.ca_file.read_bytes()))
    other = FleetCA.load_or_create(tmp_path / "other-pki")
    before = tls_on_hosts(fleet)
    done = pyinfra_from(tmp_path, fleet, f"tls_ca_dir={other.directory}")
    assert done.returncode != 0
    output = done.stdout + done.stderr
    assert carried in output and other.fingerprint in output, output[-3000:]
    assert not (other.directory / "hosts").exists()  # no certificate issued from it
    assert tls_on_hosts(fleet) == before
