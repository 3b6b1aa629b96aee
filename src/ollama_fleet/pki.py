"""The fleet CA: created once on the controller, it issues each host a server certificate.

Keys are EC P-256 (ECDSA): every TLS 1.2/1.3 client of the last decade supports it, signatures and
handshakes are far smaller and cheaper than RSA's, and RSA 2048 would add compatibility only for clients
that the TLS 1.2+ floor already turns away.

A new CA carries critical X.509 name constraints: it can sign only for the fleet's DNS names and subnets
(`fleet_name_constraints`), so a stolen CA key cannot impersonate other sites to the clients that trust
ca.pem. A CA is rolled in three steps, each followed by a deploy: `roll_ca` (ca.pem trusts a next CA too),
`switch_ca` (the next CA signs, ca.pem still trusts the old one) and `finish_roll` (the old one goes).

The CA's private key lives only in `ca_dir/ca-key.pem` (mode 0600, directory 0700). Nothing here prints,
logs or puts a key into an exception message; `FleetCA`'s repr shows the CA's subject only.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import ipaddress
import os
import secrets
import shutil
from collections.abc import Iterable, Mapping, Sequence
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
NEXT = "next"  # ca_dir/next/: the CA a roll switches to, trusted in ca.pem before it signs
RETIRED = "retired"  # ca_dir/retired/<fingerprint>/: a rolled CA's files, kept for the operator
CA_DAYS = 3650  # host certificates are short-lived and reissued; the CA is what clients are given once
CLOCK_SKEW = dt.timedelta(minutes=5)  # a host whose clock lags a little must still accept a new cert


class PkiError(Exception):
    """A problem with the fleet CA or a certificate; never carries key material."""


class FleetCA:
    """A loaded fleet CA: its certificate and its signing key."""

    __slots__ = ("_key", "also_trusted", "cert", "directory")

    def __init__(
        self,
        cert: x509.Certificate,
        key: ec.EllipticCurvePrivateKey,
        directory: Path,
        also_trusted: Sequence[x509.Certificate] = (),
    ) -> None:
        self.cert = cert
        self._key = key
        self.directory = directory
        # During a roll: the old CA(s) ca.pem still holds after this one, so clients and gateways trust both.
        self.also_trusted = list(also_trusted)

    def __repr__(self) -> str:
        return f"<FleetCA {self.cert.subject.rfc4514_string()} in {self.directory}>"

    @classmethod
    def load_or_create(cls, ca_dir: Path, permitted: Sequence[str] = ()) -> FleetCA:
        """Load the CA from `ca_dir`, creating it first if the directory holds none, name-constrained to
        `permitted` (DNS names and IP networks; empty: unconstrained). Safe to call from several processes at
        once: creation happens under a lock, so exactly one CA ever exists."""
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
                new_key = ec.generate_private_key(ec.SECP256R1())
                new_cert = _self_signed(new_key, permitted)  # first: bad constraints leave nothing behind
                _write_private(key_path, _private_pem(new_key))
                _write_public(cert_path, new_cert.public_bytes(serialization.Encoding.PEM))
            key = _load_key(key_path)
            if not cert_path.exists():  # a new key, or a creation interrupted before the cert was written
                pem = _self_signed(key, permitted).public_bytes(serialization.Encoding.PEM)
                _write_public(cert_path, pem)
            cert, *also_trusted = _load_ca_certs(cert_path, key)
            return cls(cert, key, ca_dir, also_trusted)

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
        """The CA certificate alone."""
        return self.cert.public_bytes(serialization.Encoding.PEM).decode()

    @property
    def trust_pem(self) -> str:
        """ca.pem: what hosts and clients trust (this CA, and during a roll the old one after it)."""
        certs = [self.cert, *self.also_trusted]
        return "".join(c.public_bytes(serialization.Encoding.PEM).decode() for c in certs)

    @property
    def trusted_fingerprints(self) -> set[str]:
        return {fingerprint(c) for c in (self.cert, *self.also_trusted)}

    @property
    def constraints(self) -> list[str] | None:
        """The names and networks this CA may sign for, or None when it is not name-constrained."""
        return ca_constraints(self.cert)

    def issue(self, common_name: str, sans: Sequence[str], days: int = 397) -> tuple[str, str]:
        """A new server certificate and private key for `sans` (DNS names and IPs): (cert_pem, key_pem).
        key_pem is SECRET: hand it straight to an operation that uploads it without showing it."""
        if not sans:
            raise PkiError(f"certificate for {common_name!r} needs at least one SAN")
        outside = outside_constraints(self.cert, sans)
        if outside:
            raise PkiError(
                f"the fleet CA {self.fingerprint} may sign only for {', '.join(self.constraints or [])}, "
                f"not for {', '.join(outside)}: {WIDEN_CONSTRAINTS}"
            )
        key = ec.generate_private_key(ec.SECP256R1())
        now = dt.datetime.now(dt.UTC)
        ca_ski = self.cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
        names = [general_name(san) for san in sans]
        # OpenSSL checks a dotted CN against a CA's DNS constraints when the certificate has no DNS SAN (an
        # IP-only host whose CN is its address would fail): such a certificate gets an empty subject and a
        # critical SAN instead (RFC 5280 4.2.1.6); the CN is informational, clients match the SANs.
        permitted = self.constraints
        empty_subject = (
            permitted is not None
            and not any(isinstance(n, x509.DNSName) for n in names)
            and "." in common_name
            and not _dns_permitted(common_name, permitted)
        )
        subject = [] if empty_subject else [x509.NameAttribute(NameOID.COMMON_NAME, common_name)]
        cert = (
            x509.CertificateBuilder()
            .subject_name(x509.Name(subject))
            .issuer_name(self.cert.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - CLOCK_SKEW)
            .not_valid_after(now + dt.timedelta(days=days))
            .add_extension(x509.SubjectAlternativeName(names), critical=empty_subject)
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
    if ca is not None and fingerprint(carried) in ca.trusted_fingerprints:
        return None  # the same CA, or the old one of a roll (ca.pem trusts both)
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


def _self_signed(key: ec.EllipticCurvePrivateKey, permitted: Sequence[str] = ()) -> x509.Certificate:
    # A random suffix keeps two fleets' CAs apart for clients that trust both (chains are built by name).
    name = x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "ollama-fleet"),
            x509.NameAttribute(NameOID.COMMON_NAME, f"ollama-fleet CA {secrets.token_hex(4)}"),
        ]
    )
    now = dt.datetime.now(dt.UTC)
    builder = (
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
    )
    if permitted:
        builder = builder.add_extension(name_constraints(permitted), critical=True)
    return builder.sign(key, hashes.SHA256())


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


# --- name constraints and the CA roll ----------------------------------------------------------------------

ROLL_COMMAND = "ollama-fleet ca roll inventory.py"
WIDEN_CONSTRAINTS = (
    "add the name (or a domain or subnet holding it) to tls_ca_name_constraints and roll the CA to one "
    f"that may sign for it ({ROLL_COMMAND}; docs/keys-and-tls.md, Rolling the CA)"
)
NameConstraintNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


def fleet_name_constraints(
    names: Iterable[str], networks: Iterable[NameConstraintNetwork | str]
) -> list[str]:
    """What a new fleet CA may sign for: `names` (host names, server names, extra SANs, service addresses)
    and `networks` (the client subnets the hosts serve). A name of three labels or more stands for its parent
    domain (gpu-1.ai.example.com: ai.example.com), so a host added to the fleet's domain later needs no new
    CA; shorter names stand for themselves (never a whole TLD such as com). An IP address outside every
    network stands for itself (/32, /128)."""
    nets = [ipaddress.ip_network(n, strict=False) for n in networks]
    domains: list[str] = []
    for name in names:
        try:
            address = ipaddress.ip_address(name.strip("[]"))
        except ValueError:
            if not DNS_NAME.fullmatch(name):
                continue  # an inventory name no certificate can carry (@local, @docker/...): not a SAN
            labels = name.lower().rstrip(".").split(".")
            domains.append(".".join(labels[1:]) if len(labels) >= 3 else ".".join(labels))
            continue
        if not any(address in n for n in nets if n.version == address.version):
            nets.append(ipaddress.ip_network(address))
    kept = [d for d in dict.fromkeys(domains) if not any(d.endswith("." + other) for other in domains)]
    collapsed = [
        *ipaddress.collapse_addresses(n for n in nets if isinstance(n, ipaddress.IPv4Network)),
        *ipaddress.collapse_addresses(n for n in nets if isinstance(n, ipaddress.IPv6Network)),
    ]
    return [*kept, *(str(n) for n in collapsed)]


def name_constraints(permitted: Sequence[str]) -> x509.NameConstraints:
    """The critical extension of a new CA: only `permitted` DNS names and IP networks. A kind with nothing
    permitted is excluded whole (RFC 5280 leaves a kind with no subtree unconstrained)."""
    subtrees: list[x509.GeneralName] = []
    for entry in permitted:
        try:
            subtrees.append(x509.IPAddress(ipaddress.ip_network(entry, strict=False)))
        except ValueError:
            if not DNS_NAME.fullmatch(entry):
                raise PkiError(f"name constraint {entry!r} is neither an IP network nor a DNS name") from None
            subtrees.append(x509.DNSName(entry.lower()))
    excluded: list[x509.GeneralName] = []
    if not any(isinstance(s, x509.IPAddress) for s in subtrees):
        excluded += [
            x509.IPAddress(ipaddress.ip_network("0.0.0.0/0")),
            x509.IPAddress(ipaddress.ip_network("::/0")),
        ]
    if not any(isinstance(s, x509.DNSName) for s in subtrees):
        excluded.append(x509.DNSName(""))  # a fleet known by addresses alone: every name excluded
    return x509.NameConstraints(permitted_subtrees=subtrees, excluded_subtrees=excluded or None)


def ca_constraints(cert: x509.Certificate) -> list[str] | None:
    """The DNS names and IP networks a CA certificate may sign for; None when it has no name constraints."""
    try:
        value = cert.extensions.get_extension_for_class(x509.NameConstraints).value
    except x509.ExtensionNotFound:
        return None
    return [str(name.value) for name in value.permitted_subtrees or []]


def outside_constraints(ca_cert: x509.Certificate, sans: Sequence[str]) -> list[str]:
    """The SANs a certificate from `ca_cert` may not carry (RFC 5280 matching: a DNS constraint holds the
    name and every name below it); empty for an unconstrained CA."""
    permitted = ca_constraints(ca_cert)
    if permitted is None:
        return []
    outside = []
    for san in sans:
        try:
            address = ipaddress.ip_address(san.strip("[]"))
        except ValueError:
            if not _dns_permitted(san, permitted):
                outside.append(san)
            continue
        networks = [ipaddress.ip_network(p) for p in permitted if _is_network(p)]
        if not any(address in n for n in networks if n.version == address.version):
            outside.append(san)
    return outside


def _dns_permitted(name: str, permitted: Sequence[str]) -> bool:
    name = name.lower().rstrip(".")
    return any(name == p or name.endswith("." + p) for p in permitted if not _is_network(p))


def _is_network(entry: str) -> bool:
    try:
        ipaddress.ip_network(entry)
    except ValueError:
        return False
    return True


def permitted_for_fleet(
    settings: Mapping[str, FleetSettings], addresses: Mapping[str, str], ca_dir: Path
) -> list[str]:
    """What a new CA in `ca_dir` may sign for: the hosts' tls_ca_name_constraints when any host sets them,
    else every name and address of the hosts using that CA (their certificates' names, the inventory names
    their certificates' subject carries, their service addresses) and their firewall_client_subnets."""
    users = {n: s for n, s in settings.items() if s.tls.mode == "fleet_ca" and s.tls.ca_dir == ca_dir}
    explicit = [entry for s in users.values() for entry in s.tls.ca_name_constraints]
    if explicit:
        return list(dict.fromkeys(explicit))
    names = [n for name, s in users.items() for n in (*host_sans(s, [addresses[name]]), s.host)]
    networks = [net for s in users.values() for net in s.firewall.client_subnets]
    return fleet_name_constraints(names, networks)


UNCONSTRAINED_WARNING = (
    "the fleet CA {fingerprint} has no name constraints: whoever steals its key can sign for any site the "
    f"fleet's clients visit; roll it to a constrained one: {ROLL_COMMAND}, then deploy (three steps, no "
    "client cut off: docs/keys-and-tls.md, Rolling the CA)"
)


def roll_ca(ca_dir: Path, permitted: Sequence[str]) -> FleetCA:
    """Roll, step 1 of 3: a next CA, constrained to `permitted`, waits in `ca_dir/next/`, and ca.pem trusts it
    after the CA that still signs. A deploy gives every host (and gateway) the two-CA ca.pem; clients are
    given it too, before `switch_ca` makes the next CA sign."""
    ca_dir = Path(ca_dir)
    ca = FleetCA.load_existing(ca_dir)
    if ca is None:
        raise PkiError(f"{ca_dir} holds no fleet CA to roll; the first deploy makes a constrained one")
    if ca.also_trusted or (ca_dir / NEXT).exists():
        raise PkiError(f"{ca_dir} is in the middle of a roll: {_roll_state(ca_dir)}")
    key = ec.generate_private_key(ec.SECP256R1())
    cert = _self_signed(key, permitted)
    with exclusive_lock(ca_dir / ".lock"):
        (ca_dir / NEXT).mkdir(mode=0o700)
        _write_private(ca_dir / NEXT / CA_KEY, _private_pem(key))
        _write_public(ca_dir / NEXT / CA_CERT, cert.public_bytes(serialization.Encoding.PEM))
        _write_public(ca_dir / CA_CERT, _pems([ca.cert, cert]))
    return FleetCA.load_or_create(ca_dir)


def switch_ca(ca_dir: Path) -> FleetCA:
    """Roll, step 2 of 3: the next CA signs from now on (the next deploy reissues every host's certificate
    from it); the old CA's files move to `ca_dir/retired/<fingerprint>/` and ca.pem still trusts it after
    the new one, so clients and gateways accept the hosts on either side of the change."""
    ca_dir = Path(ca_dir)
    old = FleetCA.load_existing(ca_dir)
    if old is None or not (ca_dir / NEXT / CA_KEY).exists():
        raise PkiError(f"{ca_dir} has no next CA to switch to: start the roll with {ROLL_COMMAND}")
    next_key = _load_key(ca_dir / NEXT / CA_KEY)
    [next_cert] = _load_ca_certs(ca_dir / NEXT / CA_CERT, next_key)
    with exclusive_lock(ca_dir / ".lock"):
        retired = ca_dir / RETIRED / old.fingerprint.removeprefix("sha256:")[:16]
        retired.mkdir(parents=True, exist_ok=True, mode=0o700)
        shutil.copy2(ca_dir / CA_KEY, retired / CA_KEY)  # copied first: an interruption loses nothing
        _write_public(retired / CA_CERT, old.cert_pem.encode())
        _write_private(ca_dir / CA_KEY, _private_pem(next_key))
        _write_public(ca_dir / CA_CERT, _pems([next_cert, old.cert]))
        shutil.rmtree(ca_dir / NEXT)
    return FleetCA.load_or_create(ca_dir)


def finish_roll(ca_dir: Path) -> FleetCA:
    """Roll, step 3 of 3: ca.pem trusts the signing CA alone (the old one's files stay under retired/)."""
    ca_dir = Path(ca_dir)
    ca = FleetCA.load_existing(ca_dir)
    if ca is None or (ca_dir / NEXT).exists() or not ca.also_trusted:
        raise PkiError(f"{ca_dir} has no switched roll to finish: {_roll_state(ca_dir)}")
    with exclusive_lock(ca_dir / ".lock"):
        _write_public(ca_dir / CA_CERT, ca.cert_pem.encode())
    return FleetCA.load_or_create(ca_dir)


def _roll_state(ca_dir: Path) -> str:
    if not (ca_dir / CA_CERT).exists():
        return "it holds no CA"
    if (ca_dir / NEXT).exists():
        return "a next CA waits: deploy, give clients ca.pem, then ollama-fleet ca switch"
    if len(x509.load_pem_x509_certificates((ca_dir / CA_CERT).read_bytes())) > 1:
        return "the new CA signs: deploy (every host gets its certificate), then ollama-fleet ca finish"
    return "no roll in progress"


def _pems(certs: Sequence[x509.Certificate]) -> bytes:
    return b"".join(c.public_bytes(serialization.Encoding.PEM) for c in certs)


def _load_ca_certs(path: Path, key: ec.EllipticCurvePrivateKey) -> list[x509.Certificate]:
    """ca.pem: the signing CA (checked against its key, unexpired), then any CA a roll still trusts."""
    first = _load_ca_cert(path, key)
    try:
        rest = x509.load_pem_x509_certificates(path.read_bytes())[1:]
    except ValueError:
        raise PkiError(f"{path} is not a PEM certificate bundle") from None
    return [first, *rest]
