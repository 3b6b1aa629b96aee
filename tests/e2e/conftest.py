"""The lab every end-to-end test runs on: brought up once per session, torn down even when tests fail.

Slot: $OLLAMA_FLEET_LAB_SLOT (default 0); hosts: $OLLAMA_FLEET_LAB_HOSTS (default 3); their Debian releases:
$OLLAMA_FLEET_LAB_RELEASE (default trixie,bookworm, taken in turn: lab-1 and lab-3 run Debian 13, lab-2 Debian
12). One mixed lab runs every module on both releases at the cost of one lab: the canary and the gateway
(lab-1) are Debian 13 hosts, every fleet-wide deploy, re-run, verify and rollout covers a Debian 12 host
too, and each rollout is a mixed-fleet rollout.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from ollama_fleet.lab import lifecycle
from ollama_fleet.lab.plan import default_slot
from ollama_fleet.lab.releases import RELEASES_ENV, parse_releases
from ollama_fleet.lab.state import LabState

E2E_RELEASES = "trixie,bookworm"


@pytest.fixture(scope="session")
def lab() -> Iterator[LabState]:
    slot = default_slot()
    try:
        releases = parse_releases(os.environ.get(RELEASES_ENV, E2E_RELEASES))
        state = lifecycle.up(int(os.environ.get("OLLAMA_FLEET_LAB_HOSTS", "3")), slot, releases=releases)
    except BaseException:
        lifecycle.down(slot)
        raise
    try:
        yield state
    finally:
        lifecycle.down(slot)


# The session shares one lab, so module order matters: the lab's own tests need bare hosts (e.g. the outsider
# may SSH in only before ufw is on), and the deploy tests begin by asserting the hosts are bare.
MODULE_ORDER = (
    "test_artifacts",
    "test_vagrant",
    "test_lab",
    "test_lab_ollama",
    "test_deploy",
    "test_paths_and_addresses",
    "test_gpu_lab",  # right after the first deploy: a deployed host that must stay exactly as it is
    "test_verify",
    "test_reimage",  # re-images the Debian 12 host and puts its image back: the fleet stays as deployed
    "test_openai_client",
    "test_key_scopes",
    "test_firewall_rules",
    "test_sudo_deploy",
    "test_packaged",
    "test_model_pull",
    "test_model_fanout",
    "test_release_page",
    "test_fleet_init",
    "test_doctor",
    "test_rollout",
    "test_day2",
    "test_gateway",  # it leaves lab-1 a gateway and lab-2 an extra model
    "test_metrics",  # last: it leaves lab-3 a monitoring host and every host granting a metrics key
)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    here = Path(__file__).parent

    def rank(item: pytest.Item) -> int:
        if item.path.parent != here:
            return -1  # the unit tier first, as collected
        name = item.path.stem
        return MODULE_ORDER.index(name) if name in MODULE_ORDER else len(MODULE_ORDER)

    items.sort(key=rank)  # stable: tests keep their order inside a module
