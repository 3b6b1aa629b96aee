"""ufw managed idempotently: default policies, our tagged allow rules, and enabling it last.

Our rules carry the comment 'ollama-fleet', so a run adds what is missing, deletes what settings no
longer list, and never touches a rule someone else added. `ufw show added` lists rules whether or not the
firewall is active, so the state is read the same way before and after the first `ufw enable`.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Generator, Iterable
from dataclasses import dataclass
from typing import TypedDict

from pyinfra.api.facts import FactBase
from pyinfra.api.operation import operation
from pyinfra.context import host

TAG = "ollama-fleet"
_RULE = re.compile(rf"^ufw allow from (\S+) to any port (\d+) proto (tcp|udp) comment '{TAG}'$")
_POLICY_WORDS = {"deny": "DROP", "allow": "ACCEPT", "reject": "REJECT"}


@dataclass(frozen=True, order=True)
class Rule:
    """Allow `proto` traffic to `port` from the subnet `source`."""

    source: str
    port: int
    proto: str = "tcp"

    def spec(self) -> str:
        return f"allow from {self.source} to any port {self.port} proto {self.proto} comment {TAG}"


def rules_for(subnets: Iterable[object], ports: Iterable[int]) -> list[Rule]:
    return [Rule(str(subnet), port) for subnet in subnets for port in ports]


class UfwAddedRules(FactBase[list[str]]):
    """Every rule line of `ufw show added`, without the leading 'ufw '."""

    @staticmethod
    def default() -> list[str]:
        return []

    def requires_command(self) -> str:
        return "ufw"

    def command(self) -> str:
        return "ufw show added"

    def process(self, output: list[str]) -> list[str]:
        return [line for line in output if line.startswith("ufw ")]


def tagged_rules(lines: list[str]) -> set[Rule]:
    """Rules we made (tagged); anything else is left alone."""
    found = set()
    for line in lines:
        match = _RULE.match(line)
        if match:
            found.add(Rule(match.group(1), int(match.group(2)), match.group(3)))
    return found


class UfwState(TypedDict):
    active: bool
    incoming: str | None  # iptables words: DROP / ACCEPT / REJECT
    outgoing: str | None


class Ufw(FactBase[UfwState]):
    """Whether ufw is active and its default incoming/outgoing policies (/etc/default/ufw)."""

    @staticmethod
    def default() -> UfwState:
        return {"active": False, "incoming": None, "outgoing": None}

    def requires_command(self) -> str:
        return "ufw"

    def command(self) -> str:
        return "ufw status | head -n 1; grep -E '^DEFAULT_(INPUT|OUTPUT)_POLICY=' /etc/default/ufw || true"

    def process(self, output: list[str]) -> UfwState:
        found = self.default()
        for line in output:
            if line.startswith("Status:"):
                found["active"] = line.split(":", 1)[1].strip() == "active"
            elif line.startswith("DEFAULT_INPUT_POLICY="):
                found["incoming"] = line.split("=", 1)[1].strip('"')
            elif line.startswith("DEFAULT_OUTPUT_POLICY="):
                found["outgoing"] = line.split("=", 1)[1].strip('"')
        return found


class SshClientAddress(FactBase[str | None]):
    """The address this deploy's SSH connection comes from, as the host sees it ($SSH_CLIENT).

    sudo resets the environment, so when $SSH_CLIENT is empty the parent processes' environments are
    searched (sudo's parent still has it).
    """

    def command(self) -> str:
        return (
            'a="${SSH_CLIENT:-}"; p=$$; '
            'while [ -z "$a" ] && [ "${p:-1}" -gt 1 ]; do '
            "a=$(tr '\\0' '\\n' < /proc/$p/environ 2>/dev/null | sed -n 's/^SSH_CLIENT=//p'); "
            "p=$(awk '/^PPid:/ {print $2}' /proc/$p/status 2>/dev/null); done; "
            'echo "${a%% *}"'
        )

    def process(self, output: list[str]) -> str | None:
        return output[0].strip() or None if output else None


def address_in(address: str, subnets: Iterable[ipaddress.IPv4Network | ipaddress.IPv6Network]) -> bool:
    ip = ipaddress.ip_address(address)
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return any(ip.version == net.version and ip in net for net in subnets)


@operation()
def default_policies(incoming: str = "deny", outgoing: str = "allow") -> Generator[str, None, None]:
    """
    Set ufw's default policies.

    + incoming: deny / allow / reject
    + outgoing: deny / allow / reject
    """
    current = host.get_fact(Ufw)
    changed = False
    for direction, wanted, now in (
        ("incoming", incoming, current["incoming"]),
        ("outgoing", outgoing, current["outgoing"]),
    ):
        if _POLICY_WORDS[wanted] != now:
            changed = True
            yield f"ufw default {wanted} {direction}"
    if not changed:
        host.noop(f"ufw defaults are {incoming} incoming, {outgoing} outgoing")


@operation()
def tagged_rules_exactly(rules: list[Rule]) -> Generator[str, None, None]:
    """
    Make our tagged allow rules exactly `rules`: add the missing ones first, then delete the stale ones.

    + rules: the wanted rules
    """
    current = tagged_rules(host.get_fact(UfwAddedRules))
    wanted = set(rules)
    missing, stale = sorted(wanted - current), sorted(current - wanted)
    for rule in missing:
        yield f"ufw {rule.spec()}"
    for rule in stale:
        yield f"ufw delete {rule.spec()}"
    if not missing and not stale:
        host.noop(f"{len(wanted)} ufw rules tagged {TAG} in place")


@operation()
def enabled() -> Generator[str, None, None]:
    """
    Enable ufw (now and at boot); call after the SSH rules are in place.
    """
    if host.get_fact(Ufw)["active"]:
        host.noop("ufw is active")
        return
    yield "ufw --force enable"
