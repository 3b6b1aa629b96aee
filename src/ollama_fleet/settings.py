"""Typed settings: the single source of truth for every tunable of a host.

Settings come from pyinfra host data as flat, namespaced keys (`ollama_version`, `nginx_read_timeout`, ...),
so a group or a host can override one key without restating a whole dict. Each prefix maps to one section
model below; `settings_for_host` validates them all at once and raises `SettingsError`, which names the
host, the key, the bad value and the fix, before any operation is added for any host.
"""

from __future__ import annotations

import ipaddress
import json
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)

from ollama_fleet import ollama_env

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class OllamaSettings(_Section):
    """Which Ollama to install, from where, and how it runs."""

    version: str = "0.24.0"
    arch: Literal["amd64", "arm64"] = "amd64"
    archive_format: Literal["tgz", "tar.zst"] = "tgz"
    # release: the official GitHub release; mirror: a LAN mirror with the same layout
    # (<mirror_url>/v<version>/<archive> + sha256sum.txt); controller: push files from the controller.
    source: Literal["release", "mirror", "controller"] = "release"
    release_url: str = "https://github.com/ollama/ollama/releases/download"
    mirror_url: str | None = None
    controller_dir: Path | None = None
    install_dir: Path = Path("/opt/ollama")
    keep_versions: int = Field(default=2, ge=1)
    # "<version>/<archive>" -> sha256, e.g. {"0.24.0/ollama-linux-amd64.tgz": "ab12..."}: a digest taken from
    # somewhere you trust, checked instead of the sha256sum.txt that comes from the same place as the archive.
    sha256: dict[str, str] = Field(default_factory=dict)
    user: str = "ollama"
    group: str = "ollama"
    hardening: bool = True  # systemd sandboxing of ollama.service (GPU-safe; see the hardening drop-in)
    home: Path = Path("/usr/share/ollama")
    models_dir: Path = Path("/usr/share/ollama/.ollama/models")
    listen: str = "127.0.0.1:11434"
    origins: list[str] = Field(default_factory=list)
    env: dict[str, str] = Field(default_factory=dict)

    @field_validator("version")
    @classmethod
    def _version_is_plain(cls, value: str) -> str:
        if not re.fullmatch(r"\d+\.\d+\.\d+(-rc\d+)?", value):
            raise ValueError(f"{value!r} is not a release version; write it like 0.24.0 (no leading v)")
        return value

    @field_validator("sha256")
    @classmethod
    def _pins_are_digests(cls, value: dict[str, str]) -> dict[str, str]:
        for key, digest in value.items():
            if not re.fullmatch(r"\d+\.\d+\.\d+(-rc\d+)?/ollama-linux-(amd64|arm64)\.(tgz|tar\.zst)", key):
                raise ValueError(
                    f"key {key!r} is not '<version>/<archive>'; write it like '0.24.0/ollama-linux-amd64.tgz'"
                )
            if not re.fullmatch(r"[0-9a-f]{64}", str(digest)):
                raise ValueError(f"{key}: {digest!r} is not a sha256 (64 lowercase hex digits)")
        return value

    @field_validator("user", "group")
    @classmethod
    def _not_root(cls, value: str) -> str:
        if value in ("root", "0"):
            raise ValueError(
                "root would give `ollama serve` (and every model it runs) all privileges; use a system "
                "account such as 'ollama' (the deploy creates it)"
            )
        return value

    @field_validator("listen")
    @classmethod
    def _listen_has_port(cls, value: str) -> str:
        host, sep, port = value.rpartition(":")
        if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise ValueError(f"{value!r} is not HOST:PORT; write it like 127.0.0.1:11434")
        return value

    @field_validator("origins")
    @classmethod
    def _origins_parse(cls, value: list[str]) -> list[str]:
        for origin in value:
            problem = ollama_env.check_origin(origin)
            if problem:
                raise ValueError(problem)
        return value

    @field_validator("env", mode="before")
    @classmethod
    def _env_scalars_as_text(cls, value: Any) -> Any:
        """group_data is Python, so `"OLLAMA_NUM_PARALLEL": 2` or `True` must work as Ollama reads them."""
        if not isinstance(value, dict):
            return value
        return {name: _env_text(raw) for name, raw in value.items()}

    @field_validator("env")
    @classmethod
    def _env_known(cls, value: dict[str, str]) -> dict[str, str]:
        for name, raw in value.items():
            problem = ollama_env.problem_with(name, str(raw))
            if problem:
                raise ValueError(problem)
            if any(ord(c) < 32 or ord(c) == 127 for c in raw):
                raise ValueError(f"{name}: the value holds a control character; Environment= cannot carry it")
        return {name: str(raw) for name, raw in value.items()}

    @model_validator(mode="after")
    def _source_has_location(self) -> OllamaSettings:
        if self.source == "mirror" and not self.mirror_url:
            raise ValueError(
                "ollama_source is 'mirror' but ollama_mirror_url is not set; set it to the base URL"
            )
        if self.source == "controller" and not self.controller_dir:
            raise ValueError(
                "ollama_source is 'controller' but ollama_controller_dir is not set; set it to a directory "
                "on the controller holding the archive and sha256sum.txt"
            )
        return self

    @property
    def listen_host(self) -> str:
        return self.listen.rpartition(":")[0].strip("[]")

    @property
    def listen_port(self) -> int:
        return int(self.listen.rpartition(":")[2])

    @property
    def archive_name(self) -> str:
        return f"ollama-linux-{self.arch}.{self.archive_format}"

    @property
    def pinned_sha256(self) -> str | None:
        """The trusted digest of this version's archive, when ollama_sha256 pins it."""
        return self.sha256.get(f"{self.version}/{self.archive_name}")

    @property
    def download_base(self) -> str:
        """URL of the directory holding the archive and sha256sum.txt for this version."""
        base = self.mirror_url if self.source == "mirror" else self.release_url
        return f"{str(base).rstrip('/')}/v{self.version}"

    def environment(self) -> dict[str, str]:
        """Every Environment= line of the systemd drop-in, in a stable order."""
        managed = {"OLLAMA_HOST": self.listen, "OLLAMA_MODELS": str(self.models_dir)}
        if self.origins:
            managed["OLLAMA_ORIGINS"] = ",".join(self.origins)
        return {**managed, **dict(sorted(self.env.items()))}


