"""The lab every end-to-end test runs on: brought up once per session, torn down even when tests fail.

Slot: $OLLAMA_FLEET_LAB_SLOT (default 0); hosts: $OLLAMA_FLEET_LAB_HOSTS (default 3).
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

from ollama_fleet.lab import lifecycle
from ollama_fleet.lab.plan import default_slot
from ollama_fleet.lab.state import LabState


@pytest.fixture(scope="session")
def lab() -> Iterator[LabState]:
    slot = default_slot()
    try:
        state = lifecycle.up(int(os.environ.get("OLLAMA_FLEET_LAB_HOSTS", "3")), slot)
    except BaseException:
        lifecycle.down(slot)
        raise
    try:
        yield state
    finally:
        lifecycle.down(slot)
