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

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

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
    ipv6: bool  # IPV6=yes in /etc/default/ufw: else ufw leaves IPv6 wide open


class Ufw(FactBase[UfwState]):
    """Whether ufw is active (its chains loaded, as `ufw status` decides), its default incoming/outgoing
    policies and IPv6 switch (/etc/default/ufw)."""

    @staticmethod
    def default() -> UfwState:
        return {"active": False, "incoming": None, "outgoing": None, "ipv6": False}

    def requires_command(self) -> str:
        return "ufw"

    def command(self) -> str:
        # What `ufw status` checks for "active" (its chains are loaded), without starting ufw's Python: that
        # cost ~0.1 s on each of the three operations reading this.
        loaded = "iptables -w -n -L ufw-user-input >/dev/null 2>&1"
        status = f"if {loaded}; then echo 'Status: active'; else echo 'Status: inactive'; fi"
        settings = "grep -E '^(DEFAULT_(INPUT|OUTPUT)_POLICY|IPV6)=' /etc/default/ufw"
        return f"{status}; {settings} || true"

    def process(self, output: list[str]) -> UfwState:
        found = self.default()
        for line in output:
            if line.startswith("Status:"):
                found["active"] = line.split(":", 1)[1].strip() == "active"
            elif line.startswith("DEFAULT_INPUT_POLICY="):
                found["incoming"] = line.split("=", 1)[1].strip('"')
            elif line.startswith("DEFAULT_OUTPUT_POLICY="):
                found["outgoing"] = line.split("=", 1)[1].strip('"')
            elif line.startswith("IPV6="):
                found["ipv6"] = line.split("=", 1)[1].strip('"').lower() == "yes"
        return found


@dataclass(frozen=True)
class SshPeer:
    address: str  # where this deploy's SSH connection comes from
    port: int  # the host's port it arrived on: the one sshd must stay reachable on


class SshClient(FactBase["SshPeer | None"]):
    """This deploy's SSH connection as the host sees it ($SSH_CLIENT: address, its port, the server port).

    sudo resets the environment, so when $SSH_CLIENT is empty the parent processes' environments are
    searched (sudo's parent still has it).
    """

    def command(self) -> str:
        return (
            'a="${SSH_CLIENT:-}"; p=$$; '
            'while [ -z "$a" ] && [ "${p:-1}" -gt 1 ]; do '
            "a=$(tr '\\0' '\\n' < /proc/$p/environ 2>/dev/null | sed -n 's/^SSH_CLIENT=//p'); "
            "p=$(awk '/^PPid:/ {print $2}' /proc/$p/status 2>/dev/null); done; "
            'echo "$a"'
        )

    def process(self, output: list[str]) -> SshPeer | None:
        fields = output[0].split() if output else []
        if len(fields) != 3 or not fields[2].isdigit():
            return None
        return SshPeer(fields[0], int(fields[2]))


# --- rules someone else made ---------------------------------------------------------------------------

APP_PORTS = {"OpenSSH": {22}, "Nginx HTTP": {80}, "Nginx HTTPS": {443}, "Nginx Full": {80, 443}}
"""ufw application profiles that Debian's openssh-server and nginx install."""

ANY = ("any", "0.0.0.0/0", "::/0")


@dataclass(frozen=True)
class ForeignAllow:
    """An allow rule we did not make: from `source` to `ports` (None: every port)."""

    line: str
    source: str
    ports: frozenset[int] | None

    def delete_command(self) -> str:
        """`ufw show added` prints each rule as the command that adds it; `delete` takes the same words."""
        return f"ufw delete {self.line.removeprefix('ufw ')}"


def foreign_allows(lines: list[str]) -> list[ForeignAllow]:
    """Incoming allow/limit rules of `ufw show added` not tagged as ours; rules we cannot read are skipped."""
    found = []
    for line in lines:
        if line.startswith("ufw ") and not _RULE.match(line):
            parsed = _parse_allow(line.removeprefix("ufw ").split())
            if parsed:
                found.append(ForeignAllow(line, *parsed))
    return found


