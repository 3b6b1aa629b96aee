"""A new fleet CA can sign only for the fleet: critical X.509 name constraints that openssl and Python's ssl
enforce; an older, unconstrained CA rolls to a constrained one with both trusted during the change."""

from __future__ import annotations

import datetime as dt
import ipaddress
import socket
import ssl
import stat
import subprocess
import sys
import threading
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import Encoding
from cryptography.x509.oid import NameOID

from ollama_fleet.ca_commands import describe
from ollama_fleet.pki import (
    CA_CERT,
    CA_KEY,
    NEXT,
    RETIRED,
    FleetCA,
    PkiError,
    ca_change_problem,
    ca_constraints,
    fingerprint,
    finish_roll,
    fleet_name_constraints,
    general_name,
    permitted_for_fleet,
    reissue_reason,
    roll_ca,
    switch_ca,
)
from ollama_fleet.settings import settings_for_host

pytestmark = pytest.mark.unit

FLEET = ["gpu-1", "gpu-1.ai.example.com", "10.20.0.0/16", "fd20::/64"]


@pytest.fixture
def ca(tmp_path: Path) -> FleetCA:
    return FleetCA.load_or_create(tmp_path / "pki", FLEET)


def forged(ca_dir: Path, sans: list[str], common_name: str = "forged") -> bytes:
    """A server certificate signed with the CA's key as a thief would sign it: no check of ours applied."""
    key = serialization.load_pem_private_key((ca_dir / CA_KEY).read_bytes(), None)
    assert isinstance(key, ec.EllipticCurvePrivateKey)
    issuer = x509.load_pem_x509_certificate((ca_dir / CA_CERT).read_bytes())
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)]))
        .issuer_name(issuer.subject)
        .public_key(key.public_key())  # any key will do: the handshake below needs one we hold
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=1))
        .not_valid_after(now + dt.timedelta(days=2))
        .add_extension(x509.SubjectAlternativeName([general_name(s) for s in sans]), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        # as any thief would: Python 3.13's ssl (VERIFY_X509_STRICT) refuses a leaf without it
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    return cert.public_bytes(serialization.Encoding.PEM)


def openssl_verify(ca_file: Path, cert_pem: bytes | str, tmp_path: Path) -> subprocess.CompletedProcess[str]:
    leaf = tmp_path / "leaf.pem"
    leaf.write_bytes(cert_pem.encode() if isinstance(cert_pem, str) else cert_pem)
    return subprocess.run(
        ["openssl", "verify", "-CAfile", str(ca_file), str(leaf)], capture_output=True, text=True, check=False
    )


def python_handshake(ca_file: Path, cert_pem: bytes, key_pem: bytes, hostname: str, tmp_path: Path) -> None:
    """A TLS handshake over a socket pair: a server with `cert_pem`, a client trusting `ca_file` that asks
    for `hostname`, as an app using Python's ssl would. Raises ssl.SSLCertVerificationError on refusal."""
    (tmp_path / "server.pem").write_bytes(cert_pem)
    (tmp_path / "server-key.pem").write_bytes(key_pem)
    server_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_ctx.load_cert_chain(tmp_path / "server.pem", tmp_path / "server-key.pem")
    client_ctx = ssl.create_default_context(cafile=str(ca_file))
    server_sock, client_sock = socket.socketpair()
    server_sock.settimeout(10)
    client_sock.settimeout(10)

    def serve() -> None:
        try:
            with server_ctx.wrap_socket(server_sock, server_side=True):
                pass
        except (ssl.SSLError, OSError):
            pass  # the client refused us: what the refusal cases expect

    thread = threading.Thread(target=serve)
    thread.start()
    try:
        with client_ctx.wrap_socket(client_sock, server_hostname=hostname):
            pass
    finally:
        client_sock.close()
        thread.join(10)
        server_sock.close()


def test_a_new_ca_carries_critical_constraints_for_the_fleet_alone(ca: FleetCA) -> None:
    extension = ca.cert.extensions.get_extension_for_class(x509.NameConstraints)
    assert extension.critical
    assert ca.constraints == ["gpu-1", "gpu-1.ai.example.com", "10.20.0.0/16", "fd20::/64"]
    assert extension.value.excluded_subtrees is None


def test_a_ca_without_networks_excludes_every_address() -> None:
    from ollama_fleet.pki import name_constraints

    value = name_constraints(["lan"])
    assert value.excluded_subtrees == [
        x509.IPAddress(ipaddress.ip_network("0.0.0.0/0")),
        x509.IPAddress(ipaddress.ip_network("::/0")),
    ]
    assert name_constraints(["10.0.0.0/8"]).excluded_subtrees == [x509.DNSName("")]  # every name


def test_a_fleet_of_addresses_alone_gets_a_ca_that_signs_no_name(tmp_path: Path) -> None:
    ca = FleetCA.load_or_create(tmp_path / "pki", ["10.20.0.0/16"])
    (tmp_path / "ca.pem").write_text(ca.trust_pem)
    cert_pem, _ = ca.issue("10.20.0.5", ["10.20.0.5"])  # a host whose inventory name is its address
    assert openssl_verify(tmp_path / "ca.pem", cert_pem, tmp_path).returncode == 0
    refused = openssl_verify(tmp_path / "ca.pem", forged(ca.directory, ["www.example.org"]), tmp_path)
    assert refused.returncode != 0 and "excluded subtree violation" in refused.stdout + refused.stderr


@pytest.mark.parametrize(
    ("sans", "verified"),
    [
        (["gpu-1", "10.20.3.4"], True),
        (["api.gpu-1.ai.example.com", "fd20::7"], True),
        (["www.example.org"], False),  # another site
        (["ai.example.com"], False),  # the parent of the fleet's domain
        (["gpu-1", "10.30.0.1"], False),  # one address off the fleet's subnets is enough
        (["fd21::1"], False),
    ],
)
def test_openssl_verifies_certificates_inside_the_constraints_only(
    ca: FleetCA, tmp_path: Path, sans: list[str], verified: bool
) -> None:
    (tmp_path / "ca.pem").write_text(ca.trust_pem)
    done = openssl_verify(tmp_path / "ca.pem", forged(ca.directory, sans), tmp_path)
    assert (done.returncode == 0) is verified, done.stdout + done.stderr
    if not verified:
        assert "permitted subtree violation" in done.stdout + done.stderr


def test_python_ssl_refuses_a_site_outside_the_constraints(ca: FleetCA, tmp_path: Path) -> None:
    (tmp_path / "ca.pem").write_text(ca.trust_pem)
    key_pem = (ca.directory / CA_KEY).read_bytes()
    inside = forged(ca.directory, ["api.gpu-1.ai.example.com"])
    python_handshake(tmp_path / "ca.pem", inside, key_pem, "api.gpu-1.ai.example.com", tmp_path)
    outside = forged(ca.directory, ["www.example.org"])
    with pytest.raises(ssl.SSLCertVerificationError, match="permitted subtree violation"):
        python_handshake(tmp_path / "ca.pem", outside, key_pem, "www.example.org", tmp_path)


def test_issue_refuses_a_name_outside_the_constraints_naming_the_fix(ca: FleetCA) -> None:
    with pytest.raises(PkiError) as caught:
        ca.issue("gpu-2", ["gpu-2", "10.20.0.9"])
    message = str(caught.value)
    assert "not for gpu-2:" in message and "10.20.0.9" not in message.split("not for")[1]
    assert "tls_ca_name_constraints" in message and "ollama-fleet ca roll inventory.py" in message


@pytest.mark.parametrize("common_name", ["10.20.0.5", "gpu-1", "host.elsewhere.net"])
def test_issued_certificates_verify_with_openssl_whatever_the_inventory_name(
    ca: FleetCA, tmp_path: Path, common_name: str
) -> None:
    """OpenSSL checks a dotted CN against the DNS constraints when a certificate has no DNS SAN: a host known
    by its address only must still get a certificate its clients accept."""
    (tmp_path / "ca.pem").write_text(ca.trust_pem)
    cert_pem, _ = ca.issue(common_name, ["10.20.0.5"])
    done = openssl_verify(tmp_path / "ca.pem", cert_pem, tmp_path)
    assert done.returncode == 0, done.stdout + done.stderr


def test_fleet_names_stand_for_their_domain_and_subnets_for_addresses() -> None:
    assert fleet_name_constraints(["example.com", "www.example.com"], []) == ["example.com"]  # held by it
    names = ["gpu-1", "GPU-2.ai.example.com", "gpu-3.ai.example.com", "10.1.2.3", "192.168.9.4"]
    networks = [ipaddress.ip_network("10.1.0.0/16"), ipaddress.ip_network("10.1.2.0/24"), "fd00::/64"]
    assert fleet_name_constraints(names, networks) == [
        "gpu-1",
        "ai.example.com",  # not a whole TLD or registered domain: example.com alone would stay example.com
        "10.1.0.0/16",
        "192.168.9.4/32",
        "fd00::/64",
    ]


def _settings(name: str, **data: object) -> object:
    base = {"firewall_client_subnets": ["10.20.0.0/16"], "firewall_admin_subnets": ["10.20.0.0/24"]}
    return settings_for_host(name, {"auth_enabled": False, **base, **data}, {})


def test_the_fleet_permits_every_hosts_names_or_the_setting(tmp_path: Path) -> None:
    ca_dir = Path(".fleet/pki")
    fleet = {
        "gpu-1": _settings("gpu-1", nginx_server_names=["gpu-1.ai.example.com"]),
        "gpu-2": _settings("gpu-2", tls_extra_sans=["ollama.lan"]),
        "byo": _settings("byo", tls_ca_dir=str(tmp_path / "other")),  # another CA: not this one's business
    }
    addresses = {"gpu-1": "10.20.0.1", "gpu-2": "192.168.50.2", "byo": "byo.elsewhere.net"}
    assert permitted_for_fleet(fleet, addresses, ca_dir) == [  # type: ignore[arg-type]
        "ai.example.com",
        "gpu-1",
        "gpu-2",
        "ollama.lan",
        "10.20.0.0/16",
        "192.168.50.2/32",
    ]
    fleet["gpu-2"] = _settings("gpu-2", tls_ca_name_constraints=["lan", "10.0.0.0/8"])
    assert permitted_for_fleet(fleet, addresses, ca_dir) == ["lan", "10.0.0.0/8"]  # type: ignore[arg-type]


def test_an_unconstrained_ca_rolls_to_a_constrained_one_with_both_trusted_meanwhile(tmp_path: Path) -> None:
    ca_dir = tmp_path / "pki"
    old = FleetCA.load_or_create(ca_dir)  # as every fleet CA was made before name constraints
    assert old.constraints is None
    sans = ["gpu-1", "10.20.0.1"]
    old_host_cert, _ = old.issue("gpu-1", sans)
    carried = old.trust_pem  # what the hosts hold in /etc/ollama-fleet/tls/ca.pem

    # 1. roll: the next CA is trusted beside the old one, which still signs: no host certificate changes yet.
    rolled = roll_ca(ca_dir, FLEET)
    [next_ca] = rolled.also_trusted
    assert rolled.fingerprint == old.fingerprint and ca_constraints(next_ca) == FLEET
    assert (
        (ca_dir / CA_CERT).read_text()
        == rolled.trust_pem
        == carried + next_ca.public_bytes(Encoding.PEM).decode()
    )
    assert stat.S_IMODE((ca_dir / NEXT / CA_KEY).stat().st_mode) == 0o600
    assert ca_change_problem(carried, rolled, ca_dir) is None
    assert reissue_reason(old_host_cert, sans, 30, rolled) is None
    assert "may sign for: gpu-1, gpu-1.ai.example.com" in describe(rolled)
    with pytest.raises(PkiError, match="middle of a roll: a next CA waits"):
        roll_ca(ca_dir, FLEET)
    with pytest.raises(PkiError, match="no switched roll to finish"):
        finish_roll(ca_dir)

    # 2. switch: the next CA signs; hosts still carrying the old CA pass the guard and get new certificates.
    new = switch_ca(ca_dir)
    assert new.fingerprint == fingerprint(next_ca) and new.constraints == FLEET
    assert [fingerprint(c) for c in new.also_trusted] == [old.fingerprint]
    retired = ca_dir / RETIRED / old.fingerprint.removeprefix("sha256:")[:16]
    assert (retired / CA_CERT).read_text() == carried and not (ca_dir / NEXT).exists()
    assert stat.S_IMODE((retired / CA_KEY).stat().st_mode) == 0o600
    for host_carries in (carried, rolled.trust_pem):
        assert ca_change_problem(host_carries, new, ca_dir) is None
    assert reissue_reason(old_host_cert, sans, 30, new) == "not issued by this fleet CA"
    new_host_cert, _ = new.issue("gpu-1", sans)
    # Clients and gateways given the two-CA ca.pem accept hosts on either side of the change.
    for bundle in (rolled.trust_pem, new.trust_pem):
        (tmp_path / "bundle.pem").write_text(bundle)
        for cert in (old_host_cert, new_host_cert):
            assert openssl_verify(tmp_path / "bundle.pem", cert, tmp_path).returncode == 0

    # 3. finish: ca.pem trusts the new CA alone.
    done = finish_roll(ca_dir)
    assert done.trusted_fingerprints == {new.fingerprint}
    assert (ca_dir / CA_CERT).read_text() == new.cert_pem
    assert openssl_verify(ca_dir / CA_CERT, new_host_cert, tmp_path).returncode == 0
    assert openssl_verify(ca_dir / CA_CERT, old_host_cert, tmp_path).returncode != 0  # the old CA is gone
    assert ca_change_problem(new.trust_pem, done, ca_dir) is None  # hosts that took step 2's ca.pem
    # A host still carrying the old CA alone after the finish missed the roll: the guard stops the deploy.
    assert ca_change_problem(carried, done, ca_dir) is not None


def test_the_ca_command_rolls_the_inventorys_ca(tmp_path: Path) -> None:
    def ca(action: str) -> str:
        done = subprocess.run(
            [sys.executable, "-m", "ollama_fleet.cli", "ca", action, str(inventory)],
            capture_output=True, text=True, cwd=tmp_path, stdin=subprocess.DEVNULL, check=False,
        )  # fmt: skip
        assert done.returncode == 0, done.stderr
        return done.stdout

    ca_dir = tmp_path / "pki"
    FleetCA.load_or_create(ca_dir)
    inventory = tmp_path / "inventory.py"
    inventory.write_text(
        "hosts = [\n"
        '    ("gpu-1", {"ssh_hostname": "10.20.0.1", "auth_enabled": False,\n'
        '      "firewall_client_subnets": ["10.20.0.0/16"], "firewall_admin_subnets": ["10.20.0.0/24"],\n'
        f'      "tls_ca_dir": "{ca_dir}"}}),\n'
        "]\n"
    )
    assert "signs; may sign for: ANY NAME (no name constraints)" in ca("show")
    rolled = ca("roll")
    assert "signs; may sign for: ANY NAME" in rolled and "also trusted (a roll in progress)" in rolled
    assert "  may sign for: gpu-1, 10.20.0.0/16" in rolled and "ollama-fleet ca switch inventory.py" in rolled
    switched = ca("switch")
    assert "signs; may sign for: gpu-1, 10.20.0.0/16" in switched and "ollama-fleet ca finish" in switched
    assert "also trusted" not in ca("finish")
    assert FleetCA.load_or_create(ca_dir).constraints == ["gpu-1", "10.20.0.0/16"]
