"""The fleet CA: created once with safe modes, issues verifiable host certificates, knows when to reissue."""

from __future__ import annotations

import datetime as dt
import ipaddress
import multiprocessing
import stat
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID
from cryptography.x509.verification import PolicyBuilder, Store

from ollama_fleet.pki import CA_CERT, CA_KEY, FleetCA, PkiError, host_sans, needs_reissue, reissue_reason
from ollama_fleet.settings import settings_for_host

pytestmark = pytest.mark.unit

SANS = ["ollama1.lan", "ollama1", "10.0.0.11"]


@pytest.fixture
def ca(tmp_path: Path) -> FleetCA:
    return FleetCA.load_or_create(tmp_path / "pki")


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_created_ca_has_private_modes(tmp_path: Path) -> None:
    ca_dir = tmp_path / ".fleet" / "pki"
    FleetCA.load_or_create(ca_dir)
    assert _mode(ca_dir) == 0o700
    assert _mode(ca_dir / CA_KEY) == 0o600
    assert _mode(ca_dir / CA_CERT) == 0o644
    assert sorted(p.name for p in ca_dir.iterdir()) == sorted(
        [".lock", CA_CERT, CA_KEY]
    )  # no temporary left over


def test_load_or_create_is_idempotent(tmp_path: Path) -> None:
    first = FleetCA.load_or_create(tmp_path)
    files = {name: (tmp_path / name).read_bytes() for name in (CA_CERT, CA_KEY)}
    second = FleetCA.load_or_create(tmp_path)
    assert second.cert_pem == first.cert_pem
    assert {name: (tmp_path / name).read_bytes() for name in (CA_CERT, CA_KEY)} == files


def _create_in_child(ca_dir: str) -> str:
    return FleetCA.load_or_create(Path(ca_dir)).cert_pem


def test_concurrent_creation_yields_one_ca(tmp_path: Path) -> None:
    """Several deploy processes starting at once must not each make (and hand out) their own CA."""
    with multiprocessing.get_context("fork").Pool(4) as pool:
        pems = pool.map(_create_in_child, [str(tmp_path / "pki")] * 8)
    assert len(set(pems)) == 1
    assert pems[0] == (tmp_path / "pki" / CA_CERT).read_text()


def test_ca_certificate_is_a_ca_for_servers_only(ca: FleetCA) -> None:
    constraints = ca.cert.extensions.get_extension_for_class(x509.BasicConstraints)
    usage = ca.cert.extensions.get_extension_for_class(x509.KeyUsage).value
    assert constraints.critical and constraints.value.ca and constraints.value.path_length == 0
    assert usage.key_cert_sign and usage.crl_sign
    assert isinstance(ca.cert.public_key(), ec.EllipticCurvePublicKey)
    assert ca.cert.public_key().curve.name == "secp256r1"  # type: ignore[union-attr]
    assert ca.cert.not_valid_after_utc - ca.cert.not_valid_before_utc > dt.timedelta(days=3640)


def test_two_fleets_get_distinct_ca_names(tmp_path: Path) -> None:
    first = FleetCA.load_or_create(tmp_path / "a")
    second = FleetCA.load_or_create(tmp_path / "b")
    assert first.cert.subject != second.cert.subject


def test_missing_key_is_an_error_not_a_new_ca(tmp_path: Path) -> None:
    FleetCA.load_or_create(tmp_path)
    cert_before = (tmp_path / CA_CERT).read_bytes()
    (tmp_path / CA_KEY).unlink()
    with pytest.raises(PkiError, match="restore the key"):
        FleetCA.load_or_create(tmp_path)
    assert (tmp_path / CA_CERT).read_bytes() == cert_before
    assert not (tmp_path / CA_KEY).exists()


def test_interrupted_creation_finishes_with_the_existing_key(tmp_path: Path) -> None:
    FleetCA.load_or_create(tmp_path)
    key_before = (tmp_path / CA_KEY).read_bytes()
    (tmp_path / CA_CERT).unlink()  # as if the process died between writing the key and the certificate
    ca = FleetCA.load_or_create(tmp_path)
    assert (tmp_path / CA_KEY).read_bytes() == key_before
    assert ca.cert.public_key() == serialization.load_pem_private_key(key_before, None).public_key()


def test_key_readable_by_others_is_refused_without_showing_it(tmp_path: Path) -> None:
    FleetCA.load_or_create(tmp_path)
    (tmp_path / CA_KEY).chmod(0o644)
    with pytest.raises(PkiError) as caught:
        FleetCA.load_or_create(tmp_path)
    assert "chmod 600" in str(caught.value)
    assert "PRIVATE KEY" not in str(caught.value)


def test_certificate_of_another_key_is_refused(tmp_path: Path) -> None:
    FleetCA.load_or_create(tmp_path / "a")
    FleetCA.load_or_create(tmp_path / "b")
    (tmp_path / "a" / CA_CERT).write_bytes((tmp_path / "b" / CA_CERT).read_bytes())
    with pytest.raises(PkiError, match="does not belong to the key"):
        FleetCA.load_or_create(tmp_path / "a")


def test_repr_shows_no_key(ca: FleetCA) -> None:
    assert "PRIVATE" not in repr(ca) and "ollama-fleet CA" in repr(ca)


def _leaf(ca: FleetCA, sans: list[str] = SANS, days: int = 397) -> tuple[x509.Certificate, str, str]:
    cert_pem, key_pem = ca.issue("ollama1.lan", sans, days=days)
    return x509.load_pem_x509_certificate(cert_pem.encode()), cert_pem, key_pem


