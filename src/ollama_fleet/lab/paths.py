"""Where the lab keeps things: machine-wide caches, per-slot runtime dirs and the repo's `.lab/` state."""

from __future__ import annotations

import os
from pathlib import Path

import ollama_fleet

_DEFAULT_CACHE = "/var/cache/ollama-fleet"
_RUNTIME_ROOT = Path("/var/lib/ollama-fleet/lab")
REGISTRY_DIR = Path("/run/ollama-fleet")
"""Machine-wide bookkeeping shared by every slot and clone (saved sysctls, active slots); gone at reboot."""


def cache_dir() -> Path:
    return Path(os.environ.get("OLLAMA_FLEET_CACHE", _DEFAULT_CACHE))


def repo_root() -> Path:
    """The clone this package runs from (editable install), else the current directory."""
    env = os.environ.get("OLLAMA_FLEET_ROOT")
    if env:
        return Path(env).resolve()
    candidate = Path(ollama_fleet.__file__).resolve().parents[2]
    if (candidate / "pyproject.toml").is_file():
        return candidate
    return Path.cwd().resolve()


def state_dir(slot: int) -> Path:
    """Per-slot state in the clone (git-ignored): SSH key, ssh_config, state.json, logs."""
    return repo_root() / ".lab" / f"slot{slot}"


def runtime_dir(slot: int) -> Path:
    """Per-slot host roots and overlay layers: machine-wide because bridge and cgroup names are too."""
    return _RUNTIME_ROOT / f"slot{slot}"


def inventory_path(slot: int) -> Path:
    name = "lab.py" if slot == 0 else f"lab{slot}.py"
    return repo_root() / "inventories" / name
