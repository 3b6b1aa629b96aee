"""The address and name plan of a lab slot: pure data, so several labs can coexist and be torn down by name.

Slot S owns 10.213.(2S).0/24 for hosts (controller .1, hosts from .11) and 10.213.(2S+1).0/24 for the
outsider namespace (controller .1, outsider .2). The hosts' bridge also carries fd0a:d5:0:<2S in hex>::/64
(a ULA named after 10.213: host 10.213.x.11 is ...::11, the controller ...::1), so IPv6 clients can be tested;
the outsider stays IPv4-only (the controller does not route IPv6). Every kernel object the lab makes carries
the slot in its name.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from ollama_fleet.lab.releases import DEFAULT_RELEASE

MAX_SLOT = 127
FIRST_HOST_OCTET = 11
MAX_HOSTS = 240
MIRROR_PORT = 8080
LAB_SUPERNET = "10.213.0.0/16"
LAB_SUPERNET6 = "fd0a:d5::/48"


def default_slot() -> int:
    return int(os.environ.get("OLLAMA_FLEET_LAB_SLOT", "0"))


@dataclass(frozen=True)
class HostPlan:
    index: int
    name: str
    """Hostname and inventory name (lab-1, lab-2, ...)."""
    machine: str
    """nspawn machine name; carries the slot so host-side veth names (vb-<machine>) never collide."""
    ip: str
    ip6: str


@dataclass(frozen=True)
class SlotPlan:
    slot: int

    def __post_init__(self) -> None:
        if not 0 <= self.slot <= MAX_SLOT:
            raise ValueError(f"lab slot must be 0..{MAX_SLOT}, got {self.slot}")

    @property
    def hosts_prefix(self) -> str:
        return f"10.213.{2 * self.slot}"

    @property
    def outsider_prefix(self) -> str:
        return f"10.213.{2 * self.slot + 1}"

    @property
    def hosts_subnet(self) -> str:
        return f"{self.hosts_prefix}.0/24"

    @property
    def outsider_subnet(self) -> str:
        return f"{self.outsider_prefix}.0/24"

    @property
    def gateway_ip(self) -> str:
        return f"{self.hosts_prefix}.1"

    @property
    def hosts_prefix6(self) -> str:
        return f"fd0a:d5:0:{2 * self.slot:x}:"

    @property
    def hosts_subnet6(self) -> str:
        return f"{self.hosts_prefix6}:/64"

    @property
    def gateway_ip6(self) -> str:
        return f"{self.hosts_prefix6}:1"

    @property
    def outsider_gateway_ip(self) -> str:
        return f"{self.outsider_prefix}.1"

    @property
    def outsider_ip(self) -> str:
        return f"{self.outsider_prefix}.2"

    @property
    def bridge(self) -> str:
        return f"labbr{self.slot}"

    @property
    def outsider_bridge(self) -> str:
        return f"labob{self.slot}"

    @property
    def outsider_veth(self) -> str:
        """Controller end of the outsider's veth pair (enslaved to the outsider bridge)."""
        return f"labov{self.slot}"

    @property
    def outsider_veth_peer(self) -> str:
        """The outsider's end, moved into the namespace."""
        return f"labon{self.slot}"

    @property
    def netns(self) -> str:
        return f"ollama-fleet-lab{self.slot}-outsider"

    @property
    def nft_table(self) -> str:
        return f"ollama_fleet_lab{self.slot}"

    @property
    def cgroup_name(self) -> str:
        return f"ollama-fleet-lab{self.slot}"

    @property
    def mirror_base_url(self) -> str:
        return f"http://{self.gateway_ip}:{MIRROR_PORT}"

    @property
    def apt_source_line(self) -> str:
        return self.apt_source_line_for(DEFAULT_RELEASE)

    def apt_source_line_for(self, release: str) -> str:
        """A host of `release`'s only apt source: its release's repository on the lab mirror."""
        path = "debian" if release == DEFAULT_RELEASE else f"debian-{release}"
        return f"deb [trusted=yes] {self.mirror_base_url}/{path} ./"

    def host(self, index: int) -> HostPlan:
        if not 1 <= index <= MAX_HOSTS:
            raise ValueError(f"host index must be 1..{MAX_HOSTS}, got {index}")
        return HostPlan(
            index=index,
            name=f"lab-{index}",
            machine=f"lab{self.slot}-{index}",
            ip=f"{self.hosts_prefix}.{FIRST_HOST_OCTET + index - 1}",
            ip6=f"{self.hosts_prefix6}:{FIRST_HOST_OCTET + index - 1}",
        )

    def hosts(self, count: int) -> list[HostPlan]:
        if not 1 <= count <= MAX_HOSTS:
            raise ValueError(f"a lab has 1..{MAX_HOSTS} hosts, got {count}")
        return [self.host(i) for i in range(1, count + 1)]
