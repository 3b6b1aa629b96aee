"""The fleet CA: created once on the controller, it issues each host a server certificate.

Keys are EC P-256 (ECDSA): every TLS 1.2/1.3 client of the last decade supports it, signatures and
handshakes are far smaller and cheaper than RSA's, and RSA 2048 would add compatibility only for clients
that the TLS 1.2+ floor already turns away.

The CA's private key lives only in `ca_dir/ca-key.pem` (mode 0600, directory 0700). Nothing here prints,
logs or puts a key into an exception message; `FleetCA`'s repr shows the CA's subject only.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import ipaddress
import os
import secrets
from collections.abc import Sequence
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from ollama_fleet.localfiles import exclusive_lock
from ollama_fleet.settings import FleetSettings
from ollama_fleet.settings.rules import DNS_NAME

CA_CERT = "ca.pem"
CA_KEY = "ca-key.pem"
CA_DAYS = 3650  # host certificates are short-lived and reissued; the CA is what clients are given once
CLOCK_SKEW = dt.timedelta(minutes=5)  # a host whose clock lags a little must still accept a new cert


class PkiError(Exception):
    """A problem with the fleet CA or a certificate; never carries key material."""


class FleetCA:
    """A loaded fleet CA: its certificate and its signing key."""

    __slots__ = ("_key", "cert", "directory")

    def __init__(self, cert: x509.Certificate, key: ec.EllipticCurvePrivateKey, directory: Path) -> None:
        self.cert = cert
        self._key = key
        self.directory = directory

    def __repr__(self) -> str:
        return f"<FleetCA {self.cert.subject.rfc4514_string()} in {self.directory}>"

    @classmethod
    def load_or_create(cls, ca_dir: Path) -> FleetCA:
        """Load the CA from `ca_dir`, creating it first if the directory holds none. Safe to call from
        several processes at once: creation happens under a lock, so exactly one CA ever exists."""
        ca_dir = Path(ca_dir)
        ca_dir.parent.mkdir(parents=True, exist_ok=True)
        with contextlib.suppress(FileExistsError):  # another process may be creating it right now
            ca_dir.mkdir(mode=0o700)
            ca_dir.chmod(0o700)  # mkdir's mode is masked by the umask
        with exclusive_lock(ca_dir / ".lock"):
            cert_path, key_path = ca_dir / CA_CERT, ca_dir / CA_KEY
            if cert_path.exists() and not key_path.exists():
                raise PkiError(
                    f"{cert_path} exists but {key_path} is missing: restore the key from a backup. "
                    "A new CA instead would make every client that trusts the old one reject the fleet."
                )
            if not key_path.exists():
                _write_private(key_path, _private_pem(ec.generate_private_key(ec.SECP256R1())))
            key = _load_key(key_path)
            if not cert_path.exists():  # a new key, or a creation interrupted before the cert was written
                _write_public(cert_path, _self_signed(key).public_bytes(serialization.Encoding.PEM))
            return cls(_load_ca_cert(cert_path, key), key, ca_dir)

    @classmethod
    def load_existing(cls, ca_dir: Path) -> FleetCA | None:
        """The CA in `ca_dir`, or None when it holds none yet (nothing is created)."""
        ca_dir = Path(ca_dir)
        if not (ca_dir / CA_CERT).exists() and not (ca_dir / CA_KEY).exists():
            return None
        return cls.load_or_create(ca_dir)

    @property
    def fingerprint(self) -> str:
        return fingerprint(self.cert)

    @property
    def cert_pem(self) -> str:
        """The CA certificate (ca.pem): what hosts and clients trust."""
        return self.cert.public_bytes(serialization.Encoding.PEM).decode()

    def issue(self, common_name: str, sans: Sequence[str], days: int = 397) -> tuple[str, str]:
        """A new server certificate and private key for `sans` (DNS names and IPs): (cert_pem, key_pem).
        key_pem is SECRET: hand it straight to an operation that uploads it without showing it."""
        if not sans:
            raise PkiError(f"certificate for {common_name!r} needs at least one SAN")
        key = ec.generate_private_key(ec.SECP256R1())
        now = dt.datetime.now(dt.UTC)
        ca_ski = self.cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
        cert = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)]))
            .issuer_name(self.cert.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - CLOCK_SKEW)
            .not_valid_after(now + dt.timedelta(days=days))
            .add_extension(x509.SubjectAlternativeName([general_name(san) for san in sans]), critical=False)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(_key_usage(cert_sign=False), critical=True)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ca_ski), critical=False
            )
            .sign(self._key, hashes.SHA256())
        )
        return cert.public_bytes(serialization.Encoding.PEM).decode(), _private_pem(key).decode()

    def signed(self, cert: x509.Certificate) -> bool:
        """True when this CA issued `cert` (issuer name and signature both check out)."""
        try:
            cert.verify_directly_issued_by(self.cert)
        except (ValueError, TypeError, InvalidSignature):
            return False
        return True


def fingerprint(cert: x509.Certificate) -> str:
    """`sha256:<hex>` of the certificate's DER: as `openssl x509 -fingerprint -sha256` shows it."""
    return "sha256:" + cert.fingerprint(hashes.SHA256()).hex()


