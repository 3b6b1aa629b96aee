"""Where the fleet reaches a host: a service address apart from ssh_hostname, IPv6 for gateway members and the
seed, and the firewall subnets checked against those addresses before any host changes."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from test_plan import gateway_fleet, pyinfra

from ollama_fleet.deploys.fleet import address_problems
from ollama_fleet.deploys.proxy import dialled_address
from ollama_fleet.operations.addresses import ResolvedAddresses
from ollama_fleet.settings import (
    FleetSettings,
    SettingsError,
    service_address,
    settings_for_host,
    url_host,
)

pytestmark = pytest.mark.unit

ENVIRON = {"OLLAMA_FLEET_API_KEY_CI": "addrTESTkey0123456789abcdefXYZ"}


def settings(name: str, **data: Any) -> FleetSettings:
    base = {
        "auth_key_names": ["ci"],
        "auth_secrets_file": "/nonexistent/secrets.json",
        "firewall_client_subnets": ["10.1.0.0/24", "fd00:1::/64"],
        "firewall_admin_subnets": ["10.1.0.0/24"],
    }
    return settings_for_host(name, {**base, **data}, ENVIRON)


def test_the_service_address_is_typed_and_wins_over_ssh_hostname() -> None:
    assert settings("h1", service_address="[FD00:1::0011]").service.address == "fd00:1::11"
    assert settings("h1", service_address="GPU-1.lan").service.address == "gpu-1.lan"
    with pytest.raises(SettingsError, match=r"service_address: .*neither a DNS name nor an IP address"):
        settings("h1", service_address="not an address")
    s = settings("h1", service_address="10.1.0.11")
    assert service_address(s, {"ssh_hostname": "192.168.99.11"}) == "10.1.0.11"
    plain = settings("h1")
    assert service_address(plain, {"ssh_hostname": "192.168.99.11"}) == "192.168.99.11"
    assert service_address(plain, {}) == "h1"
    assert (url_host("fd00:1::11"), url_host("10.1.0.11"), url_host("h1.lan")) == (
        "[fd00:1::11]",
        "10.1.0.11",
        "h1.lan",
    )


def test_members_resolve_over_ipv6_only_when_they_serve_it() -> None:
    resolved = ResolvedAddresses().process(
        ["fd00:1::12      STREAM gpu-2.lan", "fd00:1::12      DGRAM", "10.1.0.12       STREAM gpu-2.lan", ""]
    )
    assert resolved == ["fd00:1::12", "10.1.0.12"]
    assert dialled_address(resolved, member_serves_ipv6=True) == "fd00:1::12"
    assert dialled_address(resolved, member_serves_ipv6=False) == "10.1.0.12"
    assert dialled_address(["fd00:1::12"], member_serves_ipv6=False) is None  # named by gateway_plan's error


def gateway_over(member: FleetSettings, gateway_address: str, member_address: str) -> list[str]:
    fleet = {"gw": settings("gw", gateway_enabled=True), "gpu-1": member}
    return address_problems(fleet, {"gw": gateway_address, "gpu-1": member_address})


def test_a_gateway_outside_a_members_client_subnets_is_named_with_the_fix() -> None:
    member = settings("gpu-1", firewall_client_subnets=["10.2.0.0/24"])
    [problem] = gateway_over(member, "10.1.0.10", "10.2.0.11")
    assert problem.startswith("host 'gpu-1': firewall_client_subnets ['10.2.0.0/24'] do not hold 10.1.0.10")
    assert "the address of the gateway 'gw'" in problem and "set gw's service_address" in problem
    assert gateway_over(settings("gpu-1"), "10.1.0.10", "10.1.0.11") == []
    assert gateway_over(settings("gpu-1"), "fd00:1::10", "fd00:1::11") == []  # IPv6 subnet holds it
    v4_only = settings("gpu-1", firewall_client_subnets=["10.1.0.0/24"])
    assert len(gateway_over(v4_only, "fd00:1::10", "gpu-1.lan")) == 1  # no IPv6 subnet to let it in
    # Not checkable or not enforced: a gateway known by name, another family, the member's firewall off.
    assert gateway_over(member, "gw.lan", "10.2.0.11") == []
    assert gateway_over(member, "fd00:1::10", "10.2.0.11") == []
    off = settings("gpu-1", firewall_enabled=False, firewall_client_subnets=["10.2.0.0/24"])
    assert gateway_over(off, "10.1.0.10", "10.2.0.11") == []


def seeded(fetcher_address: str, seed_address: str, **seed_data: Any) -> list[str]:
    models = {"models_pull": ["tiny"], "models_seed_host": "seed"}
    lan = {"models_lan_subnets": ["10.1.0.0/24"]}
    fleet = {"seed": settings("seed", **models, **lan, **seed_data), "gpu-1": settings("gpu-1", **models)}
    return address_problems(fleet, {"seed": seed_address, "gpu-1": fetcher_address})


def test_a_fetching_host_outside_the_seeds_lan_subnets_is_named_with_the_fix() -> None:
    [problem] = seeded("10.9.0.11", "10.1.0.10")
    assert problem.startswith(
        "host 'gpu-1': its address 10.9.0.11 is outside models_lan_subnets ['10.1.0.0/24'] of the seed 'seed'"
    )
    assert "add a subnet holding 10.9.0.11 to seed's models_lan_subnets" in problem
    assert seeded("10.1.0.11", "10.1.0.10") == []
    assert seeded("10.9.0.11", "10.1.0.10", firewall_enabled=False) == []


def test_a_seed_at_an_ipv6_literal_is_refused_for_ollamas_names() -> None:
    [problem] = seeded("10.1.0.11", "fd00:1::10")
    assert "an Ollama model name cannot hold" in problem and "service_address" in problem


def test_the_gateway_dials_members_at_their_service_address(tmp_path: Path) -> None:
    inventory = gateway_fleet(tmp_path, h2={"service_address": "10.213.250.99"})
    result = pyinfra("--dry", str(inventory), "deploys/ollama.py")
    assert result.returncode == 0, result.stderr
    assert "dialling @fake/h1 at 10.213.250.11:443, @fake/h2 at 10.213.250.99:443" in result.stderr


def test_a_gateway_the_members_firewall_would_drop_stops_before_any_change(tmp_path: Path) -> None:
    inventory = gateway_fleet(tmp_path, h2={"firewall_client_subnets": ["10.213.251.0/24"]})
    result = pyinfra("--dry", "--json", str(inventory), "deploys/ollama.py")
    assert result.returncode != 0
    output = result.stdout + result.stderr
    assert "settings are invalid; nothing was changed on any host" in output
    assert "host '@fake/h2': firewall_client_subnets ['10.213.251.0/24'] do not hold 10.213.250.11" in output
    with pytest.raises(json.JSONDecodeError):
        json.loads(result.stdout)  # no plan was made
