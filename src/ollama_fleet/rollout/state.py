"""The rollout's state file: its batches, each host's outcome, and where to resume.

Written after every change of state (atomically: a temp file renamed over it), so a rollout that halts or
is killed can be resumed from its first unfinished batch; a finished batch is never deployed again.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from ollama_fleet.settings.paths import fleet_root

RUNNING, HALTED, DONE = "running", "halted", "done"
PENDING, DEPLOYING, OK, FAILED, SKIPPED = "pending", "deploying", "ok", "failed", "untouched"


@dataclass
class HostOutcome:
    host: str
    batch: int
    version_before: str = ""
    version_after: str = ""
    result: str = PENDING
    reason: str = ""


@dataclass
class RolloutState:
    inventory: str
    deploy: str
    batches: list[list[str]]
    hosts: dict[str, HostOutcome] = field(default_factory=dict)
    next_batch: int = 0
    status: str = RUNNING
    halt_reason: str = ""

    @classmethod
    def new(cls, inventory: str, deploy: str, batches: list[list[str]]) -> RolloutState:
        state = cls(inventory=inventory, deploy=deploy, batches=batches)
        for index, batch in enumerate(batches):
            for host in batch:
                state.hosts[host] = HostOutcome(host=host, batch=index)
        return state

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["hosts"] = [asdict(outcome) for outcome in self.hosts.values()]
        return data

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> RolloutState:
        hosts = {h["host"]: HostOutcome(**h) for h in data["hosts"]}
        return cls(
            inventory=data["inventory"],
            deploy=data["deploy"],
            batches=[list(b) for b in data["batches"]],
            hosts=hosts,
            next_batch=int(data["next_batch"]),
            status=data["status"],
            halt_reason=data.get("halt_reason", ""),
        )


def default_state_path(inventory: str) -> Path:
    """`.fleet/rollout-<inventory>.json` in the inventory's fleet root (not the working directory)."""
    return fleet_root(inventory) / ".fleet" / f"rollout-{Path(inventory).stem}.json"


def save(state: RolloutState, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    temp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    temp.write_text(json.dumps(state.to_json(), indent=2) + "\n")
    temp.replace(path)


def load(path: Path) -> RolloutState | None:
    if not path.is_file():
        return None
    return RolloutState.from_json(json.loads(path.read_text()))