ROLL_THE_CA = (
    "point tls_ca_dir at the fleet's CA (a relative path is relative to the fleet root: the inventory's "
    "directory, or its parent when that is named inventories), or, to roll the CA on purpose, deploy once "
    "with --data tls_ca_roll=true (every host gets a certificate from the CA in tls_ca_dir; give every "
    "client its ca.pem)"
)


def ca_change_problem(carried_pem: str | None, ca: FleetCA | None, ca_dir: Path) -> str | None:
    """Why deploying `ca` (None: a new CA would be created in `ca_dir`) would replace the fleet CA a host
    already carries (`carried_pem`, its installed ca.pem), or None when it would not (none carried, or the
    same CA). A silent new CA breaks every client that trusts the old ca.pem at once."""
    if not carried_pem:
        return None
    try:
        carried = x509.load_pem_x509_certificate(carried_pem.encode())
    except ValueError:
        return None  # not a certificate we could have installed: nothing a client trusts from us
    if ca is not None and fingerprint(carried) == ca.fingerprint:
        return None
    ours = (
        f"holds another CA, {ca.fingerprint} ({ca.cert.subject.rfc4514_string()})"
        if ca is not None
        else "holds no CA, so this deploy would create a new one"
    )
    return (
        f"the host carries certificates from the fleet CA {fingerprint(carried)} "
        f"({carried.subject.rfc4514_string()}), but tls_ca_dir {ca_dir} {ours}; nothing was changed on any "
        f"host: {ROLL_THE_CA}"
    )


def host_sans(s: FleetSettings, addresses: Sequence[str]) -> list[str]:
    """The SANs a host's certificate must carry: its server names (a gateway's too), the extra SANs and its
    addresses."""
    gateway_names = s.gateway.server_names if s.is_gateway else []
    names = [*s.server_names, *gateway_names, *s.tls.extra_sans, *addresses]
    seen: dict[str, str] = {}
    for name in names:
        seen.setdefault(_normalized(name), name)
    return list(seen.values())


def needs_reissue(
    cert_pem: str | bytes | None, sans: Sequence[str], renew_before_days: int, ca: FleetCA
) -> bool:
    """True when the host has no usable certificate for `sans`: see `reissue_reason`."""
    return reissue_reason(cert_pem, sans, renew_before_days, ca) is not None


def reissue_reason(
    cert_pem: str | bytes | None,
    sans: Sequence[str],
    renew_before_days: int,
    ca: FleetCA,
    now: dt.datetime | None = None,
) -> str | None:
    """Why the certificate must be reissued (missing, unreadable, not from this CA, other SANs, expiring
    within `renew_before_days`), or None when it is fine as it is."""
    if not cert_pem:
        return "no certificate"
    try:
        cert = x509.load_pem_x509_certificate(cert_pem.encode() if isinstance(cert_pem, str) else cert_pem)
    except ValueError:
        return "the certificate is not PEM"
    if not ca.signed(cert):
        return "not issued by this fleet CA"
    have, want = set(cert_sans(cert)), {_normalized(san) for san in sans}
    if have != want:
        return f"SANs differ: missing {sorted(want - have)}, extra {sorted(have - want)}"
    now = now or dt.datetime.now(dt.UTC)
    left = cert.not_valid_after_utc - now
    if left <= dt.timedelta(days=renew_before_days):
        return f"expires in {left.days} days (renewal {renew_before_days} days ahead)"
    return None


