"""Network probes below HTTP: TLS handshakes, raw TCP connects, and connects from the lab's outsider netns."""

from __future__ import annotations

import json
import socket
import ssl
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

RAW_PORT_TIMEOUT = 2.0


def client_ssl_context(ca_file: Path | None) -> ssl.SSLContext:
    """Verify like a careful client: the fleet CA (or the system store), hostname/IP checked, TLS >= 1.2."""
    context = ssl.create_default_context(cafile=str(ca_file) if ca_file else None)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    return context


@dataclass(frozen=True)
class TlsFacts:
    version: str
    cipher: str
    not_after: float  # epoch seconds

    def days_left(self, now: float | None = None) -> float:
        return (self.not_after - (time.time() if now is None else now)) / 86400


def tls_handshake(address: str, port: int, context: ssl.SSLContext, timeout: float) -> TlsFacts:
    """Connect and complete a verified handshake; raises OSError/ssl.SSLError on failure."""
    with (
        socket.create_connection((address, port), timeout=timeout) as raw,
        context.wrap_socket(raw, server_hostname=address) as tls,
    ):
        cert = tls.getpeercert()
        cipher = tls.cipher()
        return TlsFacts(
            version=tls.version() or "?",
            cipher=cipher[0] if cipher else "?",
            not_after=ssl.cert_time_to_seconds(str(cert["notAfter"])) if cert else 0.0,
        )


def certificate_names(address: str, port: int, timeout: float) -> list[str]:
    """SANs of the certificate a host presents, read without verifying (to explain a mismatch)."""
    from cryptography import x509

    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    with (
        socket.create_connection((address, port), timeout=timeout) as raw,
        context.wrap_socket(raw, server_hostname=address) as tls,
    ):
        der = tls.getpeercert(binary_form=True)
    if not der:
        return []
    try:
        sans = x509.load_der_x509_certificate(der).extensions.get_extension_for_class(
            x509.SubjectAlternativeName
        )
    except x509.ExtensionNotFound:
        return []
    return [str(name.value) for name in sans.value]


def tcp_connect(address: str, port: int, timeout: float = RAW_PORT_TIMEOUT) -> str:
    """'open', 'refused' (a reset came back: not filtered) or 'timeout' (dropped: filtered)."""
    try:
        with socket.create_connection((address, port), timeout=timeout):
            return "open"
    except ConnectionRefusedError:
        return "refused"
    except TimeoutError:
        return "timeout"
    except OSError as exc:  # e.g. no route to host: an ICMP error, so something answered
        return f"error: {exc.strerror or exc}"


# Runs inside the outsider netns with the controller's python3: a TCP connect to the target port, and an
# ICMP echo as a control proving that the outsider can reach the host at all (else a timeout proves nothing).
_OUTSIDER_SCRIPT = r"""
import json, os, socket, struct, sys, time
address, port, timeout = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
def tcp():
    try:
        socket.create_connection((address, port), timeout=timeout).close()
        return "open"
    except ConnectionRefusedError:
        return "refused"
    except TimeoutError:
        return "timeout"
    except OSError as exc:
        return "error: %s" % exc
def checksum(data):
    total = sum(struct.unpack("!%dH" % (len(data) // 2), data))
    total = (total >> 16) + (total & 0xFFFF)
    return ~(total + (total >> 16)) & 0xFFFF
def ping():
    ident = os.getpid() & 0xFFFF
    body = struct.pack("!BBHHH", 8, 0, 0, ident, 1) + b"ollama-fleet"
    packet = body[:2] + struct.pack("!H", checksum(body)) + body[4:]
    with socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP) as sock:
        sock.settimeout(timeout)
        sock.sendto(packet, (address, 0))
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                data, peer = sock.recvfrom(1024)
            except TimeoutError:
                return False
            icmp = data[(data[0] & 0x0F) * 4:]
            if peer[0] == address and icmp[0] == 0 and struct.unpack("!H", icmp[4:6])[0] == ident:
                return True
    return False
print(json.dumps({"tcp": tcp(), "ping": ping()}))
"""


@dataclass(frozen=True)
class OutsiderProbe:
    tcp: str  # as tcp_connect
    ping: bool  # the host answered an ICMP echo from the outsider


def outsider_probe(netns: str, address: str, port: int, timeout: float = RAW_PORT_TIMEOUT) -> OutsiderProbe:
    """Connect to address:port from inside a network namespace; raises RuntimeError if that cannot run."""
    argv = ["ip", "netns", "exec", netns, "python3", "-c", _OUTSIDER_SCRIPT, address, str(port), str(timeout)]
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=3 * timeout + 5, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise RuntimeError(f"cannot run a probe in netns {netns!r}: {exc}") from None
    if done.returncode != 0:
        raise RuntimeError(f"cannot run a probe in netns {netns!r}: {done.stderr.strip()[-300:]}")
    result = json.loads(done.stdout)
    return OutsiderProbe(tcp=str(result["tcp"]), ping=bool(result["ping"]))


def netns_holding(ip: str) -> str | None:
    """The network namespace that has `ip` on one of its interfaces (the lab's outsider), if any."""
    try:
        listed = subprocess.run(
            ["ip", "netns", "list"], capture_output=True, text=True, timeout=10, check=False
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    for line in listed.stdout.splitlines():
        name = line.split()[0] if line.split() else ""
        if not name:
            continue
        addrs = subprocess.run(
            ["ip", "-n", name, "-j", "-4", "addr", "show"],
            capture_output=True,
            text=True,
            timeout=10,
            check=False,
        )
        try:
            interfaces = json.loads(addrs.stdout or "[]")
        except ValueError:
            continue
        for interface in interfaces:
            if any(info.get("local") == ip for info in interface.get("addr_info", [])):
                return name
    return None
