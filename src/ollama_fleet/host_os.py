"""Which host operating systems the deploy supports, read from /etc/os-release before anything changes.

The deploy needs systemd, apt, Debian's nginx packaging (sites-enabled, modules-enabled, `proxy_params`) and,
for most features, njs as `libnginx-mod-http-js`. Debian 12 and 13 are tested on the lab; Ubuntu 24.04 ships
every package the deploy installs and is expected to work; Ubuntu 22.04 has no njs package, so the features
that need njs are refused there unless njs is already installed under that name. Anything else (RHEL,
Alpine, Debian 11, ...) is refused with its name and this list.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from ollama_fleet.render import NJS_PACKAGE, lan_models
from ollama_fleet.settings import FleetSettings

SUPPORTED = "Debian 12 or 13 (tested), Ubuntu 24.04 (expected to work) or Ubuntu 22.04 (without njs)"

_MINIMUM = {"debian": (12,), "ubuntu": (22, 4)}
_FIRST_WITH_NJS = {"ubuntu": (24, 4)}
"""Releases before these have no libnginx-mod-http-js in their archive (Debian has had it since 12)."""


@dataclass(frozen=True)
class HostOs:
    id: str
    """os-release ID: debian, ubuntu, rhel, alpine, ..."""
    version: tuple[int, ...]
    """VERSION_ID as numbers (12; 22, 4); empty when the host has none (Debian testing, unstable)."""
    pretty_name: str


def host_os(release_meta: Mapping[str, Any]) -> HostOs:
    """From the key/values of /etc/os-release (pyinfra's LinuxDistribution fact's `release_meta`)."""
    os_id = str(release_meta.get("ID") or "unknown").lower()
    version_id = str(release_meta.get("VERSION_ID") or "")
    parts = version_id.split(".")
    version = tuple(int(p) for p in parts) if version_id and all(p.isdigit() for p in parts) else ()
    pretty = str(release_meta.get("PRETTY_NAME") or f"{os_id} {version_id}".strip())
    return HostOs(os_id, version, pretty)


def unsupported_reason(found: HostOs) -> str | None:
    """Why the deploy refuses this OS, or None when it is supported."""
    minimum = _MINIMUM.get(found.id)
    if minimum is None or not found.version or found.version < minimum:
        return f"{found.pretty_name} is not supported; supported: {SUPPORTED}"
    return None


def has_njs_package(found: HostOs) -> bool:
    first = _FIRST_WITH_NJS.get(found.id)
    return first is None or found.version >= first


def njs_features(s: FleetSettings, loaded_check: bool) -> list[str]:
    """The settings of this host that need njs, each named by the key that turns it off (render.needs_njs);
    none without nginx."""
    features: list[str] = []
    if not s.nginx.enabled:
        return features
    if s.is_gateway:
        features.append("the gateway (gateway_enabled / the gateway group)")
    if loaded_check:
        features.append("answering a gateway that prefers loaded hosts (gateway_prefer_loaded)")
    if s.auth.enabled and any(s.auth.policy(name).models for name in s.auth.key_names):
        features.append("model allow-lists (auth_key_policies ... models)")
    if not s.ollama.cloud:
        features.append("refusing cloud models (ollama_cloud false)")
    if s.serves_metrics:
        features.append("per-request metrics (metrics_enabled)")
    if lan_models(s):
        features.append("the model seed's blob filter (models_seed_host on this host)")
    return features


def needs_njs_package_check(found: HostOs, s: FleetSettings, loaded_check: bool) -> bool:
    """Whether the host's installed packages decide (an OS we support, without njs in its archive, and
    settings that need it)."""
    return (
        unsupported_reason(found) is None
        and not has_njs_package(found)
        and bool(njs_features(s, loaded_check))
    )


def host_os_problems(
    host_name: str, found: HostOs, s: FleetSettings, loaded_check: bool, installed: Mapping[str, Any]
) -> str | None:
    """One message naming the host, its OS and the fix, or None when the deploy can go on.
    `installed`: the host's Debian packages (an njs installed by hand under Debian's name is used)."""
    reason = unsupported_reason(found)
    if reason:
        return f"{host_name}: {reason}"
    features = njs_features(s, loaded_check)
    if features and not has_njs_package(found) and NJS_PACKAGE not in installed:
        return (
            f"{host_name}: {found.pretty_name} has no {NJS_PACKAGE} (njs) package, and these settings need "
            f"it: {'; '.join(features)}. Turn them off for this host, or use Ubuntu 24.04+ or Debian 12/13"
        )
    return None
