"""Pinned models (`models_pull = ["name@sha256:..."]`) checked from the controller before any host changes:
the registry must still serve the pinned manifest, or the deploy stops naming the model, the hosts and both
digests. A registry the controller cannot reach stops it too: a pin that cannot be checked is not trusted.
"""

from __future__ import annotations

import hashlib
from collections import defaultdict

import httpx

from ollama_fleet.operations.models import MANIFEST_ACCEPT
from ollama_fleet.settings import FleetSettings
from ollama_fleet.settings.rules import model_reference, split_pin

TIMEOUT = 20.0


def pinned_pulls(settings: dict[str, FleetSettings]) -> dict[tuple[str, str], list[str]]:
    """(manifest URL, pinned digest) -> the hosts that pull it from the registry themselves."""
    wanted: dict[tuple[str, str], list[str]] = defaultdict(list)
    for host, s in settings.items():
        if s.fetches_from_seed:
            continue  # they get what the seed has, and the seed is checked
        for entry in s.models.pull:
            name, pin = split_pin(entry)
            if pin:
                url = model_reference(name).manifest_url(s.models.pulls_insecurely(name))
                wanted[(url, pin)].append(host)
    return wanted


def served_digest(url: str) -> str:
    """sha256:<hex> of the manifest at `url`; httpx.HTTPError when it cannot be had."""
    with httpx.Client(timeout=TIMEOUT, trust_env=True, follow_redirects=True) as client:
        response = client.get(url, headers={"Accept": MANIFEST_ACCEPT})
        response.raise_for_status()
    return "sha256:" + hashlib.sha256(response.content).hexdigest()


def pin_problems(settings: dict[str, FleetSettings]) -> list[str]:
    problems = []
    for (url, pin), hosts in sorted(pinned_pulls(settings).items()):
        who = ", ".join(sorted(hosts))
        try:
            served = served_digest(url)
        except httpx.HTTPStatusError as exc:
            problems.append(
                f"hosts {who}: the registry no longer serves the model pinned to {pin} ({url} answers "
                f"{exc.response.status_code}); pin a digest it serves, or drop the pin"
            )
            continue
        except httpx.HTTPError as exc:
            problems.append(
                f"hosts {who}: cannot check the pin {pin}: {url} is unreachable from the controller "
                f"({type(exc).__name__}: {exc})"
            )
            continue
        if served != pin:
            problems.append(
                f"hosts {who}: {url} now serves {served}, not the pinned {pin}; pin the new digest to take "
                "it, or keep the hosts on what they have by not deploying this model"
            )
    return problems
