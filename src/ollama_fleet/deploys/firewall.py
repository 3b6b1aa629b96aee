"""ufw: deny incoming, SSH from the admin subnets, the proxy's ports from the client subnets, nothing else.

Ollama's own port is never opened: clients reach it only through nginx. The SSH rules are added before
ufw is enabled, and the deploy refuses to go on if its own SSH connection would not be allowed.
"""

from __future__ import annotations

from pyinfra import logger
from pyinfra.api.deploy import deploy
from pyinfra.connectors.ssh import SSHConnector
from pyinfra.context import host

from ollama_fleet.deploys.fleet import FleetError
from ollama_fleet.operations import packages, ufw
from ollama_fleet.settings import FleetSettings


def wanted_rules(s: FleetSettings) -> list[ufw.Rule]:
    f = s.firewall
    api = s.serves_api_through_nginx  # a gateway_only host has no API port of its own
    client_ports = [s.nginx.https_port] if api else []
    if api and s.nginx.http_redirect:
        client_ports.append(s.nginx.http_port)
    if s.is_gateway:
        client_ports.append(s.gateway.port)
    seed = ufw.rules_for(s.models.lan_subnets, [s.models.lan_port]) if s.is_model_seed else []
    return ufw.rules_for(f.admin_subnets, [f.ssh_port]) + ufw.rules_for(f.client_subnets, client_ports) + seed


def guarded_ports(s: FleetSettings) -> dict[int, tuple[str, list[ufw.IPNetwork]]]:
    """Port -> (the setting naming who may reach it, those subnets); no subnets: it must stay closed."""
    f, nginx = s.firewall, s.nginx
    guarded: dict[int, tuple[str, list[ufw.IPNetwork]]] = {s.ollama.listen_port: ("ollama_listen", [])}
    if nginx.enabled:
        api = ("firewall_client_subnets", list(f.client_subnets)) if s.serves_api else ("", [])
        guarded[nginx.https_port] = api
        guarded[nginx.http_port] = api if nginx.http_redirect else ("", [])
    if s.is_gateway:
        guarded[s.gateway.port] = ("firewall_client_subnets", list(f.client_subnets))
    guarded[f.ssh_port] = ("firewall_admin_subnets", list(f.admin_subnets))
    if s.is_model_seed:
        guarded[s.models.lan_port] = ("models_lan_subnets", list(s.models.lan_subnets))
    return guarded


def foreign_rules_too_wide(s: FleetSettings) -> list[ufw.ForeignAllow]:
    """Rules someone else made that open a guarded port wider than the settings; each one is warned about."""
    found = []
    for rule in ufw.foreign_allows(host.get_fact(ufw.UfwAddedRules)):
        problems = ufw.too_wide(rule, guarded_ports(s))
        if problems:
            found.append(rule)
            action = (
                "deleting it"
                if s.firewall.remove_foreign_rules
                else (f"delete it (`{rule.delete_command()}`) or set firewall_remove_foreign_rules = true")
            )
            logger.warning(
                f"{host.name}: ufw rule `{rule.line}` (not made by ollama-fleet) opens "
                f"{'; '.join(problems)}: {action}"
            )
    return found


def check_ssh_client_allowed(s: FleetSettings) -> None:
    """Refuse (before anything changes) when the firewall would cut off this deploy's own SSH connection:
    its address must be in the admin subnets, and the port it came in on must be firewall_ssh_port."""
    peer = host.get_fact(ufw.SshClient)
    admin = ", ".join(str(net) for net in s.firewall.admin_subnets)
    if peer is None:
        if issubclass(host.connector_cls, SSHConnector):
            raise FleetError(
                f"{host.name}: cannot tell which address this deploy connects from ($SSH_CLIENT is empty), "
                f"so enabling ufw could lock it out; connect directly over SSH, or set firewall_enabled=false"
            )
        return  # not an SSH connection (local, container): the firewall cannot cut it off
    address = peer.address
    if peer.port != s.firewall.ssh_port:
        raise FleetError(
            f"{host.name}: this deploy's SSH connection arrives on port {peer.port}, but firewall_ssh_port "
            f"is {s.firewall.ssh_port}; enabling ufw would lock every new SSH session out. Set "
            f"firewall_ssh_port = {peer.port}"
        )
    if not ufw.address_in(address, s.firewall.admin_subnets):
        raise FleetError(
            f"{host.name}: this deploy connects from {address}, which is not in firewall_admin_subnets "
            f"[{admin}]; enabling ufw would lock it out. Add a subnet holding {address} to "
            "firewall_admin_subnets (or deploy from an admin subnet)"
        )


@deploy("ufw firewall")
def firewall(s: FleetSettings, too_wide: list[ufw.ForeignAllow]) -> None:
    """Appends to `too_wide` the rules not made by ollama-fleet that open more than the settings."""
    packages.packages_installed(name="Install ufw", packages=["ufw"])
    check_ssh_client_allowed(s)
    ufw.ipv6_filtered(name="Filter IPv6 too (IPV6=yes)")
    ufw.default_policies(name="Deny incoming, allow outgoing by default", incoming="deny", outgoing="allow")
    ufw.tagged_rules_exactly(
        name=f"Allow SSH from admin subnets and the API from client subnets (rules tagged {ufw.TAG})",
        rules=wanted_rules(s),
    )
    foreign = foreign_rules_too_wide(s)
    too_wide.extend(foreign)
    if s.firewall.remove_foreign_rules:
        ufw.foreign_rules_removed(
            name="Delete rules not made by ollama-fleet that open more than the settings", rules=foreign
        )
    ufw.enabled(name="Enable ufw")