def _env_text(raw: Any) -> Any:
    if isinstance(raw, bool):
        return "true" if raw else "false"
    return str(raw) if isinstance(raw, int | float) else raw


class NginxSettings(_Section):
    """The TLS reverse proxy in front of Ollama."""

    enabled: bool = True
    https_port: int = Field(default=443, gt=0, lt=65536)
    http_port: int = Field(default=80, gt=0, lt=65536)
    server_names: list[str] = Field(default_factory=list)  # empty: the host's inventory name
    read_timeout: int = Field(default=900, ge=600, description="seconds; model loads and long generations")
    send_timeout: int = Field(default=900, ge=600)
    connect_timeout: int = Field(default=10, gt=0)
    client_max_body_size: str = "64g"
    hsts_max_age: int = Field(default=0, ge=0)  # seconds of Strict-Transport-Security; 0 sends none
    site_template: str = "nginx-site.conf.j2"
    template_dirs: list[Path] = Field(default_factory=list)  # searched before the built-in templates

    @field_validator("client_max_body_size")
    @classmethod
    def _size(cls, value: str) -> str:
        if not re.fullmatch(r"\d+[kKmMgG]?", value):
            raise ValueError(f"{value!r} is not an nginx size; write it like 64g, 512m or 0 (no limit)")
        return value

    @field_validator("server_names")
    @classmethod
    def _server_names(cls, value: list[str]) -> list[str]:
        return _host_names(value)


_DNS_NAME = re.compile(r"(?!-)[A-Za-z0-9-]{1,63}(?<!-)(\.(?!-)[A-Za-z0-9-]{1,63}(?<!-))*")


def _host_names(names: list[str]) -> list[str]:
    """Names that go into nginx's server_name and certificate SANs: DNS names or IP addresses only."""
    for name in names:
        try:
            ipaddress.ip_address(name)
        except ValueError:
            if not _DNS_NAME.fullmatch(name) or len(name) > 253:
                raise ValueError(
                    f"{name!r} is neither a DNS name nor an IP address; write it like ollama1.lan or 10.0.0.5"
                ) from None
    return names


