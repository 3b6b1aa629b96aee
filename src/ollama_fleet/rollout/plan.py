"""Which hosts go in which batch, and when a rollout must halt (pure functions, unit-tested)."""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence


class PlanError(ValueError):
    """A rollout that cannot be planned (bad --batch, unknown canary group); nothing was deployed."""


def batch_size(spec: str, hosts: int) -> int:
    """`--batch 3` -> 3; `--batch 25%` -> a quarter of `hosts`, rounded up, at least 1."""
    match = re.fullmatch(r"\s*(\d+)\s*(%?)\s*", spec)
    if not match or int(match.group(1)) == 0 or (match.group(2) and int(match.group(1)) > 100):
        raise PlanError(f"--batch {spec!r}: give a host count (e.g. 3) or a percentage from 1% to 100%")
    count, percent = int(match.group(1)), bool(match.group(2))
    if percent:
        return max(1, math.ceil(hosts * count / 100))
    return count


def default_canary_group(groups: Mapping[str, Sequence[str]]) -> str | None:
    """`canary` when the inventory has it, else the one group named `*_canary` (e.g. the lab's)."""
    if "canary" in groups:
        return "canary"
    named = sorted(name for name in groups if name.endswith("_canary"))
    return named[0] if len(named) == 1 else None


def plan_batches(hosts: Sequence[str], canary: Sequence[str], spec: str) -> list[list[str]]:
    """The canary hosts first (one batch), then the others in inventory order, `spec` hosts at a time."""
    first = [h for h in hosts if h in canary]
    rest = [h for h in hosts if h not in canary]
    batches = [first] if first else []
    if rest:
        size = batch_size(spec, len(rest))
        batches += [rest[i : i + size] for i in range(0, len(rest), size)]
    return batches


def should_halt(failed: int, max_unavailable: int) -> bool:
    """Halt once more hosts failed than may be unavailable (0: at the first failed host)."""
    return failed > max_unavailable
