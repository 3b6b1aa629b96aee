"""ufw: deny incoming, SSH from the admin subnets, the proxy's ports from the client subnets, nothing else.

Ollama's own port is never opened: clients reach it only through nginx. The SSH rules are added before
ufw is enabled, and the deploy refuses to go on if its own SSH connection would not be allowed.
"""

from __future__ import annotations

from pyinfra.api.deploy import deploy
from pyinfra.connectors.ssh import SSHConnector
from pyinfra.context import host

from ollama_fleet.deploys.fleet import FleetError
from ollama_fleet.operations import packages, ufw
from ollama_fleet.settings import FleetSettings


def wanted_rules(s: FleetSettings) -> list[ufw.Rule]:
    f = s.firewall
    client_ports = [s.nginx.https_port] if s.nginx.enabled else []
    if s.nginx.enabled and s.nginx.http_redirect:
        client_ports.append(s.nginx.http_port)
    return ufw.rules_for(f.admin_subnets, [f.ssh_port]) + ufw.rules_for(f.client_subnets, client_ports)


def check_ssh_client_allowed(s: FleetSettings) -> None:
    """Refuse (before anything changes) when the firewall would cut off this deploy's own SSH connection."""
    address = host.get_fact(ufw.SshClientAddress)
    admin = ", ".join(str(net) for net in s.firewall.admin_subnets)
    if address is None:
        if issubclass(host.connector_cls, SSHConnector):
            raise FleetError(
                f"{host.name}: cannot tell which address this deploy connects from ($SSH_CLIENT is empty), "
                f"so enabling ufw could lock it out; connect directly over SSH, or set firewall_enabled=false"
            )
        return  # not an SSH connection (local, container): the firewall cannot cut it off
    if not ufw.address_in(address, s.firewall.admin_subnets):
        raise FleetError(
            f"{host.name}: this deploy connects from {address}, which is not in firewall_admin_subnets "
            f"[{admin}]; enabling ufw would lock it out. Add a subnet holding {address} to "
            "firewall_admin_subnets (or deploy from an admin subnet)"
        )


@deploy("ufw firewall")
def firewall(s: FleetSettings) -> None:
    packages.packages_installed(name="Install ufw", packages=["ufw"])
    check_ssh_client_allowed(s)
    ufw.default_policies(name="Deny incoming, allow outgoing by default", incoming="deny", outgoing="allow")
    ufw.tagged_rules_exactly(
        name=f"Allow SSH from admin subnets and the API from client subnets (rules tagged {ufw.TAG})",
        rules=wanted_rules(s),
    )
    ufw.enabled(name="Enable ufw")