class TlsSettings(_Section):
    """Certificates: a fleet CA on the controller by default, or files the user provides per host."""

    mode: Literal["fleet_ca", "provided"] = "fleet_ca"
    ca_dir: Path = Path(".fleet/pki")  # on the controller, git-ignored
    cert_file: Path | None = None  # provided mode, on the controller
    key_file: Path | None = None
    extra_sans: list[str] = Field(default_factory=list)
    cert_days: int = Field(default=397, ge=1)
    renew_before_days: int = Field(default=30, ge=1)
    remote_dir: Path = Path("/etc/ollama-fleet/tls")

    @field_validator("extra_sans")
    @classmethod
    def _sans(cls, value: list[str]) -> list[str]:
        return _host_names(value)

    @model_validator(mode="after")
    def _provided_files_exist(self) -> TlsSettings:
        if self.mode != "provided":
            return self
        for key, path in (("tls_cert_file", self.cert_file), ("tls_key_file", self.key_file)):
            if path is None:
                raise ValueError(
                    f"tls_mode is 'provided' but {key} is not set; set it to a file on the controller"
                )
            if not Path(path).is_file():
                raise ValueError(f"{key} {str(path)!r} does not exist on the controller")
        return self


class ApiKey(_Section):
    name: str
    key: SecretStr


class AuthSettings(_Section):
    """API keys enforced by nginx (Ollama itself has no server-side auth)."""

    enabled: bool = True
    key_names: list[str] = Field(default_factory=list)
    secrets_file: Path = Path(".fleet/secrets.json")  # {"api_keys": {"name": "key"}}, git-ignored
    health_open: bool = True  # GET /health answers without a key
    keys: list[ApiKey] = Field(default_factory=list)  # resolved, never from inventory files
    # Keys this host must refuse (verify checks each gets 401): the secrets file's other named keys and
    # its "revoked_api_keys" list (where a rotated-out key goes). Resolved like `keys`.
    refused_keys: list[ApiKey] = Field(default_factory=list)

    @field_validator("key_names")
    @classmethod
    def _names(cls, value: list[str]) -> list[str]:
        for name in value:
            if not re.fullmatch(r"[A-Za-z0-9_-]+", name):
                raise ValueError(f"key name {name!r} may only hold letters, digits, '_' and '-'")
        return value


class FirewallSettings(_Section):
    """ufw: deny incoming, SSH from admin subnets, the API from client subnets."""

    enabled: bool = True
    client_subnets: list[IPNetwork] = Field(default_factory=list)
    admin_subnets: list[IPNetwork] = Field(default_factory=list)
    ssh_port: int = Field(default=22, gt=0, lt=65536)

    @field_validator("client_subnets", "admin_subnets", mode="before")
    @classmethod
    def _strict_cidrs(cls, value: Any) -> Any:
        if not isinstance(value, list):
            raise ValueError("must be a list of CIDRs like ['192.168.1.0/24']")
        for item in value:
            try:
                ipaddress.ip_network(str(item), strict=True)
            except ValueError as exc:
                raise ValueError(
                    f"{item!r} is not a valid CIDR ({exc}); write it like 192.168.1.0/24"
                ) from None
        return value

    @model_validator(mode="after")
    def _needs_subnets(self) -> FirewallSettings:
        if self.enabled and not self.client_subnets:
            raise ValueError(
                "firewall_enabled is true but firewall_client_subnets is empty: no client could reach the "
                "API; list the LAN subnets, e.g. ['192.168.1.0/24']"
            )
        if self.enabled and not self.admin_subnets:
            raise ValueError(
                "firewall_enabled is true but firewall_admin_subnets is empty: SSH would be locked out; "
                "list the subnets you administer from"
            )
        return self


class CustomModel(_Section):
    """A model built from a Modelfile template (FROM a base, SYSTEM, PARAMETER...)."""

    name: str
    base: str  # a model name, or a GGUF name listed in models_gguf
    system: str | None = None
    parameters: dict[str, str | int | float] = Field(default_factory=dict)
    template: str = "Modelfile.j2"

    # Each value becomes one line of a Modelfile; these keep it one line of the intended instruction.
    @field_validator("name", "base")
    @classmethod
    def _model_name(cls, value: str) -> str:
        if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._:/-]*", value):
            raise ValueError(f"{value!r} is not a model name; write it like vehicle-assistant or llama3.2:1b")
        return value

    @field_validator("system")
    @classmethod
    def _system(cls, value: str | None) -> str | None:
        if value is not None and '"""' in value:
            raise ValueError('system may not contain """: a Modelfile has no way to escape it')
        return value

    @field_validator("parameters")
    @classmethod
    def _parameters(cls, value: dict[str, str | int | float]) -> dict[str, str | int | float]:
        for name, raw in value.items():
            if not re.fullmatch(r"[A-Za-z0-9_]+", name):
                raise ValueError(f"parameter name {name!r} may hold only letters, digits and '_'")
            if any(ord(c) < 32 for c in str(raw)) or '"""' in str(raw):
                raise ValueError(f'parameter {name!r} must be one line without """')
        return value