def pair_problem(cert_pem: str, key_pem: str) -> str | None:
    """Why a certificate and a private key cannot serve together, or None (the key is never shown)."""
    try:
        cert = x509.load_pem_x509_certificate(cert_pem.encode())
    except ValueError:
        return "the certificate is not a PEM certificate"
    try:
        key = serialization.load_pem_private_key(key_pem.encode(), password=None)
    except (ValueError, TypeError):
        return "the key is not an unencrypted PEM private key"
    spki = serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    if cert.public_key().public_bytes(*spki) != key.public_key().public_bytes(*spki):
        return "the key does not belong to the certificate (their public keys differ)"
    return None


def cert_sans(cert: x509.Certificate) -> list[str]:
    """A certificate's SANs as normalized text: lowercase DNS names, IPs in canonical form."""
    try:
        names = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return []
    dns = names.get_values_for_type(x509.DNSName)
    ips = names.get_values_for_type(x509.IPAddress)
    return [*(name.lower() for name in dns), *(str(ip) for ip in ips)]


def general_name(san: str) -> x509.GeneralName:
    """One SAN: an IP address when it parses as one, else a DNS name (ASCII, so IDNA names as xn--)."""
    try:
        return x509.IPAddress(ipaddress.ip_address(san))
    except ValueError:
        pass
    if not DNS_NAME.fullmatch(san):
        raise PkiError(f"SAN {san!r} is neither an IP address nor a DNS name")
    return x509.DNSName(san.lower())


def _normalized(san: str) -> str:
    try:
        return str(ipaddress.ip_address(san))
    except ValueError:
        return san.lower()


def _key_usage(cert_sign: bool) -> x509.KeyUsage:
    return x509.KeyUsage(
        digital_signature=True,
        content_commitment=False,
        key_encipherment=False,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=cert_sign,
        crl_sign=cert_sign,
        encipher_only=False,
        decipher_only=False,
    )


def _self_signed(key: ec.EllipticCurvePrivateKey) -> x509.Certificate:
    # A random suffix keeps two fleets' CAs apart for clients that trust both (chains are built by name).
    name = x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "ollama-fleet"),
            x509.NameAttribute(NameOID.COMMON_NAME, f"ollama-fleet CA {secrets.token_hex(4)}"),
        ]
    )
    now = dt.datetime.now(dt.UTC)
    return (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - CLOCK_SKEW)
        .not_valid_after(now + dt.timedelta(days=CA_DAYS))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(_key_usage(cert_sign=True), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )


def _private_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def _load_key(path: Path) -> ec.EllipticCurvePrivateKey:
    mode = path.stat().st_mode & 0o777
    if mode & 0o077:
        raise PkiError(f"{path} is readable by others (mode {mode:04o}); run: chmod 600 {path}")
    try:
        key = serialization.load_pem_private_key(path.read_bytes(), password=None)
    except (ValueError, TypeError):
        raise PkiError(f"{path} is not an unencrypted PEM private key") from None
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise PkiError(f"{path} is not an EC key; the fleet CA uses EC P-256")
    return key


def _load_ca_cert(path: Path, key: ec.EllipticCurvePrivateKey) -> x509.Certificate:
    try:
        cert = x509.load_pem_x509_certificate(path.read_bytes())
    except ValueError:
        raise PkiError(f"{path} is not a PEM certificate") from None
    if cert.public_key() != key.public_key():
        raise PkiError(f"{path} does not belong to the key in {path.with_name(CA_KEY)}")
    if cert.not_valid_after_utc <= dt.datetime.now(dt.UTC):
        raise PkiError(f"the fleet CA in {path} expired on {cert.not_valid_after_utc:%Y-%m-%d}")
    return cert


def _write_private(path: Path, data: bytes) -> None:
    """Write a secret: created 0600 under a temporary name, then renamed, so it is never readable by others
    and never half-written under its real name."""
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.unlink(missing_ok=True)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    tmp.replace(path)


def _write_public(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_bytes(data)
    tmp.chmod(0o644)
    tmp.replace(path)
