"""Network probes below HTTP: TLS handshakes, raw TCP connects, and connects from the lab's outsider netns."""

from __future__ import annotations

import functools
import json
import socket
import ssl
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

# How long a connect waits when nothing answers and nothing is being proven by the wait (a positive control,
# the TLS handshake): long enough for one SYN retransmission on a lossy network.
RAW_PORT_TIMEOUT = 2.0

# A closed port is proven by silence, and silence is only worth the wait a reply would have taken. So the
# probe of a port that must be dropped first times a positive control (TCP connects to a port the host serves,
# from the same place) and then waits CLOSED_PORT_RTT_FACTOR times the slowest control connect, never less
# than CLOSED_PORT_FLOOR and never more than the request timeout. An open or rejecting port answers in one
# round trip (the SYN-ACK or RST comes from the host's kernel, whatever the application does), so the
# wait is ten of them; the floor keeps a fast LAN from a wait that a busy controller's scheduling could eat.
# On a LAN (sub-millisecond RTT) the floor decides: "filtered" in 2 x 0.25 s. On a slow network (100 ms RTT)
# the wait grows to 1 s per try; past timeout/10 RTT it is the request timeout.
CLOSED_PORT_FLOOR = 0.25
CLOSED_PORT_RTT_FACTOR = 10.0
CONTROL_SAMPLES = 3
# A dropped port is probed this many times, one after another: a lost SYN (or SYN-ACK) then has to be lost
# every time for an open port to pass as filtered.
CLOSED_PORT_TRIES = 2


def client_ssl_context(ca_file: Path | None) -> ssl.SSLContext:
    """Verify like a careful client: the fleet CA (or the system store), hostname/IP checked, TLS >= 1.2.
    One context per CA text for the process: loading a store costs about 25 ms of CPU, three times per host
    checked (the larger part of a no-change run's controller CPU); a CA file that changes gets a new one."""
    return _ssl_context(str(ca_file) if ca_file else None, ca_file.read_bytes() if ca_file else b"")


@functools.lru_cache(maxsize=16)
def _ssl_context(ca_file: str | None, ca_text: bytes) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=ca_file)
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


def closed_port_timeout(control_rtt: float, ceiling: float) -> float:
    """The wait for a port that must be dropped, from the slowest positive-control connect (seconds)."""
    return max(CLOSED_PORT_FLOOR, min(CLOSED_PORT_RTT_FACTOR * control_rtt, ceiling))


def control_rtt(address: str, port: int, timeout: float = RAW_PORT_TIMEOUT) -> float | None:
    """The positive control: the slowest of CONTROL_SAMPLES TCP connects to a port the host serves, in
    seconds; None when one of them is not answered by a SYN-ACK (then a silent port proves nothing)."""
    slowest = 0.0
    for _ in range(CONTROL_SAMPLES):
        started = time.perf_counter()
        try:
            with socket.create_connection((address, port), timeout=timeout):
                slowest = max(slowest, time.perf_counter() - started)
        except OSError:
            return None
    return slowest


@dataclass(frozen=True)
class DroppedProbe:
    outcome: str  # as tcp_connect, of the first try that was answered (or "timeout" when none was)
    timeout: float  # seconds waited per try
    tries: int


def probe_dropped(address: str, port: int, timeout: float) -> DroppedProbe:
    """Connect to a port that must be dropped, up to CLOSED_PORT_TRIES times while it stays silent."""
    for attempt in range(1, CLOSED_PORT_TRIES + 1):
        outcome = tcp_connect(address, port, timeout)
        if outcome != "timeout":
            return DroppedProbe(outcome, timeout, attempt)
    return DroppedProbe("timeout", timeout, CLOSED_PORT_TRIES)


# Runs inside the outsider netns with the controller's python3. First the positive control, an ICMP echo:
# without a reply the outsider cannot reach the host at all and a silent port proves nothing; its round trip
# sets the TCP wait (closed_port_timeout's rule). Then the TCP connects to the port, each up to that wait.
_OUTSIDER_SCRIPT = r"""
import json, os, socket, struct, sys, time
address, port, ping_timeout = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
floor, factor, ceiling, tries = float(sys.argv[4]), float(sys.argv[5]), float(sys.argv[6]), int(sys.argv[7])
def tcp(timeout):
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
        sock.settimeout(ping_timeout)
        started = time.perf_counter()
        sock.sendto(packet, (address, 0))
        deadline = time.monotonic() + ping_timeout
        while time.monotonic() < deadline:
            try:
                data, peer = sock.recvfrom(1024)
            except TimeoutError:
                return None
            icmp = data[(data[0] & 0x0F) * 4:]
            if peer[0] == address and icmp[0] == 0 and struct.unpack("!H", icmp[4:6])[0] == ident:
                return time.perf_counter() - started
    return None
rtt = ping()
wait = max(floor, min(factor * (ping_timeout if rtt is None else rtt), ceiling))
outcome, attempt = "timeout", 0
while outcome == "timeout" and attempt < tries:
    attempt += 1
    outcome = tcp(wait)
print(json.dumps({"tcp": outcome, "ping": rtt is not None, "rtt": rtt, "wait": wait, "tries": attempt}))
"""


@dataclass(frozen=True)
class OutsiderProbe:
    tcp: str  # as tcp_connect
    ping: bool  # the host answered an ICMP echo from the outsider (the positive control)
    wait: float = RAW_PORT_TIMEOUT  # seconds the TCP connect waited per try
    tries: int = 1


def outsider_probe(
    netns: str, address: str, port: int, timeout: float = RAW_PORT_TIMEOUT, ceiling: float = RAW_PORT_TIMEOUT
) -> OutsiderProbe:
    """Ping address, then connect to address:port from inside a network namespace, waiting as
    closed_port_timeout says from the ping's round trip; raises RuntimeError if that cannot run."""
    argv = [
        *("ip", "netns", "exec", netns, "python3", "-c", _OUTSIDER_SCRIPT, address, str(port), str(timeout)),
        *(str(CLOSED_PORT_FLOOR), str(CLOSED_PORT_RTT_FACTOR), str(ceiling), str(CLOSED_PORT_TRIES)),
    ]
    limit = timeout + CLOSED_PORT_TRIES * max(ceiling, CLOSED_PORT_FLOOR) + 10
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=limit, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise RuntimeError(f"cannot run a probe in netns {netns!r}: {exc}") from None
    if done.returncode != 0:
        raise RuntimeError(f"cannot run a probe in netns {netns!r}: {done.stderr.strip()[-300:]}")
    result = json.loads(done.stdout)
    return OutsiderProbe(
        tcp=str(result["tcp"]),
        ping=bool(result["ping"]),
        wait=float(result["wait"]),
        tries=int(result["tries"]),
    )


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
