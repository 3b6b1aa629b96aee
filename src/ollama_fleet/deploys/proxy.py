"""nginx in front of Ollama: the site and keys validated on a staging copy; reloaded when its config changed
in this run, or when its workers are older than the config files (a run cut off before its reload). On a
gateway host the site also holds the fleet's gateway, planned from every inventory host's settings."""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence

from pyinfra import logger
from pyinfra.api.deploy import deploy
from pyinfra.api.operation import OperationMeta
from pyinfra.context import host
from pyinfra.operations import files, systemd

from ollama_fleet.deploys.fleet import FleetError, fleet_settings, inventory_address
from ollama_fleet.deploys.service import any_changed
from ollama_fleet.gateway import (
    GATEWAY_MEMBERS_DIR,
    GatewayError,
    GatewayPlan,
    answers_loaded_check,
    gateway_plan,
    member_confs,
)
from ollama_fleet.operations import nginx, packages, textfile
from ollama_fleet.operations.addresses import ResolvedAddresses
from ollama_fleet.operations.running import NginxWorkers, nginx_reload_reason
from ollama_fleet.operations.secrets import Secret
from ollama_fleet.render import (
    API_KEYS_PATH,
    MODEL_ALLOW_LIST_JS_PATH,
    NJS_PACKAGE,
    model_allow_list_js,
    needs_njs,
    render_api_keys,
    render_nginx_site,
    tls_paths,
)
from ollama_fleet.settings import FleetSettings

NGINX_DIR = "/etc/nginx"
SITE_NAME = "ollama-fleet"
ROLLOUT_DRAIN_KEY = "rollout_drain"
"""Host data a rollout passes to the gateway hosts: the inventory names it has taken out of rotation (a
deploy of a gateway host during a rollout keeps them out)."""


def rollout_drained() -> list[str]:
    value = host.data.get(ROLLOUT_DRAIN_KEY) or []
    if not isinstance(value, list) or not all(isinstance(name, str) for name in value):
        raise FleetError(f"{host.name}: {ROLLOUT_DRAIN_KEY} must be a JSON list of inventory host names")
    return value


def gateway_members_reload_reason(members: list[str]) -> str | None:
    """Why nginx must reload for the gateway members' files (one newer than its workers), or None."""
    return nginx_reload_reason(host.get_fact(NginxWorkers, files=members))


def resolved_addresses(name: str) -> list[str]:
    """Inventory host `name`'s addresses as this host resolves them (an IP is used as it is)."""
    address = inventory_address(host, name)
    try:
        return [ipaddress.ip_address(address).compressed]
    except ValueError:
        found: list[str] = host.get_fact(ResolvedAddresses, hostname=address)
        return found


def fleet_gateway_plan(drained: Sequence[str] = ()) -> GatewayPlan:
    """The gateway's plan from every inventory host's settings, dialling each at its address as this
    gateway resolves it (an IP is used as it is); `drained` hosts (a rollout's) out of rotation."""
    fleet = fleet_settings(host.state)
    addresses = {}
    for name, member in fleet.items():
        chosen = dialled_address(resolved_addresses(name), member.serves_ipv6)
        if chosen:
            addresses[name] = chosen
    try:
        return gateway_plan(fleet, addresses, drained)
    except GatewayError as exc:
        raise FleetError(f"{host.name}: gateway: {exc}") from None


def dialled_address(resolved: list[str], member_serves_ipv6: bool) -> str | None:
    """Which of a member's resolved addresses the gateway dials: the resolver's first when the member's
    nginx listens on IPv6 too (IPv6 client subnets), else its first IPv4 (IPv6 would find nothing there)."""
    if member_serves_ipv6:
        return resolved[0] if resolved else None
    return next((a for a in resolved if ipaddress.ip_address(a).version == 4), None)


@deploy("nginx proxy")
def nginx_proxy(s: FleetSettings, plan: GatewayPlan | None, reload_triggers: Sequence[OperationMeta]) -> None:
    """`plan`: the fleet's gateway on a gateway host (fleet_gateway_plan), else None."""
    paths = nginx.SitePaths(NGINX_DIR, SITE_NAME)
    # The site template and the keys include must agree on where the include lives.
    assert str(API_KEYS_PATH) == paths.keys
    fleet = fleet_settings(host.state)
    loaded_check = answers_loaded_check(s, fleet.values())
    # A gateway's first-try header is honoured only from the gateways' own addresses.
    gateways = [n for n, g in fleet.items() if g.is_gateway] if loaded_check else []
    gateway_addresses = [a for name in gateways for a in resolved_addresses(name)]
    njs = needs_njs(s, loaded_check)
    packages.packages_installed(
        name="Install nginx" + (f" and {NJS_PACKAGE}" if njs else ""),
        packages=["nginx", *([NJS_PACKAGE] if njs else [])],
    )
    if njs:
        allow_list = textfile.text_file(
            name=f"Install {MODEL_ALLOW_LIST_JS_PATH}",
            text=model_allow_list_js(s),
            dest=str(MODEL_ALLOW_LIST_JS_PATH),
        )
    else:
        allow_list = files.file(
            name=f"Remove {MODEL_ALLOW_LIST_JS_PATH} (ollama_cloud on, no model allow-list, no gateway)",
            path=str(MODEL_ALLOW_LIST_JS_PATH),
            present=False,
        )
    tls = tls_paths(s)
    members = member_confs(plan, s.gateway) if plan else {}
    watched = [paths.site, paths.keys, str(tls.cert), str(tls.key), str(MODEL_ALLOW_LIST_JS_PATH), *members]
    loaded = host.get_fact(NginxWorkers, files=watched)
    stale = nginx_reload_reason(loaded)
    if stale:
        logger.info(f"{host.print_prefix}nginx must reload: {stale}")
    if plan:
        logger.info(
            f"{host.print_prefix}gateway on port {s.gateway.port}: {len(plan.members)} host(s), "
            f"{len(plan.models)} model(s), a pool each; dialling "
            + ", ".join(f"{m.name} at {m.peer}" for m in plan.members)
        )
    site = nginx.site_validated(
        name=f"Install the {SITE_NAME} site{' and gateway' if plan else ''} after nginx -t on a staging copy",
        site=render_nginx_site(
            s, gateway=plan, loaded_check=loaded_check, gateway_addresses=gateway_addresses
        ),
        api_keys=Secret(render_api_keys(s)),
        nginx_dir=NGINX_DIR,
        members=members,
        members_dir=str(GATEWAY_MEMBERS_DIR),
    )
    nginx.reloaded_after_config_test(
        name="Reload nginx after a change",
        _if=any_changed([site, allow_list, *reload_triggers], or_if=stale is not None),
    )
    systemd.service(name="Enable and start nginx", service="nginx.service", running=True, enabled=True)
