"""API keys: their names and policies in host data, their values from the environment or the secrets file
(never from inventory files), and the rules a key must meet."""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, SecretStr, field_validator, model_validator

from ollama_fleet.settings.base import Section
from ollama_fleet.settings.rules import KEY_NAME, MODEL_NAME, listed_name

RESOLVED_FIELDS = ("keys", "refused_keys")  # filled from secrets, never from inventory data


class ApiKey(Section):
    name: str
    key: SecretStr


Scope = Literal["inference", "admin", "metrics"]
"""inference: chat, completions, embeddings and the read-only model API; admin: everything (pull, push,
create, delete, copy, blob uploads); metrics: the metrics path only (/metrics, for Prometheus), no API."""

RATE = re.compile(r"[1-9]\d*r/[sm]")


class KeyPolicy(Section):
    """What one key may do: its scope and, optionally, which models, how fast and how much at once."""

    scope: Scope = "inference"
    models: list[str] = Field(default_factory=list)  # the only models it may name; empty: any
    rate: str | None = None  # nginx limit_req rate, e.g. "60r/m" or "5r/s"; None: unlimited
    burst: int = Field(default=0, ge=0)  # requests over the rate accepted at once before 429
    concurrency: int | None = Field(default=None, gt=0)  # requests in flight at once; None: unlimited

    @field_validator("models")
    @classmethod
    def _models(cls, value: list[str]) -> list[str]:
        for name in value:
            if not MODEL_NAME.fullmatch(name):
                raise ValueError(f"model {name!r} is not a model name (like llama3.2:1b)")
        return sorted({listed_name(name) for name in value})  # as requests name them, once each

    @field_validator("rate")
    @classmethod
    def _rate(cls, value: str | None) -> str | None:
        if value is not None and not RATE.fullmatch(value):
            raise ValueError(f"rate {value!r} is not an nginx rate; write it like 60r/m or 5r/s")
        return value


class AuthSettings(Section):
    """API keys enforced by nginx (Ollama itself has no server-side auth)."""

    enabled: bool = True
    key_names: list[str] = Field(default_factory=list)
    secrets_file: Path = Path(".fleet/secrets.json")  # {"api_keys": {"name": "key"}}, git-ignored
    health_open: bool = True  # GET /health answers without a key
    default_scope: Scope = "inference"  # the scope of a key that key_policies does not name
    key_policies: dict[str, KeyPolicy] = Field(default_factory=dict)  # key name -> its policy
    keys: list[ApiKey] = Field(default_factory=list)  # resolved, never from inventory files
    # Keys this host must refuse (verify checks each gets 401): the secrets file's other named keys and
    # its "revoked_api_keys" list (where a rotated-out key goes). Resolved like `keys`.
    refused_keys: list[ApiKey] = Field(default_factory=list)

    @field_validator("key_names")
    @classmethod
    def _names(cls, value: list[str]) -> list[str]:
        for name in value:
            if not KEY_NAME.fullmatch(name):
                raise ValueError(f"key name {name!r} may only hold letters, digits, '_' and '-'")
        return value

    @model_validator(mode="after")
    def _policies_name_keys(self) -> AuthSettings:
        for name in self.key_policies:
            if name not in self.key_names:
                raise ValueError(
                    f"auth_key_policies names key {name!r}, which is not in auth_key_names "
                    f"({', '.join(self.key_names) or 'empty'}); add it there or remove its policy"
                )
        return self

    def policy(self, name: str) -> KeyPolicy:
        return self.key_policies.get(name) or KeyPolicy(scope=self.default_scope)


def resolve_api_keys(auth: dict[str, Any], environ: Mapping[str, str]) -> list[str]:
    """Look up each named key in the environment, then in the secrets file; never in inventory data."""
    names = auth.get("key_names") or []
    secrets_file = Path(auth.get("secrets_file") or AuthSettings.model_fields["secrets_file"].default)
    from_file: dict[str, str] = {}
    revoked: Any = []
    if secrets_file.is_file():
        mode = secrets_file.stat().st_mode & 0o777
        if mode & 0o077:
            return [
                f"auth_secrets_file: {str(secrets_file)!r} is readable by others (mode {mode:04o}); "
                f"it holds the API keys: run chmod 600 {secrets_file}"
            ]
        try:
            document = json.loads(secrets_file.read_text())
            from_file, revoked = document["api_keys"], document.get("revoked_api_keys", [])
        except (ValueError, KeyError, TypeError):
            return [
                f'auth_secrets_file: {str(secrets_file)!r} is not JSON of the form {{"api_keys": {{...}}}}'
            ]
    keys, problems = [], []
    auth["refused_keys"] = _refused_keys(from_file, revoked, names if isinstance(names, list) else [])
    for name in names if isinstance(names, list) else []:
        if not KEY_NAME.fullmatch(str(name)):
            continue  # AuthSettings reports the bad name; a lookup hint for it would mislead
        env_name = key_env_name(str(name))
        key = environ.get(env_name) or from_file.get(str(name))
        if not key:
            problems.append(
                f"auth_key_names: key {name!r} has no value; set {env_name} or add it to {secrets_file}"
            )
        elif len(key) < 16 or not re.fullmatch(r"[A-Za-z0-9_\-.~+/=]+", key):
            problems.append(
                f"auth_key_names: key {name!r} is too short or has characters unsafe in a header "
                "(use 16+ of A-Z a-z 0-9 _ - . ~ + / =)"
            )
        elif looks_guessable(key):
            problems.append(
                f"auth_key_names: key {name!r} is guessable (few distinct characters or a repeated "
                "pattern); make one with: python3 -c 'import secrets; print(secrets.token_urlsafe(32))'"
            )
        else:
            keys.append({"name": name, "key": key})
    problems += _shared_keys(keys)
    auth["keys"] = keys
    return problems


def key_env_name(name: str) -> str:
    """The environment variable a key's value may come from: OLLAMA_FLEET_API_KEY_<NAME>."""
    return f"OLLAMA_FLEET_API_KEY_{name.upper().replace('-', '_')}"


def looks_guessable(key: str) -> bool:
    """Fewer than 10 distinct characters, or a short chunk repeated (`abcdabcdabcdabcd`)."""
    if len(set(key)) < 10:
        return True
    return any(key == (key[:size] * len(key))[: len(key)] for size in range(1, len(key) // 2 + 1))


def _shared_keys(keys: list[dict[str, Any]]) -> list[str]:
    """Two names with one value cannot be told apart in logs or revoked one at a time."""
    names_by_key: dict[str, list[str]] = {}
    for item in keys:
        names_by_key.setdefault(str(item["key"]), []).append(str(item["name"]))
    return [
        f"auth_key_names: keys {', '.join(map(repr, names))} have the same value; give each its own"
        for names in names_by_key.values()
        if len(names) > 1
    ]


def _refused_keys(from_file: Mapping[str, Any], revoked: Any, granted: list[Any]) -> list[dict[str, str]]:
    """The secrets file's keys not granted to this host, and its "revoked_api_keys" list."""
    refused = [
        {"name": str(name), "key": str(key)}
        for name, key in from_file.items()
        if name not in granted and isinstance(key, str) and key
    ]
    for index, key in enumerate(revoked if isinstance(revoked, list) else []):
        if isinstance(key, str) and key:
            refused.append({"name": f"revoked_api_keys[{index}]", "key": key})
    return refused
