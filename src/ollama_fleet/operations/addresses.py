"""What addresses a host answers on, as the host itself reports them."""

from __future__ import annotations

import ipaddress
import shlex

from pyinfra.api.facts import FactBase


class StableIpv6Addresses(FactBase[list[str]]):
    """The host's global IPv6 addresses that last: temporary (privacy) and deprecated ones are left out, so
    a certificate naming them is not reissued each time they rotate. ULAs count; link-local ones do not."""

    @staticmethod
    def default() -> list[str]:
        return []

    def command(self) -> str:
        return "ip -6 -o addr show scope global 2>/dev/null || true"

    def process(self, output: list[str]) -> list[str]:
        found = []
        for line in output:
            fields = line.split()
            if "inet6" not in fields or {"temporary", "deprecated"} & set(fields):
                continue
            found.append(str(ipaddress.ip_interface(fields[fields.index("inet6") + 1]).ip))
        return sorted(set(found))


class ResolvedAddresses(FactBase[list[str]]):
    """The addresses `hostname` resolves to on the host (its own resolver, /etc/hosts included), IPv4 and
    IPv6, in the order the resolver prefers them, each once."""

    @staticmethod
    def default() -> list[str]:
        return []

    def command(self, hostname: str) -> str:
        return f"getent ahosts {shlex.quote(hostname)} | awk '{{ print $1 }}' || true"

    def process(self, output: list[str]) -> list[str]:
        found: dict[str, None] = {}
        for line in output:
            fields = line.split()  # `getent ahosts` prints ADDRESS TYPE [NAME]; awk kept the address
            try:
                found[ipaddress.ip_address(fields[0] if fields else "").compressed] = None
            except ValueError:
                continue
        return list(found)
