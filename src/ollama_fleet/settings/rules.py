"""Rules for values that several settings (and the certificates) share: one place for each."""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass, replace

KEY_NAME = re.compile(r"[A-Za-z0-9_-]+")
"""API key names: they appear in nginx maps, logs and environment variable names."""

DNS_NAME = re.compile(r"(?!-)[A-Za-z0-9-]{1,63}(?<!-)(\.(?!-)[A-Za-z0-9-]{1,63}(?<!-))*")

MODEL_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:/-]*")

VERSION = r"\d+\.\d+\.\d+(-rc\d+)?"
"""An Ollama release version as its tags name it, without the leading v."""


def release_key(version: str) -> tuple[int, ...]:
    """Sort key of a release: 0.24.0 < 0.24.1-rc1 < 0.24.1 (a release candidate before its release)."""
    match = re.fullmatch(r"(\d+)\.(\d+)\.(\d+)(?:-rc(\d+))?", version)
    if not match:
        return (-1,)
    major, minor, patch, rc = match.groups()
    return (int(major), int(minor), int(patch), int(rc) if rc is not None else 1_000_000)


NGINX_SIZE = re.compile(r"\d+[kKmMgG]?")


def host_names(names: list[str]) -> list[str]:
    """Names that go into nginx's server_name and certificate SANs: DNS names or IP addresses only."""
    for name in names:
        try:
            ipaddress.ip_address(name)
        except ValueError:
            if not DNS_NAME.fullmatch(name) or len(name) > 253:
                raise ValueError(
                    f"{name!r} is neither a DNS name nor an IP address; write it like ollama1.lan or 10.0.0.5"
                ) from None
    return names


DEFAULT_REGISTRY = "registry.ollama.ai"

PIN = re.compile(r"@(sha256:[0-9a-f]{64})$")
"""A models_pull entry may end in the manifest digest it must have: `llama3.2:1b@sha256:<64 hex>`."""


def split_pin(entry: str) -> tuple[str, str | None]:
    """(model name, pinned manifest digest or None) of a models_pull entry."""
    pinned = PIN.search(entry)
    return (entry[: pinned.start()], pinned.group(1)) if pinned else (entry, None)


def listed_name(name: str) -> str:
    """A model name as /api/tags lists it: tagged (`:latest` by default), without a scheme, without the
    default registry and its `library/` namespace (`registry.ollama.ai/library/phi` -> `phi:latest`), and
    without a pinned digest."""
    name = split_pin(name)[0]
    tagged = name if ":" in name.rsplit("/", 1)[-1] else f"{name}:latest"
    parts = tagged.split("://", 1)[-1].split("/")
    if len(parts) == 3 and parts[0].lower() == DEFAULT_REGISTRY:
        parts = parts[1:]
    if len(parts) == 2 and parts[0].lower() == "library":
        parts = parts[1:]
    return "/".join(parts)


@dataclass(frozen=True)
class ModelReference:
    """Where a model lives in a registry and in Ollama's store: `registry/namespace/model:tag`, with
    Ollama's defaults filled in (registry.ollama.ai, library, latest)."""

    registry: str
    namespace: str
    model: str
    tag: str

    @property
    def repository(self) -> str:
        return f"{self.namespace}/{self.model}"

    @property
    def manifest_url_path(self) -> str:
        """Where a registry serves the manifest (Docker registry API v2)."""
        return f"/v2/{self.repository}/manifests/{self.tag}"

    def manifest_url(self, insecure: bool = False) -> str:
        return f"{'http' if insecure else 'https'}://{self.registry}{self.manifest_url_path}"

    @property
    def manifest_path(self) -> str:
        """Under the models directory, as Ollama writes it after a pull."""
        return f"manifests/{self.registry}/{self.namespace}/{self.model}/{self.tag}"

    def on_lan(self, local: bool) -> ModelReference:
        """How the seed names it on its LAN registry: models created on the seed (GGUF, Modelfile) under
        `local-<namespace>`, so they never meet a pulled model of the same name."""
        return replace(self, namespace=f"{LOCAL_PREFIX}{self.namespace}") if local else self

    def at(self, registry: str) -> str:
        """The same repository and tag, named at another registry (host:port)."""
        return f"{registry}/{self.repository}:{self.tag}"


LOCAL_PREFIX = "local-"


def model_reference(name: str) -> ModelReference:
    name = split_pin(name)[0]
    tagged = name if ":" in name.rsplit("/", 1)[-1] else f"{name}:latest"
    parts = tagged.split("://", 1)[-1].split("/")
    if len(parts) == 1:
        parts = [DEFAULT_REGISTRY, "library", *parts]
    elif len(parts) == 2:
        parts = [DEFAULT_REGISTRY, *parts]
    registry, namespace, last = parts[0], parts[1], "/".join(parts[2:])
    model, tag = last.rsplit(":", 1)
    return ModelReference(registry, namespace, model, tag)


_TIMESPAN_UNITS = {
    "us": 1e-6, "usec": 1e-6, "ms": 1e-3, "msec": 1e-3,
    "s": 1, "sec": 1, "second": 1, "seconds": 1,
    "m": 60, "min": 60, "minute": 60, "minutes": 60,
    "h": 3600, "hr": 3600, "hour": 3600, "hours": 3600,
    "d": 86400, "day": 86400, "days": 86400,
    "w": 604800, "week": 604800, "weeks": 604800,
}  # fmt: skip
_TIMESPAN_PART = re.compile(r"(\d+(?:\.\d+)?)\s*([a-z]*)")
_TIMESPAN = re.compile(r"(?:\s*\d+(?:\.\d+)?\s*[a-z]*)+")


def timespan_seconds(value: str) -> float:
    """A systemd time span ("1min", "90s", "1h 30min") in seconds; ValueError if systemd would reject it."""
    text = value.strip().lower()
    if not _TIMESPAN.fullmatch(text):
        raise ValueError(f"{value!r} is not a systemd time span; write it like 1min or 30s")
    total = 0.0
    for number, unit in _TIMESPAN_PART.findall(text):
        if (unit or "s") not in _TIMESPAN_UNITS:
            raise ValueError(f"{value!r}: unknown unit {unit!r}; use s, min or h")
        total += float(number) * _TIMESPAN_UNITS[unit or "s"]
    if total < 10:
        raise ValueError(f"{value!r} is under 10 s; the check itself may take that long")
    return total
