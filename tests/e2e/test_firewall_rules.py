"""ufw on the lab's hosts: rules someone else made that open our ports wider are named (and, when asked,
deleted), and a deploy whose SSH connection arrives on another port than firewall_ssh_port changes nothing."""

from __future__ import annotations

import pytest
from verify_fleet import DeployedFleet, deploy_fleet

from ollama_fleet.lab.state import LabState

pytestmark = pytest.mark.e2e

WIDE_RULE = "allow 443/tcp"  # from anywhere: wider than firewall_client_subnets


@pytest.fixture(scope="module")
def fleet(lab: LabState) -> DeployedFleet:
    return deploy_fleet(lab)


def _rules(fleet: DeployedFleet, host: str) -> str:
    return fleet.ssh_ok(host, "ufw show added")


def test_a_foreign_rule_that_opens_the_api_wider_is_named_then_deleted_on_request(
    fleet: DeployedFleet,
) -> None:
    host = fleet.hosts[-1]
    fleet.ssh_ok(host, f"ufw {WIDE_RULE}")
    try:
        warned = fleet.deploy("--limit", host)
        assert warned.returncode == 0, warned.stderr[-3000:]
        output = warned.stdout + warned.stderr
        assert (
            f"{host}: ufw rule `ufw {WIDE_RULE}` (not made by ollama-fleet) opens port 443 to any" in output
        )
        assert "set firewall_remove_foreign_rules = true" in output
        assert f"ufw {WIDE_RULE}" in _rules(fleet, host)  # warned only: never removed unasked

        removed = fleet.deploy("--limit", host, "--data", "firewall_remove_foreign_rules=true")
        assert removed.returncode == 0, removed.stderr[-3000:]
        assert f"ufw {WIDE_RULE}" not in _rules(fleet, host)
        assert "ollama-fleet" in _rules(fleet, host)  # ours stay
        again = fleet.deploy("--limit", host, "--data", "firewall_remove_foreign_rules=true")
        assert "opens port 443" not in again.stdout + again.stderr
    finally:
        fleet.ssh(host, f"ufw delete {WIDE_RULE}")


def test_an_ssh_port_other_than_the_connections_is_refused_before_any_change(fleet: DeployedFleet) -> None:
    host = fleet.hosts[-1]
    before = _rules(fleet, host)
    done = fleet.deploy("--limit", host, "--data", "firewall_ssh_port=2222")
    assert done.returncode != 0
    output = done.stdout + done.stderr
    assert f"{host}: this deploy's SSH connection arrives on port 22, but firewall_ssh_port is 2222" in output
    assert "Set firewall_ssh_port = 22" in output
    assert _rules(fleet, host) == before
