"""TLS material for nginx: a certificate from the fleet CA (default) or files the operator provides.

The fleet CA and every host's issued key stay on the controller (`tls_ca_dir`, git-ignored). A host's
certificate is kept there too and reissued only when `needs_reissue` says so (SANs changed, expiry near,
another CA), so a re-run uploads the same bytes and changes nothing. The CA private key never leaves the
controller; certificate and host key go up together through `certificate_and_key` (the key 0600, never
shown).
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

from pyinfra import logger
from pyinfra.api.deploy import deploy
from pyinfra.api.operation import OperationMeta
from pyinfra.context import host
from pyinfra.facts.hardware import Ipv4Addrs
from pyinfra.operations import files

from ollama_fleet.deploys.fleet import FleetError, fleet_settings, host_data, inventory_address
from ollama_fleet.operations import textfile
from ollama_fleet.operations.addresses import StableIpv6Addresses
from ollama_fleet.operations.certificates import InstalledCertificate
from ollama_fleet.operations.secrets import Secret, certificate_and_key
from ollama_fleet.operations.together import planned_fact
from ollama_fleet.pki import (
    UNCONSTRAINED_WARNING,
    FleetCA,
    PkiError,
    ca_change_problem,
    host_sans,
    needs_reissue,
    pair_problem,
    permitted_for_fleet,
)
from ollama_fleet.render import tls_paths
from ollama_fleet.settings import FleetSettings, service_address


def host_address(s: FleetSettings) -> str | None:
    """The host's IP: its service address when it is one, else its first non-loopback IPv4."""
    candidate = service_address(s, host_data(host))
    try:
        return ipaddress.ip_address(candidate).compressed
    except ValueError:
        pass
    for addresses in (host.get_fact(Ipv4Addrs) or {}).values():
        for address in addresses:
            if not ipaddress.ip_address(address).is_loopback:
                return str(address)
    return None


def host_addresses(s: FleetSettings) -> list[str]:
    """The addresses the certificate names: the host's IPv4 and, when clients may come over IPv6, its stable
    IPv6 addresses too (the certificate must match whichever one a client dials)."""
    addresses = [address] if (address := host_address(s)) else []
    if s.service.address and s.service.address != address:
        addresses.append(s.service.address)  # a DNS name clients and the gateways dial
    if s.serves_ipv6:
        ipv6: list[str] = planned_fact(host, StableIpv6Addresses)
        addresses += ipv6
    return addresses


def issued_certificate(s: FleetSettings, ca: FleetCA, sans: list[str]) -> tuple[str, Secret]:
    """This host's certificate and key from the controller's store, reissued first when needed."""
    store = Path(s.tls.ca_dir) / "hosts" / quote(s.host, safe="")
    cert_path, key_path = store / "fullchain.pem", store / "privkey.pem"
    cert = cert_path.read_text() if cert_path.is_file() and key_path.is_file() else None
    if needs_reissue(cert, sans, s.tls.renew_before_days, ca):
        cert, key = ca.issue(s.host, sans, days=s.tls.cert_days)
        store.mkdir(parents=True, exist_ok=True, mode=0o700)
        _write(key_path, key, 0o600)
        _write(cert_path, cert, 0o644)
    assert cert is not None
    return cert, Secret(key_path.read_text())


def _write(path: Path, text: str, mode: int) -> None:
    temp = path.with_name(f".{path.name}.tmp")
    temp.unlink(missing_ok=True)
    temp.touch(mode=mode)
    temp.chmod(mode)
    temp.write_text(text)
    temp.replace(path)


def fleet_ca(s: FleetSettings) -> FleetCA:
    """The fleet CA in tls_ca_dir, created when it holds none (name-constrained to the fleet), unless this
    host already carries certificates from another CA: then FleetError (nothing exists yet to change any
    host), naming both CAs, unless tls_ca_roll asks for exactly that. Read from the host each run: one `cat`
    of its installed ca.pem. A CA without name constraints is warned about, with the command to roll it."""
    ca_dir = Path(s.tls.ca_dir)
    ca = FleetCA.load_existing(ca_dir)
    if not s.tls.ca_roll:
        carried = planned_fact(host, InstalledCertificate, path=str(tls_paths(s).ca))
        problem = ca_change_problem(carried, ca, ca_dir)
        if problem:
            raise FleetError(f"{s.host}: TLS: {problem}")
    if ca is None:
        ca = FleetCA.load_or_create(ca_dir, fleet_permitted(ca_dir))
    if ca.constraints is None:
        logger.warning(f"{host.print_prefix}{UNCONSTRAINED_WARNING.format(fingerprint=ca.fingerprint)}")
    return ca


def fleet_permitted(ca_dir: Path) -> list[str]:
    """What a new CA may sign for, from every host of this run's inventory (see permitted_for_fleet)."""
    settings = fleet_settings(host.state)
    addresses = {name: inventory_address(host, name) for name in settings}
    return permitted_for_fleet(settings, addresses, ca_dir)


@dataclass(frozen=True)
class TlsPair:
    cert: str
    key: Secret
    ca_pem: str | None  # the fleet CA's certificate; None with provided files


def tls_pair(s: FleetSettings) -> TlsPair:
    """The certificate and key this host gets (issued again first when needed), checked as a pair."""
    if s.tls.mode == "provided":
        assert s.tls.cert_file is not None and s.tls.key_file is not None  # checked by settings
        pair = TlsPair(Path(s.tls.cert_file).read_text(), Secret(Path(s.tls.key_file).read_text()), None)
    else:
        try:
            ca = fleet_ca(s)
            cert, key = issued_certificate(s, ca, host_sans(s, host_addresses(s)))
        except PkiError as exc:
            raise FleetError(f"{s.host}: TLS certificate: {exc}") from None
        pair = TlsPair(cert, key, ca.trust_pem)
    # nginx would refuse to start on a mismatched pair: say so before anything changes on any host.
    problem = pair_problem(pair.cert, pair.key.reveal())
    if problem:
        where = (
            f"tls_cert_file {s.tls.cert_file} / tls_key_file {s.tls.key_file}"
            if s.tls.mode == "provided"
            else f"the issued pair in {s.tls.ca_dir}/hosts (remove it to reissue)"
        )
        raise FleetError(f"{s.host}: TLS: {where}: {problem}")
    return pair


@deploy("TLS certificate")
def tls_material(s: FleetSettings, pair: TlsPair, reload_triggers: list[OperationMeta]) -> None:
    """Install `pair` (see tls_pair); appends to `reload_triggers` the operations whose change means nginx
    must reload."""
    paths = tls_paths(s)
    files.directory(name=f"Create {s.tls.remote_dir}", path=str(s.tls.remote_dir), mode="755")
    if pair.ca_pem is not None:
        reload_triggers.append(
            textfile.text_file(name=f"Install {paths.ca}", text=pair.ca_pem, dest=str(paths.ca))
        )
    reload_triggers.append(
        certificate_and_key(
            name=f"Install {paths.cert} and {paths.key} (secret) together",
            cert=pair.cert,
            key=pair.key,
            cert_path=str(paths.cert),
            key_path=str(paths.key),
        )
    )
