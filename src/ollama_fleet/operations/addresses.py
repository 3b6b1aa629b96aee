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


class ResolvedAddress(FactBase[str | None]):
    """The first IPv4 address `hostname` resolves to on the host (its own resolver, /etc/hosts included)."""

    @staticmethod
    def default() -> str | None:
        return None

    def command(self, hostname: str) -> str:
        return f"getent ahostsv4 {shlex.quote(hostname)} | awk 'NR == 1 {{ print $1 }}' || true"

    def process(self, output: list[str]) -> str | None:
        for line in output:
            try:
                return str(ipaddress.ip_address(line.strip()))
            except ValueError:
                continue
        return None
