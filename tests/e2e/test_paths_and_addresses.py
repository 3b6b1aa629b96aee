"""A deploy started from another directory uses the fleet's CA and keys (relative settings paths mean the
fleet root), a deploy that would put another CA on the hosts stops before it changes any host, a gateway
dials its members at their service address, IPv6 included, and the fleet CA can sign only for the fleet
(an older CA rolls to such a one without cutting clients off)."""

from __future__ import annotations

import datetime as dt
import ipaddress
import socket
import ssl
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from verify_fleet import DeployedFleet, deploy_fleet

from ollama_fleet.lab.paths import repo_root
from ollama_fleet.lab.state import LabState
from ollama_fleet.pki import (
    CA_CERT,
    FleetCA,
    ca_change_problem,
    fingerprint,
    finish_roll,
    roll_ca,
    switch_ca,
)

pytestmark = pytest.mark.e2e

TLS_FILES = "/etc/ollama-fleet/tls/ca.pem /etc/ollama-fleet/tls/fullchain.pem"


@pytest.fixture(scope="module")
def fleet(lab: LabState) -> DeployedFleet:
    return deploy_fleet(lab)


def pyinfra_from(
    cwd: Path, fleet: DeployedFleet, *data: str, limit: str | None = None
) -> subprocess.CompletedProcess[str]:
    """`cd CWD && pyinfra -y /abs/inventories/labN.py /abs/deploys/ollama.py [--limit HOST] --data ...`"""
    argv = [str(Path(sys.executable).parent / "pyinfra"), "-y", fleet.lab.inventory_path]
    argv += [str(repo_root() / "deploys" / "ollama.py"), *(["--limit", limit] if limit else [])]
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


def test_the_fleet_ca_can_sign_only_for_the_lab(fleet: DeployedFleet, tmp_path: Path) -> None:
    """The CA the first deploy made carries the lab's names and subnets as critical name constraints, and a
    host's own openssl (Debian's) refuses a certificate its key signs for another site."""
    ca = FleetCA.load_or_create(fleet.state_dir / "pki")
    constraints = ca.constraints
    assert constraints is not None
    plan = fleet.lab.plan
    # compared compressed, as the constraints hold them
    subnets = {str(ipaddress.ip_network(net)) for net in (plan.hosts_subnet, plan.hosts_subnet6)}
    assert {*fleet.hosts, *subnets} <= set(constraints), constraints
    assert not any(entry.endswith("/0") for entry in constraints)
    host = fleet.hosts[-1]
    assert fleet.ssh_ok(host, "cat /etc/ollama-fleet/tls/ca.pem") == ca.trust_pem
    forged = forged_certificate(fleet.state_dir / "pki", "www.example.org")
    refused = fleet.ssh(host, "openssl verify -CAfile /etc/ollama-fleet/tls/ca.pem /dev/stdin", stdin=forged)
    assert refused.returncode != 0 and "permitted subtree violation" in refused.stdout + refused.stderr
    fleet.ssh_ok(
        host, "openssl verify -CAfile /etc/ollama-fleet/tls/ca.pem /etc/ollama-fleet/tls/fullchain.pem"
    )


