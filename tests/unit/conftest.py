"""Fixtures the unit tests that run a real nginx share."""

from __future__ import annotations

import pytest

from ollama_fleet.pki import FleetCA


@pytest.fixture(scope="module")
def ca(tmp_path_factory: pytest.TempPathFactory) -> FleetCA:
    """A fleet CA for the module's test certificates."""
    return FleetCA.load_or_create(tmp_path_factory.mktemp("pki"))