def _parse_allow(words: list[str]) -> tuple[str, frozenset[int] | None] | None:
    if words[:1] not in (["allow"], ["limit"]) or "out" in words[1:3]:
        return None
    words = [w for w in words[1:] if w != "in"]
    if words[:1] == ["on"]:
        words = words[2:]
    if "comment" in words:
        words = words[: words.index("comment")]
    if words[:1] != ["from"] and words[:1] != ["to"]:  # the short form: `allow 443/tcp`, `allow OpenSSH`
        spec = " ".join(words).strip("'\"")
        ports = APP_PORTS.get(spec) or _ports(spec.split("/")[0])
        return ("any", frozenset(ports)) if ports else None
    source = words[words.index("from") + 1] if "from" in words else "any"
    to_port = _after(words, "to", "port")
    app = _after(words, "to", "app")
    if app:
        app_ports = APP_PORTS.get(app.strip("'\""))
        return (source, frozenset(app_ports)) if app_ports else None
    return source, frozenset(_ports(to_port)) if to_port else None


def _after(words: list[str], anchor: str, key: str) -> str | None:
    """The value of `key` after `anchor` (`to any port 22` -> '22')."""
    if anchor not in words:
        return None
    rest = words[words.index(anchor) :]
    return rest[rest.index(key) + 1] if key in rest[:-1] else None


def _ports(spec: str) -> set[int]:
    """'443', '80,443' or '6000:6007' as port numbers; empty when it is not a port list."""
    ports: set[int] = set()
    for part in spec.split(","):
        low, _, high = part.partition(":")
        if not low.isdigit() or (high and not high.isdigit()):
            return set()
        ports.update(range(int(low), int(high or low) + 1))
    return ports


def too_wide(rule: ForeignAllow, allowed: dict[int, tuple[str, list[IPNetwork]]]) -> list[str]:
    """What `rule` opens beyond the settings: for each guarded port, (setting that names its subnets, the
    subnets); an empty list of subnets means the port must not be open at all."""
    problems = []
    for port, (setting, subnets) in sorted(allowed.items()):
        if rule.ports is not None and port not in rule.ports:
            continue
        if rule.source not in ANY:
            try:
                source = ipaddress.ip_network(rule.source, strict=False)
            except ValueError:
                continue
            if any(source.version == net.version and source.subnet_of(net) for net in subnets):  # type: ignore[arg-type]
                continue
        where = f"wider than {setting}" if subnets else "which must stay closed"
        problems.append(f"port {port} to {rule.source} ({where})")
    return problems


@operation()
def foreign_rules_removed(rules: list[ForeignAllow]) -> Generator[str, None, None]:
    """
    Delete allow rules someone else made (firewall_remove_foreign_rules).

    + rules: the rules to delete, as foreign_allows read them
    """
    for rule in rules:
        yield rule.delete_command()
    if not rules:
        host.noop("no foreign ufw rule opens more than the settings")


def address_in(address: str, subnets: Iterable[IPNetwork]) -> bool:
    ip = ipaddress.ip_address(address)
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return any(ip.version == net.version and ip in net for net in subnets)


@operation()
def ipv6_filtered() -> Generator[str, None, None]:
    """
    Make ufw filter IPv6 too (IPV6=yes), reloading it when active so its IPv6 chains exist before any
    IPv6 rule is added. With IPV6=no every IPv6 port, SSH included, is open to anyone.
    """
    current = host.get_fact(Ufw)
    if current["ipv6"]:
        host.noop("ufw filters IPv6")
        return
    yield (
        "if grep -q '^IPV6=' /etc/default/ufw; then sed -i 's/^IPV6=.*/IPV6=yes/' /etc/default/ufw; "
        "else echo IPV6=yes >> /etc/default/ufw; fi"
    )
    if current["active"]:
        yield "ufw reload"


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
