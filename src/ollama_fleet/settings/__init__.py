"""Typed settings: the single source of truth for every tunable of a host.

Settings come from pyinfra host data as flat, namespaced keys (`ollama_version`, `nginx_read_timeout`, ...),
so a group or a host can override one key without restating a whole dict. Each prefix maps to one section
model (sections.py, auth.py, models.py); `settings_for_host` validates them all at once and raises
`SettingsError`, which names the host, the key, the bad value and the fix, before any operation is added
for any host.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

from pydantic import BaseModel, ConfigDict, ValidationError, model_validator

from ollama_fleet.settings.auth import RESOLVED_FIELDS, ApiKey, AuthSettings, KeyPolicy, resolve_api_keys
from ollama_fleet.settings.base import Section
from ollama_fleet.settings.errors import SettingsError, closest
from ollama_fleet.settings.gateway import GatewaySettings
from ollama_fleet.settings.models import CustomModel, ModelsSettings
from ollama_fleet.settings.monitoring import MonitoringSettings
from ollama_fleet.settings.rules import listed_name, timespan_seconds
from ollama_fleet.settings.sections import (
    DeploySettings,
    FirewallSettings,
    GpuSettings,
    HealthSettings,
    MetricsSettings,
    NginxSettings,
    OllamaSettings,
    ServiceSettings,
    TlsSettings,
)

__all__ = [
    "SECTIONS",
    "ApiKey",
    "CustomModel",
    "FleetSettings",
    "GatewaySettings",
    "KeyPolicy",
    "SettingsError",
    "listed_name",
    "service_address",
    "settings_for_host",
    "timespan_seconds",
    "url_host",
]

SECTIONS: dict[str, type[Section]] = {
    "ollama": OllamaSettings,
    "nginx": NginxSettings,
    "tls": TlsSettings,
    "auth": AuthSettings,
    "firewall": FirewallSettings,
    "models": ModelsSettings,
    "health": HealthSettings,
    "gateway": GatewaySettings,
    "deploy": DeploySettings,
    "service": ServiceSettings,
    "gpu": GpuSettings,
    "metrics": MetricsSettings,
    "monitoring": MonitoringSettings,
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
    gateway: GatewaySettings
    deploy: DeploySettings
    service: ServiceSettings
    gpu: GpuSettings
    metrics: MetricsSettings
    monitoring: MonitoringSettings

    @model_validator(mode="after")
    def _consistent(self) -> FleetSettings:
        if self.nginx.enabled and self.ollama.listen_host not in ("127.0.0.1", "localhost", "::1"):
            raise ValueError(
                f"ollama_listen: {self.ollama.listen!r} exposes Ollama (no auth, no TLS) beside nginx; "
                "set ollama_listen to 127.0.0.1:11434 when nginx_enabled is true"
            )
        ports = {"nginx_https_port": self.nginx.https_port}
        if self.nginx.http_redirect:
            ports["nginx_http_port"] = self.nginx.http_port
        ports["ollama_listen"] = self.ollama.listen_port
        if self.is_model_seed:
            ports["models_lan_port"] = self.models.lan_port
        if self.firewall.enabled:
            ports["firewall_ssh_port"] = self.firewall.ssh_port
        if self.is_gateway:
            ports["gateway_port"] = self.gateway.port
        clashes = _clashing(ports)
        if clashes:
            raise ValueError(f"ports clash: {clashes}; give each a different port")
        if self.auth.enabled and self.nginx.enabled and not self.auth.keys:
            raise ValueError(
                "auth_enabled is true but no API key was found: set auth_key_names and put the keys in "
                f'{self.auth.secrets_file} ({{"api_keys": {{"name": "key"}}}}) or in '
                "OLLAMA_FLEET_API_KEY_<NAME> environment variables"
            )
        if self.monitoring.enabled:
            self._check_monitoring()
        gpu_problem = self._gpu_env_problem()
        if gpu_problem:
            raise ValueError(gpu_problem)
        if self.is_model_seed:
            self._check_seed()
        if self.gateway.enabled:
            self._check_gateway()
        if self.gateway.only:
            self._check_gateway_only()
        known = set(self.models.names())
        for custom in self.models.custom:
            base = listed_name(custom.base)
            if custom.base not in self.models.gguf and base not in known and "/" not in custom.base:
                raise ValueError(
                    f"models_custom {custom.name!r} is FROM {custom.base!r}, which is neither in models_pull "
                    "nor in models_gguf; add it to one of them"
                )
        return self

    def _gpu_env_problem(self) -> str | None:
        """ollama_env that would hide the GPU gpu_vendor declares."""
        env, vendor = self.ollama.env, self.gpu.vendor
        hiding = {"nvidia": ["CUDA_VISIBLE_DEVICES"], "amd": ["HIP_VISIBLE_DEVICES", "ROCR_VISIBLE_DEVICES"]}
        for name in hiding.get(vendor, []):
            if env.get(name) == "-1":
                return (
                    f"gpu_vendor is {vendor!r} but ollama_env {name}=-1 hides every {vendor} GPU from "
                    "Ollama; drop it, or set gpu_vendor 'none' to run this host on the CPU"
                )
        library = env.get("OLLAMA_LLM_LIBRARY", "")
        other = {"nvidia": ("rocm",), "amd": ("cuda_v12", "cuda_v13", "cuda_jetpack5", "cuda_jetpack6")}
        if library in other.get(vendor, ()):
            return (
                f"gpu_vendor is {vendor!r} but ollama_env OLLAMA_LLM_LIBRARY={library} is another vendor's "
                "library, so Ollama would use no GPU; drop OLLAMA_LLM_LIBRARY or fix it"
            )
        return None

    def _check_seed(self) -> None:
        if not self.models.lan_subnets:
            raise ValueError(
                f"models_seed_host is this host ({self.host}) but models_lan_subnets is empty: list the "
                "subnets of the hosts that fetch models from it, e.g. ['192.168.10.0/24']"
            )
        if not self.nginx.enabled:
            raise ValueError("models_seed_host: the seed serves models through nginx; set nginx_enabled true")
        clashes = self.models.lan_collisions()
        if clashes:
            raise ValueError(
                f"models_pull: {'; '.join(clashes)} are one name on the seed's LAN registry; pull one of them"
            )

    def _check_gateway(self) -> None:
        if not self.nginx.enabled:
            raise ValueError("gateway_enabled: the gateway is an nginx site; set nginx_enabled true")
        if self.tls.mode != "fleet_ca":
            raise ValueError(
                "gateway_enabled: the gateway checks the hosts' certificates against the fleet CA; set "
                "tls_mode to 'fleet_ca' on the gateway host"
            )

    def _check_monitoring(self) -> None:
        key = self.monitoring.metrics_key
        if not key:
            raise ValueError(
                "monitoring_enabled: Prometheus needs a key to read the hosts' /metrics; add one with the "
                "metrics scope (auth_key_policies {'monitor': {'scope': 'metrics'}}) and set "
                "monitoring_metrics_key to its name"
            )
        if key not in self.auth.key_names or self.auth.policy(key).scope != "metrics":
            raise ValueError(
                f"monitoring_metrics_key: {key!r} must be in auth_key_names with the metrics scope "
                f"(auth_key_policies {{{key!r}: {{'scope': 'metrics'}}}})"
            )
        if not self.nginx.enabled or self.tls.mode != "fleet_ca":
            raise ValueError(
                "monitoring_enabled: Prometheus checks the hosts' certificates against the fleet CA; set "
                "nginx_enabled true and tls_mode 'fleet_ca' on the monitoring host"
            )

    @property
    def metrics_key_value(self) -> str:
        """The value of monitoring_metrics_key (resolved like every key). SECRET."""
        found = [k for k in self.auth.keys if k.name == self.monitoring.metrics_key]
        return found[0].key.get_secret_value() if found else ""

    def _check_gateway_only(self) -> None:
        if not self.is_gateway:
            raise ValueError(
                f"gateway_only: {self.host} is not a gateway; put it in the inventory group `gateway` (or "
                "set gateway_enabled true), or drop gateway_only"
            )
        models = [f"models_{key}" for key in ("pull", "gguf", "custom") if getattr(self.models, key)]
        if models:
            raise ValueError(
                f"gateway_only: this host runs no Ollama, so it serves no models; empty {', '.join(models)} "
                "for it (the gateway routes each model to the hosts that list it)"
            )
        if self.is_model_seed:
            raise ValueError("gateway_only: the models seed serves models from its Ollama; name another host")

    @property
    def serves_api(self) -> bool:
        """This host runs Ollama behind its own API (every host but a gateway_only one)."""
        return not (self.is_gateway and self.gateway.only)

    @property
    def serves_api_through_nginx(self) -> bool:
        """Its own API on nginx_https_port: what clients call there, and what the fleet's gateways balance
        over."""
        return self.serves_api and self.nginx.enabled

    @property
    def serves_metrics(self) -> bool:
        """nginx logs each request for the metrics and serves /metrics (metrics_enabled, behind nginx)."""
        return self.metrics.enabled and self.nginx.enabled

    @property
    def is_gateway(self) -> bool:
        """This host serves the fleet's gateway endpoint on gateway_port."""
        return bool(self.gateway.enabled) and self.nginx.enabled

    @property
    def num_parallel(self) -> int:
        """Requests Ollama runs at once on this host (OLLAMA_NUM_PARALLEL; 1 when unset or auto)."""
        raw = self.ollama.env.get("OLLAMA_NUM_PARALLEL", "")
        return int(raw) if raw.isdigit() and int(raw) > 0 else 1

    @property
    def is_model_seed(self) -> bool:
        """This host pulls the fleet's registry models and serves them on models_lan_port."""
        return self.models.seed_host == self.host

    @property
    def fetches_from_seed(self) -> bool:
        """This host gets its registry models from the seed over the LAN, not from the registry."""
        return self.models.seed_host is not None and self.models.seed_host != self.host

    @property
    def serves_releases(self) -> bool:
        """This host, the models seed, keeps the Ollama archives it fetched and serves them on the LAN."""
        return self.is_model_seed and self.ollama.via_seed and self.ollama.source != "controller"

    @property
    def fetches_release_from_seed(self) -> bool:
        """This host gets the Ollama archives from the seed first (the release page if the seed has none)."""
        return self.fetches_from_seed and self.ollama.via_seed and self.ollama.source != "controller"

    @property
    def server_names(self) -> list[str]:
        return self.nginx.server_names or [self.host]

    @property
    def serves_ipv6(self) -> bool:
        """IPv6 client subnets: nginx listens on [::] too and the certificate carries the host's IPv6."""
        return any(subnet.version == 6 for subnet in self.firewall.client_subnets)


