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
from ollama_fleet.gateway import GatewayError, GatewayPlan, answers_loaded_check, gateway_plan
from ollama_fleet.operations import nginx, packages, textfile
from ollama_fleet.operations.addresses import ResolvedAddress
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


def _addresses(names: Sequence[str]) -> dict[str, str]:
    """Each inventory host's IP address as this host resolves it (an IP is used as it is)."""
    addresses = {}
    for name in names:
        address = inventory_address(host, name)
        try:
            addresses[name] = str(ipaddress.ip_address(address))
        except ValueError:
            resolved = host.get_fact(ResolvedAddress, hostname=address)
            if resolved:
                addresses[name] = resolved
    return addresses


def fleet_gateway_plan() -> GatewayPlan:
    """The gateway's plan from every inventory host's settings, dialling each at its address as this
    gateway resolves it (an IP is used as it is)."""
    fleet = fleet_settings(host.state)
    addresses = _addresses(list(fleet))
    try:
        return gateway_plan(fleet, addresses)
    except GatewayError as exc:
        raise FleetError(f"{host.name}: gateway: {exc}") from None


@deploy("nginx proxy")
def nginx_proxy(s: FleetSettings, plan: GatewayPlan | None, reload_triggers: Sequence[OperationMeta]) -> None:
    """`plan`: the fleet's gateway on a gateway host (fleet_gateway_plan), else None."""
    paths = nginx.SitePaths(NGINX_DIR, SITE_NAME)
    # The site template and the keys include must agree on where the include lives.
    assert str(API_KEYS_PATH) == paths.keys
    fleet = fleet_settings(host.state)
    loaded_check = answers_loaded_check(s, fleet.values())
    # A gateway's first-try header is honoured only from the gateways' own addresses.
    gateway_addresses = _addresses([n for n, g in fleet.items() if g.is_gateway]) if loaded_check else {}
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
    watched = [paths.site, paths.keys, str(tls.cert), str(tls.key), str(MODEL_ALLOW_LIST_JS_PATH)]
    loaded = host.get_fact(NginxWorkers, files=watched)
    stale = nginx_reload_reason(loaded)
    if stale:
        logger.info(f"{host.print_prefix}nginx must reload: {stale}")
    if plan:
        logger.info(
            f"{host.print_prefix}gateway on port {s.gateway.port}: {len(plan.members)} host(s), "
            f"{len(plan.models)} model(s), a pool each"
        )
    site = nginx.site_validated(
        name=f"Install the {SITE_NAME} site{' and gateway' if plan else ''} after nginx -t on a staging copy",
        site=render_nginx_site(
            s, gateway=plan, loaded_check=loaded_check, gateway_addresses=list(gateway_addresses.values())
        ),
        api_keys=Secret(render_api_keys(s)),
        nginx_dir=NGINX_DIR,
    )
    nginx.reloaded_after_config_test(
        name="Reload nginx after a change",
        _if=any_changed([site, allow_list, *reload_triggers], or_if=stale is not None),
    )
    systemd.service(name="Enable and start nginx", service="nginx.service", running=True, enabled=True)