def test_an_unconstrained_ca_rolls_to_a_constrained_one_without_cutting_clients_off(
    fleet: DeployedFleet, tmp_path: Path
) -> None:
    """One host goes from a CA made without constraints (as before issue 19) to a constrained one by the
    documented roll; a client given ca.pem at step 1 reaches it throughout; then it gets the lab's CA back.
    Lean: the old CA's files are put on the host as a deploy would have left them, and step 3 (finish) is
    checked against the guard rather than deployed (the unit tier's test_ca_constraints covers each step)."""
    host = fleet.hosts[-1]
    ca_dir = tmp_path / "pki"
    old = FleetCA.load_or_create(ca_dir)  # no constraints: what every fleet had
    cert, key = old.issue(host, [host, fleet.address(host), fleet.address6(host)])
    installed = "/etc/ollama-fleet/tls"
    for name, text in (("ca.pem", old.trust_pem), ("fullchain.pem", cert), ("privkey.pem", key)):
        fleet.ssh_ok(
            host,
            f"umask 077; cat > {installed}/{name}.new && mv {installed}/{name}.new {installed}/{name}",
            stdin=text,
        )
    fleet.ssh_ok(host, f"chmod 644 {installed}/ca.pem {installed}/fullchain.pem && systemctl reload nginx")

    def deploy(*data: str) -> str:
        done = pyinfra_from(tmp_path, fleet, f"tls_ca_dir={ca_dir}", *data, limit=host)
        assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
        return done.stdout + done.stderr

    def served_by(trusting: str) -> str:
        """The fingerprint of the CA that signed the host's certificate, verified trusting `trusting`."""
        context = ssl.create_default_context(cadata=trusting)
        address = fleet.address(host)
        with (
            socket.create_connection((address, 443), timeout=30) as raw,
            context.wrap_socket(raw, server_hostname=address) as tls,
        ):
            der = tls.getpeercert(binary_form=True)
        assert der is not None
        issuer = x509.load_der_x509_certificate(der).issuer
        trusted = x509.load_pem_x509_certificates(trusting.encode())
        return next(fingerprint(c) for c in trusted if c.subject == issuer)

    carried = f"cat {installed}/ca.pem"
    try:
        deadline = time.monotonic() + 30  # nginx reloads after systemctl returns: its new workers serve it
        while True:
            try:
                assert served_by(old.trust_pem) == old.fingerprint
                break
            except ssl.SSLCertVerificationError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.5)
        rolled = roll_ca(ca_dir, FleetCA.load_or_create(fleet.state_dir / "pki").constraints or [])
        said = deploy()  # step 1: the host trusts both; its certificate is still the old CA's
        assert f"the fleet CA {old.fingerprint} has no name constraints" in said
        assert "ollama-fleet ca roll inventory.py" in said
        assert fleet.ssh_ok(host, carried) == rolled.trust_pem
        client_pem = (ca_dir / CA_CERT).read_text()  # what every client is given now
        assert served_by(old.trust_pem) == served_by(client_pem) == old.fingerprint
        new = switch_ca(ca_dir)
        said = deploy()  # step 2: a certificate from the constrained CA; ca.pem trusts both still
        assert new.constraints and served_by(client_pem) == new.fingerprint
        assert "has no name constraints" not in said
        with pytest.raises(ssl.SSLCertVerificationError):
            served_by(old.trust_pem)  # a client not given step 1's ca.pem is cut off: why step 1 comes first
        finished = finish_roll(ca_dir)  # step 3: its deploy would find the host as the guard wants it
        assert finished.trust_pem == new.cert_pem
        assert ca_change_problem(fleet.ssh_ok(host, carried), finished, ca_dir) is None
    finally:
        restored = pyinfra_from(tmp_path, fleet, "tls_ca_roll=true", limit=host)
    assert restored.returncode == 0, restored.stdout[-3000:] + restored.stderr[-3000:]
    _, report = fleet.verify("--quick", "--hosts", host)
    [tls] = [c for h in report["hosts"] for c in h["checks"] if c["check"] == "tls"]
    assert tls["status"] == "pass" and "the fleet CA may sign only for" in tls["figure"], tls


def forged_certificate(ca_dir: Path, name: str) -> str:
    """A server certificate for `name` signed with the CA's key, as a thief holding the key would make it."""
    key = serialization.load_pem_private_key((ca_dir / "ca-key.pem").read_bytes(), None)
    assert isinstance(key, ec.EllipticCurvePrivateKey)
    issuer = x509.load_pem_x509_certificate((ca_dir / CA_CERT).read_bytes())
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]))
        .issuer_name(issuer.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=1))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(name)]), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    return cert.public_bytes(serialization.Encoding.PEM).decode()