def service_address(s: FleetSettings, data: Mapping[str, Any]) -> str:
    """Where the fleet and its clients reach host `s`: service_address, else ssh_hostname, else its name
    (an IPv6 literal bare, without brackets)."""
    if s.service.address:
        return s.service.address
    return str(data.get("ssh_hostname") or s.host).strip("[]")


def url_host(address: str) -> str:
    """An address as the host part of a URL or of `host:port`: an IPv6 literal in brackets."""
    return f"[{address}]" if ":" in address else address


def _clashing(ports: dict[str, int]) -> str:
    seen: dict[int, str] = {}
    for key, port in ports.items():
        if port in seen:
            return f"{seen[port]} and {key} are both {port}"
        seen[port] = key
    return ""


def settings_for_host(
    host: str, data: Mapping[str, Any], environ: Mapping[str, str] | None = None
) -> FleetSettings:
    """Validate one host's data into FleetSettings, or raise SettingsError listing every problem."""
    environ = os.environ if environ is None else environ
    sections, problems = _split_sections(data)
    if not problems:
        problems = resolve_api_keys(sections["auth"], environ)
    if problems:
        raise SettingsError(host, problems)
    try:
        return FleetSettings.model_validate({"host": host, **sections})
    except ValidationError as exc:
        raise SettingsError(host, [_describe(err, data) for err in exc.errors()]) from None


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
            problems.append(f"{key}: unknown setting; {closest(key, choices)}")
            continue
        sections[prefix][field] = value
    return sections, problems


def _describe(err: Any, data: Mapping[str, Any]) -> str:
    """One pydantic error as `key: message (got value)` with the flat key the user wrote."""
    loc = [str(p) for p in err["loc"]]
    key = f"{loc[0]}_{loc[1]}" if len(loc) >= 2 and loc[0] in SECTIONS else ".".join(loc) or "settings"
    message = str(err["msg"]).removeprefix("Value error, ")
    if key in data and key.removeprefix("auth_") not in RESOLVED_FIELDS:
        return f"{key}: {message} (got {data[key]!r})"
    return f"{key}: {message}" if key != "settings" else message