class ModelsSettings(_Section):
    pull: list[str] = Field(default_factory=list)  # registry names, e.g. llama3.2:1b
    gguf: dict[str, Path] = Field(default_factory=dict)  # model name -> GGUF file on the controller
    custom: list[CustomModel] = Field(default_factory=list)
    prune: bool = False  # delete models not listed above
    insecure_registries: list[str] = Field(default_factory=list)  # host:port pulled over plain http

    @field_validator("insecure_registries")
    @classmethod
    def _registries_are_host_ports(cls, value: list[str]) -> list[str]:
        for entry in value:
            if not re.fullmatch(r"[A-Za-z0-9_][A-Za-z0-9_.:-]*", entry):
                raise ValueError(
                    f"{entry!r} is not a registry host; write it as in the model name, e.g. 10.0.0.5:8080 "
                    "(no scheme, no path)"
                )
        return value

    @field_validator("gguf")
    @classmethod
    def _files_exist(cls, value: dict[str, Path]) -> dict[str, Path]:
        for name, path in value.items():
            if not Path(path).is_file():
                raise ValueError(f"GGUF for model {name!r} not found on the controller at {str(path)!r}")
        return value

    def names(self) -> list[str]:
        """Every model the host must serve, as Ollama lists them."""
        return [listed_name(n) for n in [*self.pull, *self.gguf, *(c.name for c in self.custom)]]

    def pulls_insecurely(self, name: str) -> bool:
        """Whether `name` comes from a registry in insecure_registries (Ollama then pulls over http)."""
        parts = name.split("://", 1)[-1].split("/")
        return len(parts) == 3 and parts[0] in self.insecure_registries


DEFAULT_REGISTRY = "registry.ollama.ai"


def listed_name(name: str) -> str:
    """A model name as /api/tags lists it: tagged (`:latest` by default), without a scheme, and without
    the default registry and its `library/` namespace (`registry.ollama.ai/library/phi` -> `phi:latest`)."""
    tagged = name if ":" in name.rsplit("/", 1)[-1] else f"{name}:latest"
    parts = tagged.split("://", 1)[-1].split("/")
    if len(parts) == 3 and parts[0].lower() == DEFAULT_REGISTRY:
        parts = parts[1:]
    if len(parts) == 2 and parts[0].lower() == "library":
        parts = parts[1:]
    return "/".join(parts)


class HealthSettings(_Section):
    """The on-host health timer that checks the local API and logs to the journal."""

    enabled: bool = True
    interval: str = "1min"
    timeout_seconds: int = Field(default=10, gt=0)

    @field_validator("interval")
    @classmethod
    def _interval_is_a_timespan(cls, value: str) -> str:
        timespan_seconds(value)
        return value


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


SECTIONS: dict[str, type[_Section]] = {
    "ollama": OllamaSettings,
    "nginx": NginxSettings,
    "tls": TlsSettings,
    "auth": AuthSettings,
    "firewall": FirewallSettings,
    "models": ModelsSettings,
    "health": HealthSettings,
}


