"""Controller-side paths mean one place: relative ones are resolved against the fleet root, never against
the directory a command happens to be started from.

The fleet root is the directory of the inventory file, or its parent when that directory is named
`inventories` (this repository's layout: `inventories/<fleet>.py` beside `.fleet/`). So
`tls_ca_dir = ".fleet/pki"` is the same CA whether `pyinfra`, `ollama-fleet verify` or `rollout` is started
from the checkout, from /tmp or from cron.
"""

from __future__ import annotations

import functools
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from ollama_fleet.settings.auth import AuthSettings
from ollama_fleet.settings.sections import TlsSettings

# Keys holding one path on the controller, with the default used when the data does not set them.
SINGLE_PATHS: dict[str, Path | None] = {
    "tls_ca_dir": TlsSettings.model_fields["ca_dir"].default,
    "auth_secrets_file": AuthSettings.model_fields["secrets_file"].default,
    "tls_cert_file": None,
    "tls_key_file": None,
    "ollama_controller_dir": None,
}
PATH_LISTS = ("nginx_template_dirs",)  # lists of directories on the controller
PATH_VALUES = ("models_gguf",)  # model name -> a file on the controller


class FleetRootError(ValueError):
    """A relative controller path with no fleet root to resolve it against."""


def fleet_root(inventory: str | Path) -> Path:
    """The directory relative controller paths are resolved against, for this inventory file."""
    directory = Path(inventory).resolve().parent
    return directory.parent if directory.name == "inventories" else directory


def with_controller_paths(data: Mapping[str, Any], root: Path | None) -> dict[str, Any]:
    """`data` with every controller path made absolute against `root` (the defaults of tls_ca_dir and
    auth_secrets_file included). With no root (no inventory file), a relative path is an error: it would
    otherwise mean whatever directory the command was started from."""
    resolved = dict(data)
    relative: list[str] = []

    def absolute(key: str, value: Any) -> Any:
        if value is None or not isinstance(value, str | Path) or str(value) == "":
            return value  # not a path: the settings' own validation names it
        path = Path(value).expanduser()
        if path.is_absolute():
            return str(path)
        if root is None:
            relative.append(f"{key} {str(value)!r}")
            return value
        return str(root / path)

    for key, default in SINGLE_PATHS.items():
        value = resolved.get(key, default)
        if value is not None:
            resolved[key] = absolute(key, value)
    for key in PATH_LISTS:
        if isinstance(resolved.get(key), list):
            resolved[key] = [absolute(key, item) for item in resolved[key]]
    for key in PATH_VALUES:
        if isinstance(resolved.get(key), dict):
            resolved[key] = {name: absolute(key, item) for name, item in resolved[key].items()}
    if relative:
        raise FleetRootError(
            f"{', '.join(relative)}: relative, and this run has no inventory file to resolve it against "
            "(relative controller paths mean the inventory's directory, or its parent for inventories/); "
            "give absolute paths, or run with an inventory file"
        )
    return resolved


def pyinfra_inventory_file() -> Path | None:
    """The inventory file of the `pyinfra` command running this deploy, as its CLI parses its arguments, or
    None (a list of host names, or pyinfra driven from Python)."""
    return _inventory_in_arguments(tuple(sys.argv))


@functools.cache
def _inventory_in_arguments(argv: tuple[str, ...]) -> Path | None:
    program = Path(argv[0]).name if argv else ""
    if program not in ("pyinfra", "__main__.py") or (
        program == "__main__.py" and Path(argv[0]).parent.name != "pyinfra"
    ):
        return None
    from pyinfra_cli.cli import cli  # imported by pyinfra itself already: no gevent patching here

    context = cli.make_context("pyinfra", list(argv[1:]), resilient_parsing=True)
    inventory = context.params.get("inventory")
    if not inventory or not Path(inventory).is_file():
        return None
    return Path(inventory).resolve()
