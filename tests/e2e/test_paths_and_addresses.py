"""A deploy started from another directory uses the fleet's CA and keys (relative settings paths mean the
fleet root), a deploy that would put another CA on the hosts stops before it changes any host, and a
gateway dials its members at their service address, IPv6 included."""

from __future__ import annotations

import ipaddress
import ssl
import subprocess
import sys
from pathlib import Path

import httpx
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


GATEWAY_LOG = "/var/log/nginx/ollama-fleet-gateway.access.log"


def test_a_gateway_dials_members_at_their_ipv6_service_address(fleet: DeployedFleet, tmp_path: Path) -> None:
    """lab-1 becomes the gateway, and the other hosts' service_address is their IPv6 address (the lab's
    client subnets hold an IPv6 one, so their nginx listens on [::]): the gateway dials them there."""
    gateway, members = fleet.hosts[0], fleet.hosts[1:]
    six = {
        host: ipaddress.ip_address(fleet.address6(host)).compressed for host in members
    }  # as nginx logs it
    inventory = tmp_path / "fleet.py"
    inventory.write_text(
        "import runpy\n"
        f"_lab = runpy.run_path({fleet.lab.inventory_path!r})\n"
        f"_six = {six!r}\n"
        "def _host(name, data):\n"
        "    extra = {'service_address': _six[name]} if name in _six else {}\n"
        "    return (name, {**data, **extra, 'gateway_prefer_loaded': False})\n"
        "lab_canary = [_host(n, d) for n, d in _lab['lab_canary']]\n"
        "lab_rest = [_host(n, d) for n, d in _lab['lab_rest']]\n"
        f"gateway = [{gateway!r}]\n"
    )
    pyinfra = [str(Path(sys.executable).parent / "pyinfra"), "-y", str(inventory)]
    try:
        done = fleet.run(
            [*pyinfra, str(repo_root() / "deploys" / "ollama.py"), "--limit", gateway], timeout=900
        )
        # Its own closing check has run a chat per model through the gateway.
        assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
        dialled = ", ".join(f"{host} at [{six[host]}]:443" for host in members)
        said = [line for line in done.stderr.splitlines() if "gateway on port" in line]
        assert said and dialled in said[0], said or done.stderr[-3000:]
        # Each member's server line is a file of its own that the gateway's pools include.
        site = fleet.ssh_ok(gateway, "cat /etc/nginx/ollama-fleet/gateway-members/*.conf")
        assert all(f"server [{six[host]}]:443" in site for host in members), site
        trust = ssl.create_default_context(cafile=str(fleet.ca_file))
        with httpx.Client(verify=trust, trust_env=False, timeout=120) as client:
            for _ in range(2 * len(fleet.hosts)):
                answer = client.post(
                    f"https://{fleet.address(gateway)}:8443/v1/chat/completions",
                    headers={"Authorization": f"Bearer {fleet.keys['ci']}"},
                    json={
                        "model": fleet.model,
                        "messages": [{"role": "user", "content": "Hi"}],
                        "max_tokens": 4,
                    },
                )
                assert answer.status_code == 200, answer.text
        log = fleet.ssh_ok(gateway, f"cat {GATEWAY_LOG}")
        served = {host for host in members if f'upstream="[{six[host]}]:443" upstream_status="200"' in log}
        assert served == set(members), log[-2000:]  # least_conn spread them: each member over IPv6
    finally:
        restored = fleet.deploy("--limit", gateway)
    assert restored.returncode == 0, restored.stdout[-3000:]
