"""The SSH connection pyinfra holds to a host."""

from __future__ import annotations

import socket

from pyinfra.api.host import Host


def without_nagle(host: Host) -> bool:
    """
    Send each command to the host at once: turn off Nagle's algorithm on pyinfra's SSH socket.

    paramiko leaves it on (OpenSSH's own client turns it off), so every command's last small packet waits for
    the host's delayed ACK, about 40 ms on Linux. A deploy runs a few commands per operation, one after the
    other: measured on the lab, 49 ms per command with Nagle, 8 ms without. True when the option was set; a
    connection that is not a plain TCP socket (local, docker, a ProxyJump channel) is left as it is.
    """
    client = getattr(host.connector, "client", None)
    transport = client.get_transport() if client is not None else None
    sock = getattr(transport, "sock", None)
    if not isinstance(sock, socket.socket) or sock.family not in (socket.AF_INET, socket.AF_INET6):
        return False
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return True