def test_issued_certificate_verifies_for_each_name_and_ip(ca: FleetCA) -> None:
    cert, _, _ = _leaf(ca)
    store = Store([ca.cert])
    for subject in (
        x509.DNSName("ollama1.lan"),
        x509.DNSName("ollama1"),
        x509.IPAddress(ipaddress.ip_address("10.0.0.11")),
    ):
        chain = PolicyBuilder().store(store).build_server_verifier(subject).verify(cert, [])
        assert chain[-1] == ca.cert
    with pytest.raises(x509.verification.VerificationError):
        PolicyBuilder().store(store).build_server_verifier(x509.DNSName("other.lan")).verify(cert, [])


def test_issued_certificate_is_a_server_leaf(ca: FleetCA) -> None:
    cert, _, key_pem = _leaf(ca, days=90)
    extensions = cert.extensions
    assert extensions.get_extension_for_class(x509.ExtendedKeyUsage).value == x509.ExtendedKeyUsage(
        [ExtendedKeyUsageOID.SERVER_AUTH]
    )
    assert extensions.get_extension_for_class(x509.BasicConstraints).value.ca is False
    assert extensions.get_extension_for_class(x509.KeyUsage).value.key_cert_sign is False
    lifetime = cert.not_valid_after_utc - cert.not_valid_before_utc
    assert dt.timedelta(days=90) <= lifetime <= dt.timedelta(days=90, minutes=6)
    key = serialization.load_pem_private_key(key_pem.encode(), None)
    assert key.public_key() == cert.public_key()
    assert key_pem.startswith("-----BEGIN PRIVATE KEY-----")  # PKCS#8, what nginx reads


def test_each_issue_makes_a_new_key(ca: FleetCA) -> None:
    assert _leaf(ca)[2] != _leaf(ca)[2]


@pytest.mark.parametrize(("sans", "problem"), [([], "at least one SAN"), (["bad name"], "'bad name'")])
def test_issue_refuses_bad_sans(ca: FleetCA, sans: list[str], problem: str) -> None:
    with pytest.raises(PkiError, match=problem):
        ca.issue("x", sans)


def test_host_sans_are_names_extra_sans_and_address(tmp_path: Path) -> None:
    data = {
        "firewall_enabled": False,
        "auth_enabled": False,
        "nginx_server_names": ["ollama1.lan", "OLLAMA1.lan"],
        "tls_extra_sans": ["ollama.example.net", "10.0.0.11"],
    }
    s = settings_for_host("ollama1", data, {})
    assert host_sans(s, ["10.0.0.11", "fd0a:d5::11"]) == [
        "ollama1.lan",
        "ollama.example.net",
        "10.0.0.11",
        "fd0a:d5::11",
    ]
    default = settings_for_host("gpu7.lan", {"firewall_enabled": False, "auth_enabled": False}, {})
    assert host_sans(default, []) == ["gpu7.lan"]


def test_fresh_certificate_needs_no_reissue_in_any_san_order_or_case(ca: FleetCA) -> None:
    _, cert_pem, _ = _leaf(ca)
    assert not needs_reissue(cert_pem, SANS, 30, ca)
    assert not needs_reissue(cert_pem.encode(), ["10.0.0.11", "OLLAMA1", "ollama1.lan"], 30, ca)


@pytest.mark.parametrize(
    ("sans", "reason"),
    [
        (["ollama1.lan", "ollama1"], "SANs differ: missing [], extra ['10.0.0.11']"),
        ([*SANS, "10.0.0.12"], "SANs differ: missing ['10.0.0.12'], extra []"),
    ],
)
def test_changed_sans_need_reissue(ca: FleetCA, sans: list[str], reason: str) -> None:
    _, cert_pem, _ = _leaf(ca)
    assert reissue_reason(cert_pem, sans, 30, ca) == reason


def test_expiry_within_renewal_window_needs_reissue(ca: FleetCA) -> None:
    cert, cert_pem, _ = _leaf(ca, days=60)
    just_outside = cert.not_valid_after_utc - dt.timedelta(days=30, hours=1)
    just_inside = cert.not_valid_after_utc - dt.timedelta(days=29, hours=23)
    assert reissue_reason(cert_pem, SANS, 30, ca, now=just_outside) is None
    assert (
        reissue_reason(cert_pem, SANS, 30, ca, now=just_inside)
        == "expires in 29 days (renewal 30 days ahead)"
    )
    assert needs_reissue(cert_pem, SANS, 61, ca)


def test_certificate_of_another_ca_needs_reissue(tmp_path: Path, ca: FleetCA) -> None:
    other = FleetCA.load_or_create(tmp_path / "other")
    _, cert_pem, _ = _leaf(other)
    assert reissue_reason(cert_pem, SANS, 30, ca) == "not issued by this fleet CA"


@pytest.mark.parametrize(
    ("cert_pem", "reason"), [(None, "no certificate"), ("", "no certificate"), ("junk", "not PEM")]
)
def test_missing_or_unreadable_certificate_needs_reissue(
    ca: FleetCA, cert_pem: str | None, reason: str
) -> None:
    assert reason in (reissue_reason(cert_pem, SANS, 30, ca) or "")


def test_pair_problem_tells_a_matching_pair_from_a_foreign_key(tmp_path: Path) -> None:
    from ollama_fleet.pki import pair_problem

    authority = FleetCA.load_or_create(tmp_path / "ca")
    cert, key = authority.issue("h1.lan", ["h1.lan"])
    _, other = authority.issue("h2.lan", ["h2.lan"])
    assert pair_problem(cert, key) is None
    assert (
        pair_problem(cert, other) == "the key does not belong to the certificate (their public keys differ)"
    )
    assert pair_problem("junk", key) == "the certificate is not a PEM certificate"
    assert pair_problem(cert, "junk") == "the key is not an unencrypted PEM private key"
