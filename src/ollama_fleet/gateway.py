"""The gateway's plan (pure): which hosts serve which model, grouped into pools nginx balances over.

A pool is one nginx upstream: the hosts that serve one model, so nginx never sends a request for a model
to a host without it. One pool per model, because nginx counts a host's requests in flight per upstream
and Ollama's OLLAMA_NUM_PARALLEL is per model: each pool caps a host at that many requests for its model,
the cap Ollama itself has (two models sharing one pool would share one host's cap and get 503 while
Ollama had room). One more pool holds every host, for requests that name no model (/api/version, /api/ps).
"""

from __future__ import annotations

import ipaddress
import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import PurePosixPath
from typing import Any
from urllib.parse import quote

from ollama_fleet.settings import FleetSettings
from ollama_fleet.settings.gateway import GatewaySettings

GATEWAY_GROUP = "gateway"
"""Hosts of this inventory group serve the fleet's gateway (gateway_enabled, unless their data says)."""


MONITORING_GROUP = "monitoring"
"""Hosts of this inventory group run Prometheus, Alertmanager and the blackbox exporter for the fleet."""


def with_gateway_group(data: dict[str, Any], groups: Iterable[str]) -> dict[str, Any]:
    """A host's data with gateway_enabled decided: as set (true or false), else (None, the default) whether
    the host is in the `gateway` group; monitoring_enabled likewise from the `monitoring` group."""
    groups = list(groups)
    if data.get("monitoring_enabled") is None:
        data = {**data, "monitoring_enabled": MONITORING_GROUP in groups}
    if data.get("gateway_enabled") is None:
        return {**data, "gateway_enabled": GATEWAY_GROUP in groups}
    return data


@dataclass(frozen=True)
class Member:
    """One fleet host as the gateway dials it."""

    name: str
    address: str  # an IP: nginx names a peer by its address, and the TLS name is looked up by it
    port: int
    tls_name: str  # a name its certificate carries (its first server name)
    max_conns: int  # 0: no cap
    down: bool  # out of rotation: gateway_drain on that host, or drained by a rollout

    @property
    def peer(self) -> str:
        """`address:port` as nginx writes it in $upstream_addr."""
        ip = ipaddress.ip_address(self.address)
        return f"[{ip.compressed}]:{self.port}" if ip.version == 6 else f"{ip.compressed}:{self.port}"


UPSTREAM_ZONE_BASE_KIB = 64
UPSTREAM_ZONE_KIB_PER_MEMBER = 2
"""nginx (1.22) keeps about 1 KiB per server of an upstream in the upstream's shared zone (measured: 64k
holds 60 servers, not 70, and nginx -t fails with "no memory in upstream zone"): twice that per member."""


@dataclass(frozen=True)
class Pool:
    name: str  # the nginx upstream
    members: tuple[Member, ...]
    models: tuple[str, ...]  # as /api/tags lists them: one; none for the all-hosts pool

    @property
    def zone_kib(self) -> int:
        """The size of the upstream's shared zone, grown with its members (a fixed 64k held 60 hosts)."""
        return UPSTREAM_ZONE_BASE_KIB + UPSTREAM_ZONE_KIB_PER_MEMBER * len(self.members)


@dataclass(frozen=True)
class GatewayPlan:
    pools: tuple[Pool, ...]  # the all-hosts pool first
    models: tuple[str, ...]  # the union, sorted

    @property
    def any_pool(self) -> Pool:
        return self.pools[0]

    @property
    def members(self) -> tuple[Member, ...]:
        return self.any_pool.members

    def pool_of(self, model: str) -> Pool:
        return next(pool for pool in self.pools[1:] if model in pool.models)


class GatewayError(ValueError):
    """The fleet cannot be served through a gateway as configured (names the host and the fix)."""


