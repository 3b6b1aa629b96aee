"""The lab's networks on the controller: the hosts' bridge, the outsider namespace behind a second bridge, and
an nft table that forwards only lab-to-lab traffic (br_netfilter sends bridged packets through it too)."""

from __future__ import annotations

from pathlib import Path

from ollama_fleet.lab.plan import LAB_SUPERNET, LAB_SUPERNET6, SlotPlan
from ollama_fleet.lab.run import run, succeeds


def nft_ruleset(plan: SlotPlan) -> str:
    return (
        f"table inet {plan.nft_table} {{\n"
        "  chain forward {\n"
        "    type filter hook forward priority 0; policy drop;\n"
        f"    ip saddr {LAB_SUPERNET} ip daddr {LAB_SUPERNET} accept\n"
        f"    ip6 saddr {LAB_SUPERNET6} ip6 daddr {LAB_SUPERNET6} accept\n"
        # neighbour discovery between bridged hosts goes to multicast addresses
        f"    ip6 saddr {LAB_SUPERNET6} icmpv6 type {{ nd-neighbor-solicit, nd-neighbor-advert }} accept\n"
        "  }\n"
        "}\n"
    )


def link_exists(name: str) -> bool:
    return Path("/sys/class/net", name).exists()


def netns_exists(name: str) -> bool:
    return Path("/run/netns", name).exists()


def nft_table_exists(plan: SlotPlan) -> bool:
    return succeeds(["nft", "list", "table", "inet", plan.nft_table])


def _bridge(name: str, address: str, address6: str | None = None) -> None:
    run(["ip", "link", "add", name, "type", "bridge"])
    conf = Path(f"/proc/sys/net/ipv6/conf/{name}")
    if address6 is None:
        (conf / "disable_ipv6").write_text("1\n")
    else:
        # The lab's ULA only: no link-local address, no router solicitations, no duplicate detection wait.
        for key, value in (("addr_gen_mode", "1"), ("accept_ra", "0"), ("disable_ipv6", "0")):
            (conf / key).write_text(f"{value}\n")
    run(["ip", "addr", "add", address, "dev", name])
    if address6 is not None:
        run(["ip", "-6", "addr", "add", address6, "dev", name, "nodad"])
    run(["ip", "link", "set", name, "up"])


def up(plan: SlotPlan) -> None:
    _bridge(plan.bridge, f"{plan.gateway_ip}/24", f"{plan.gateway_ip6}/64")
    _bridge(plan.outsider_bridge, f"{plan.outsider_gateway_ip}/24")
    run(["ip", "netns", "add", plan.netns])
    run(["ip", "link", "add", plan.outsider_veth, "type", "veth", "peer", "name", plan.outsider_veth_peer])
    run(["ip", "link", "set", plan.outsider_veth_peer, "netns", plan.netns])
    run(["ip", "link", "set", plan.outsider_veth, "master", plan.outsider_bridge, "up"])
    inside = ["ip", "-n", plan.netns]
    run([*inside, "link", "set", "lo", "up"])
    run([*inside, "addr", "add", f"{plan.outsider_ip}/24", "dev", plan.outsider_veth_peer])
    run([*inside, "link", "set", plan.outsider_veth_peer, "up"])
    run([*inside, "route", "add", "default", "via", plan.outsider_gateway_ip])
    run(["nft", "-f", "-"], input_text=nft_ruleset(plan))


def down(plan: SlotPlan) -> list[str]:
    """Remove what `up` made, by name; each step only when present, so it is safe to repeat."""
    removed: list[str] = []
    if nft_table_exists(plan):
        run(["nft", "delete", "table", "inet", plan.nft_table])
        removed.append(f"nft table inet {plan.nft_table}")
    # The veth first: deleting the namespace would also destroy it, but asynchronously.
    for link in (plan.outsider_veth, plan.outsider_bridge, plan.bridge):
        if link_exists(link):
            _delete_link(link)
            removed.append(f"link {link}")
    if netns_exists(plan.netns):
        run(["ip", "netns", "delete", plan.netns])
        removed.append(f"netns {plan.netns}")
    return removed


def _delete_link(name: str) -> None:
    """Delete a link; one that vanished meanwhile (a veth whose peer went) counts as deleted."""
    if not succeeds(["ip", "link", "delete", name]) and link_exists(name):
        run(["ip", "link", "delete", name])
