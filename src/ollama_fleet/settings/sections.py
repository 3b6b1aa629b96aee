"""The sections of a host's settings other than API keys (auth.py) and models (models.py)."""

from __future__ import annotations

import ipaddress
import re
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from ollama_fleet import ollama_env
from ollama_fleet.settings.base import IPNetwork, Section
from ollama_fleet.settings.rules import (
    DNS_NAME,
    NGINX_SIZE,
    VERSION,
    host_names,
    release_key,
    timespan_seconds,
)

Overlay = Literal["rocm", "jetpack5", "jetpack6", "mlx"]
OVERLAY_ARCHES: dict[str, tuple[str, ...]] = {
    "rocm": ("amd64",),
    "jetpack5": ("arm64",),
    "jetpack6": ("arm64",),
    "mlx": ("amd64", "arm64"),
}
ARCHIVE_NAME = r"ollama-linux-(amd64|arm64)(-(rocm|jetpack5|jetpack6|mlx))?\.(tgz|tar\.zst)"
FIRST_ZST_RELEASE = (0, 14, 0, 0)
"""Ollama's Linux archives are .tar.zst from v0.14.0 (its release candidates included), .tgz before."""


class OllamaSettings(Section):
    """Which Ollama to install, from where, and how it runs."""

    version: str = "0.24.0"
    arch: Literal["amd64", "arm64"] = "amd64"
    # auto: what the release page of `version` has (.tar.zst since 0.14.0, .tgz before).
    archive_format: Literal["auto", "tgz", "tar.zst"] = "auto"
    # Archives unpacked over the main one into the same release directory (rocm: AMD GPUs; jetpack5/6: Jetson;
    # mlx: MLX's CUDA 13 runner), each checked like the main archive and rolled back with it.
    overlays: list[Overlay] = Field(default_factory=list)
    # release: the official GitHub release; mirror: a LAN mirror with the same layout
    # (<mirror_url>/v<version>/<archive> + sha256sum.txt); controller: push files from the controller.
    source: Literal["release", "mirror", "controller"] = "release"
    release_url: str = "https://github.com/ollama/ollama/releases/download"
    mirror_url: str | None = None
    controller_dir: Path | None = None
    # With a models_seed_host, the seed fetches the release once and the other hosts get it from the seed.
    via_seed: bool = True
    # Before any host changes, the controller asks the release page for each archive; a 404 stops the run
    # (a controller that cannot reach the page leaves the check to the hosts).
    check_url: bool = True
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
    # Ollama's cloud (models named `...:cloud` run on ollama.com, with the prompt and the host's Ollama key;
    # web search; model recommendations fetched at start). Off: OLLAMA_NO_CLOUD=1, and nginx refuses every
    # request naming a cloud model. True only where prompts may leave the LAN.
    cloud: bool = False

    @field_validator("version")
    @classmethod
    def _version_is_plain(cls, value: str) -> str:
        if not re.fullmatch(VERSION, value):
            raise ValueError(f"{value!r} is not a release version; write it like 0.24.0 (no leading v)")
        return value

    @field_validator("sha256")
    @classmethod
    def _pins_are_digests(cls, value: dict[str, str]) -> dict[str, str]:
        for key, digest in value.items():
            if not re.fullmatch(rf"{VERSION}/{ARCHIVE_NAME}", key):
                raise ValueError(
                    f"key {key!r} is not '<version>/<archive>'; write it like "
                    "'0.24.0/ollama-linux-amd64.tar.zst' (or -rocm.tar.zst for an overlay)"
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
        problems = ollama_env.combination_problems(value)
        if problems:
            raise ValueError("; ".join(problems))
        return {name: str(raw) for name, raw in value.items()}

    @model_validator(mode="after")
    def _overlays_fit_arch(self) -> OllamaSettings:
        for overlay in self.overlays:
            if self.arch not in OVERLAY_ARCHES[overlay]:
                arches = " or ".join(OVERLAY_ARCHES[overlay])
                raise ValueError(
                    f"ollama_overlays: {overlay!r} is released for {arches} only, and ollama_arch is "
                    f"{self.arch!r}; remove it or fix ollama_arch"
                )
        if len(set(self.overlays)) != len(self.overlays):
            raise ValueError(f"ollama_overlays lists an overlay twice: {self.overlays}")
        return self

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
    def archive_suffix(self) -> str:
        """tgz or tar.zst: as set, or (auto) what the release page of this version publishes."""
        if self.archive_format != "auto":
            return self.archive_format
        return "tar.zst" if release_key(self.version) >= FIRST_ZST_RELEASE else "tgz"

    @property
    def archive_name(self) -> str:
        """The main archive: bin/ollama and lib/ollama."""
        return f"ollama-linux-{self.arch}.{self.archive_suffix}"

    @property
    def archive_names(self) -> list[str]:
        """The main archive, then each overlay's, in the order they are unpacked."""
        overlays = [f"ollama-linux-{self.arch}-{o}.{self.archive_suffix}" for o in self.overlays]
        return [self.archive_name, *overlays]

    @property
    def pinned_sha256(self) -> str | None:
        """The trusted digest of this version's main archive, when ollama_sha256 pins it."""
        return self.sha256.get(f"{self.version}/{self.archive_name}")

    @property
    def pins(self) -> dict[str, str]:
        """Archive name -> trusted digest, for this version's archives that ollama_sha256 pins."""
        pinned = ((name, self.sha256.get(f"{self.version}/{name}")) for name in self.archive_names)
        return {name: digest for name, digest in pinned if digest}

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
        if not self.cloud:
            managed["OLLAMA_NO_CLOUD"] = "1"
        return {**managed, **dict(sorted(self.env.items()))}


def _env_text(raw: Any) -> Any:
    if isinstance(raw, bool):
        return "true" if raw else "false"
    return str(raw) if isinstance(raw, int | float) else raw


class NginxSettings(Section):
    """The TLS reverse proxy in front of Ollama."""

    enabled: bool = True
    https_port: int = Field(default=443, gt=0, lt=65536)
    http_port: int = Field(default=80, gt=0, lt=65536)
    # False: no plain HTTP at all (nginx and ufw), so a client set to http:// fails before sending its key.
    http_redirect: bool = False
    server_names: list[str] = Field(default_factory=list)  # empty: the host's inventory name
    read_timeout: int = Field(default=900, ge=600, description="seconds; model loads and long generations")
    send_timeout: int = Field(default=900, ge=600)
    connect_timeout: int = Field(default=10, gt=0)
    client_max_body_size: str = "64g"  # model uploads (/api/blobs, admin keys only)
    api_max_body_size: str = "32m"  # every other request
    hsts_max_age: int = Field(default=31536000, ge=0)  # seconds of Strict-Transport-Security; 0: none
    site_template: str = "nginx-site.conf.j2"
    template_dirs: list[Path] = Field(default_factory=list)  # searched before the built-in templates

    @field_validator("client_max_body_size", "api_max_body_size")
    @classmethod
    def _size(cls, value: str) -> str:
        if not NGINX_SIZE.fullmatch(value):
            raise ValueError(f"{value!r} is not an nginx size; write it like 64g, 512m or 0 (no limit)")
        return value

    @field_validator("api_max_body_size")
    @classmethod
    def _api_body_in_memory(cls, value: str) -> str:
        if int(value.rstrip("kKmMgG")) == 0:
            raise ValueError(
                "0 (no limit) would leave large bodies in files, where the model check cannot read them; "
                "give a size, like 32m"
            )
        return value

    @field_validator("server_names")
    @classmethod
    def _server_names(cls, value: list[str]) -> list[str]:
        return host_names(value)


class TlsSettings(Section):
    """Certificates: a fleet CA on the controller by default, or files the user provides per host."""

    mode: Literal["fleet_ca", "provided"] = "fleet_ca"
    ca_dir: Path = Path(".fleet/pki")  # on the controller, git-ignored; relative: to the fleet root
    # True for one run (--data tls_ca_roll=true): replace the CA the hosts carry with the one in ca_dir (a new
    # one when it is empty). False: a deploy whose CA differs from the hosts' stops before any change.
    ca_roll: bool = False
    # What a new fleet CA may sign for (critical X.509 name constraints): DNS names or domains (a domain holds
    # every name below it) and IP networks. Empty: derived when the CA is made, from every host's names,
    # server names, extra SANs, service address and firewall_client_subnets. An existing CA keeps its own:
    # widening them takes a CA roll (ollama-fleet ca roll).
    ca_name_constraints: list[str] = Field(default_factory=list)
    cert_file: Path | None = None  # provided mode, on the controller
    key_file: Path | None = None
    extra_sans: list[str] = Field(default_factory=list)
    cert_days: int = Field(default=397, ge=1)
    renew_before_days: int = Field(default=30, ge=1)
    remote_dir: Path = Path("/etc/ollama-fleet/tls")

    @field_validator("extra_sans")
    @classmethod
    def _sans(cls, value: list[str]) -> list[str]:
        return host_names(value)

    @field_validator("ca_name_constraints")
    @classmethod
    def _constraints(cls, value: list[str]) -> list[str]:
        kept = []
        for entry in value:
            try:
                kept.append(str(ipaddress.ip_network(entry, strict=False)))
            except ValueError:
                if not DNS_NAME.fullmatch(entry):
                    raise ValueError(
                        f"{entry!r} is neither a DNS name or domain (like lan or ai.example.com) nor an IP "
                        "network (like 192.168.10.0/24)"
                    ) from None
                kept.append(entry.lower())
        return kept

    @model_validator(mode="after")
    def _outlives_its_renewal(self) -> TlsSettings:
        # A certificate that is due for renewal the day it is issued would be reissued by every deploy
        # (never "no change") and fail verify's expiry check.
        if self.mode == "fleet_ca" and self.cert_days <= self.renew_before_days:
            raise ValueError(
                f"tls_cert_days ({self.cert_days}) must be more than tls_renew_before_days "
                f"({self.renew_before_days}); raise tls_cert_days or lower tls_renew_before_days"
            )
        return self

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


class FirewallSettings(Section):
    """ufw: deny incoming, SSH from admin subnets, the API from client subnets."""

    enabled: bool = True
    client_subnets: list[IPNetwork] = Field(default_factory=list)
    admin_subnets: list[IPNetwork] = Field(default_factory=list)
    ssh_port: int = Field(default=22, gt=0, lt=65536)
    remove_foreign_rules: bool = False  # delete others' rules that open our ports wider (else: warn)

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


class HealthSettings(Section):
    """The on-host health timer that checks the local API and logs to the journal."""

    enabled: bool = True
    interval: str = "1min"
    timeout_seconds: int = Field(default=10, gt=0)

    @field_validator("interval")
    @classmethod
    def _interval_is_a_timespan(cls, value: str) -> str:
        timespan_seconds(value)
        return value


class MetricsSettings(Section):
    """Per-request metrics (docs/metrics.md): nginx logs each request's key name, model, route, status,
    time to first token and tokens; mtail turns the log into Prometheus series at /metrics, over TLS, for a
    key with the `metrics` scope."""

    enabled: bool = True
    # Where /metrics may be asked from (besides the key): e.g. the monitoring hosts' subnet; empty: any
    # address the firewall lets in (firewall_client_subnets).
    subnets: list[IPNetwork] = Field(default_factory=list)


class GpuSettings(Section):
    """Which GPU a host serves from; see docs/gpu.md."""

    # auto: the NVIDIA and AMD GPUs whose driver is loaded (none: a CPU host, as before); nvidia/amd: the
    # host must serve from one, and a deploy fails before changing it when the driver is missing; none:
    # no GPU setup even where one is present.
    vendor: Literal["auto", "nvidia", "amd", "none"] = "auto"
    # The health timer restarts Ollama when a GPU host's models run on the CPU (e.g. after a resume).
    restart_on_cpu_fallback: bool = False


class DeploySettings(Section):
    """How a deploy run goes about a host."""

    # A host exactly as its last verified deploy left it, with the same settings, gets only the quick client
    # check (see ollama_fleet.state_probe); false: every run asks every operation, as on a changed host.
    fast_rerun: bool = True


class ServiceSettings(Section):
    """Where the rest of the fleet and its clients reach this host, when that is not where SSH reaches it."""

    # An IP address or a DNS name: what the gateways dial, where hosts fetch models from the seed, what
    # verify calls and the certificate names. None: ssh_hostname, else the inventory name.
    address: str | None = None

    @field_validator("address")
    @classmethod
    def _address(cls, value: str | None) -> str | None:
        if value is None:
            return None
        value = value.strip()
        if value.startswith("[") and value.endswith("]"):
            value = value[1:-1]
        try:
            return ipaddress.ip_address(value).compressed
        except ValueError:
            return host_names([value])[0].lower()