class FleetSettings(BaseModel):
    model_config = ConfigDict(frozen=True)

    host: str
    ollama: OllamaSettings
    nginx: NginxSettings
    tls: TlsSettings
    auth: AuthSettings
    firewall: FirewallSettings
    models: ModelsSettings
    health: HealthSettings

    @model_validator(mode="after")
    def _consistent(self) -> FleetSettings:
        if self.nginx.enabled and self.ollama.listen_host not in ("127.0.0.1", "localhost", "::1"):
            raise ValueError(
                f"ollama_listen: {self.ollama.listen!r} exposes Ollama (no auth, no TLS) beside nginx; "
                "set ollama_listen to 127.0.0.1:11434 when nginx_enabled is true"
            )
        ports = {"nginx_https_port": self.nginx.https_port, "nginx_http_port": self.nginx.http_port}
        ports["ollama_listen"] = self.ollama.listen_port
        if self.firewall.enabled:
            ports["firewall_ssh_port"] = self.firewall.ssh_port
        clashes = _clashing(ports)
        if clashes:
            raise ValueError(f"ports clash: {clashes}; give each a different port")
        if self.auth.enabled and self.nginx.enabled and not self.auth.keys:
            raise ValueError(
                "auth_enabled is true but no API key was found: set auth_key_names and put the keys in "
                f'{self.auth.secrets_file} ({{"api_keys": {{"name": "key"}}}}) or in '
                "OLLAMA_FLEET_API_KEY_<NAME> environment variables"
            )
        known = set(self.models.names())
        for custom in self.models.custom:
            base = listed_name(custom.base)
            if custom.base not in self.models.gguf and base not in known and "/" not in custom.base:
                raise ValueError(
                    f"models_custom {custom.name!r} is FROM {custom.base!r}, which is neither in models_pull "
                    "nor in models_gguf; add it to one of them"
                )
        return self

    @property
    def server_names(self) -> list[str]:
        return self.nginx.server_names or [self.host]


def _clashing(ports: dict[str, int]) -> str:
    seen: dict[int, str] = {}
    for key, port in ports.items():
        if port in seen:
            return f"{seen[port]} and {key} are both {port}"
        seen[port] = key
    return ""


class SettingsError(Exception):
    """Bad settings for one host: names the host, the key, the bad value and the fix."""

    def __init__(self, host: str, problems: list[str]) -> None:
        self.host = host
        self.problems = problems
        lines = "\n".join(f"  - {p}" for p in problems)
        super().__init__(f"invalid settings for host {host!r}:\n{lines}")


def settings_for_host(
    host: str, data: Mapping[str, Any], environ: Mapping[str, str] | None = None
) -> FleetSettings:
    """Validate one host's data into FleetSettings, or raise SettingsError listing every problem."""
    environ = os.environ if environ is None else environ
    sections, problems = _split_sections(data)
    if not problems:
        problems = _resolve_api_keys(sections["auth"], environ)
    if problems:
        raise SettingsError(host, problems)
    try:
        return FleetSettings.model_validate({"host": host, **sections})
    except ValidationError as exc:
        raise SettingsError(host, [_describe(err, data) for err in exc.errors()]) from None


RESOLVED_FIELDS = ("keys", "refused_keys")  # filled from secrets, never from inventory data


def _split_sections(data: Mapping[str, Any]) -> tuple[dict[str, dict[str, Any]], list[str]]:
    """`nginx_read_timeout` -> sections['nginx']['read_timeout']; unknown keys of a known prefix are typos."""
    sections: dict[str, dict[str, Any]] = {name: {} for name in SECTIONS}
    problems = []
    for key, value in data.items():
        prefix, _, field = key.partition("_")
        model = SECTIONS.get(prefix)
        if model is None or not field:
            continue  # not ours: ssh_*, lab_*, pyinfra's own keys
        if field not in model.model_fields or field in RESOLVED_FIELDS:
            choices = [f"{prefix}_{f}" for f in model.model_fields if f not in RESOLVED_FIELDS]
            problems.append(f"{key}: unknown setting; {_closest(key, choices)}")
            continue
        sections[prefix][field] = value
    return sections, problems


def _closest(key: str, choices: list[str]) -> str:
    from difflib import get_close_matches

    close = get_close_matches(key, choices, n=1)
    return f"did you mean {close[0]}?" if close else f"known keys: {', '.join(choices)}"


def _resolve_api_keys(auth: dict[str, Any], environ: Mapping[str, str]) -> list[str]:
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
        if not re.fullmatch(r"[A-Za-z0-9_-]+", str(name)):
            continue  # AuthSettings reports the bad name; a lookup hint for it would mislead
        env_name = f"OLLAMA_FLEET_API_KEY_{str(name).upper().replace('-', '_')}"
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


def _describe(err: Any, data: Mapping[str, Any]) -> str:
    """One pydantic error as `key: message (got value)` with the flat key the user wrote."""
    loc = [str(p) for p in err["loc"]]
    key = f"{loc[0]}_{loc[1]}" if len(loc) >= 2 and loc[0] in SECTIONS else ".".join(loc) or "settings"
    message = str(err["msg"]).removeprefix("Value error, ")
    if key in data and key not in ("auth_keys", "auth_refused_keys"):
        return f"{key}: {message} (got {data[key]!r})"
    return f"{key}: {message}" if key != "settings" else message