def gateway_plan(
    fleet: Mapping[str, FleetSettings], addresses: Mapping[str, str], drained: Iterable[str] = ()
) -> GatewayPlan:
    """The plan for a gateway of `fleet` (every inventory host with nginx), dialling `addresses` (IPs);
    `drained` hosts (a rollout's batch) are out of rotation, as are those with gateway_drain."""
    drained = set(drained)
    members: dict[str, Member] = {}
    served: dict[str, list[str]] = {}
    for name, s in fleet.items():
        if not s.serves_api_through_nginx:
            continue  # no API behind TLS to balance over
        address = addresses.get(name)
        try:
            ipaddress.ip_address(address or "")
        except ValueError:
            raise GatewayError(
                f"host {name!r}: the gateway needs its IP address (got {address!r}); set its service_address "
                "(or ssh_hostname) to an IP, or make its name resolve on the gateway (IPv4, or IPv6 when its "
                "firewall_client_subnets hold an IPv6 subnet)"
            ) from None
        assert address is not None
        members[name] = Member(
            name=name,
            address=address,
            port=s.nginx.https_port,
            tls_name=s.server_names[0],
            max_conns=s.num_parallel if s.gateway.cap_at_num_parallel else 0,
            down=s.gateway.drain or name in drained,
        )
        for model in dict.fromkeys(s.models.names()):
            served.setdefault(model, []).append(name)
    if not members:
        raise GatewayError(
            "no host of the inventory serves its API through nginx (nginx_enabled, not gateway_only): the "
            "gateway has nothing to balance"
        )
    pools = [Pool("ollama_fleet_gw_all", tuple(members.values()), ())]
    for index, model in enumerate(sorted(served), start=1):
        pools.append(Pool(f"ollama_fleet_gw_{index}", tuple(members[h] for h in served[model]), (model,)))
    return GatewayPlan(tuple(pools), tuple(sorted(served)))


IF_LOADED_HEADER = "X-Ollama-Fleet-If-Loaded"
"""On a gateway's first try of a request: the model (as /api/tags lists it) the host must have loaded."""
LOADED_CACHE_VALID_S = 1
"""How long a host's nginx keeps Ollama's /api/ps for the loaded check. nginx counts whole seconds, so
what the check sees is under LOADED_CACHE_VALID_S + 1 seconds old."""


def answers_loaded_check(s: FleetSettings, fleet: Iterable[FleetSettings]) -> bool:
    """Whether host `s` must answer a gateway's first try (a gateway that prefers loaded hosts balances
    over it): its nginx then asks its Ollama's /api/ps, with njs."""
    return s.serves_api_through_nginx and any(g.is_gateway and g.gateway.prefer_loaded for g in fleet)


def tags_json(plan: GatewayPlan) -> str:
    """/api/tags of the gateway: every model some host serves, in Ollama's shape (names only)."""
    models = [{"name": m, "model": m} for m in plan.models]
    return json.dumps({"models": models}, separators=(",", ":"))


def openai_models_json(plan: GatewayPlan) -> str:
    """/v1/models of the gateway, in OpenAI's shape (as Ollama answers it)."""
    data = [{"id": m, "object": "model", "created": 0, "owned_by": owner(m)} for m in plan.models]
    return json.dumps({"object": "list", "data": data}, separators=(",", ":"))


def owner(model: str) -> str:
    """Ollama's owned_by: the namespace, `library` for the default one."""
    parts = model.split("/")
    return parts[-2] if len(parts) > 1 else "library"


GATEWAY_MEMBERS_DIR = PurePosixPath("/etc/nginx/ollama-fleet/gateway-members")
"""One file per fleet host holding its `server` line, which each of the gateway's pools includes: whether
the host is in rotation is data the deploy and a rollout's drain write, whatever the site's template."""


def member_conf_path(name: str, members_dir: PurePosixPath = GATEWAY_MEMBERS_DIR) -> str:
    """Where host `name`'s server line lives (the name made file-safe)."""
    return str(members_dir / f"{quote(name, safe='-._')}.conf")


def member_conf(m: Member, g: GatewaySettings) -> str:
    """Host `m`'s server line, for every pool that has it (`g`: the gateway host's settings)."""
    cap = f" max_conns={m.max_conns}" if m.max_conns else ""
    down = " down" if m.down else ""
    return (
        f"# {m.name}: written by ollama-fleet (its deploy of this gateway, and a rollout's drain)\n"
        f"server {m.peer}{cap} max_fails={g.max_fails} fail_timeout={g.fail_timeout}s{down};\n"
    )


def member_confs(
    plan: GatewayPlan, g: GatewaySettings, members_dir: PurePosixPath = GATEWAY_MEMBERS_DIR
) -> dict[str, str]:
    """Path -> text of every member's server line."""
    return {member_conf_path(m.name, members_dir): member_conf(m, g) for m in plan.members}
