"""Pure rendering: validated settings in, file text out.

Templates live in the top-level templates/ directory (packaged as ollama_fleet/templates) and can be
overridden by file name from `nginx_template_dirs`, which are searched first. Templates only lay text out;
every value that needs quoting or escaping for its target syntax (systemd, nginx, Modelfile) goes through a
filter defined here, so a user's template override gets the same protection.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path, PurePosixPath
from typing import Literal

import jinja2

from ollama_fleet import gpu
from ollama_fleet.gateway import (
    GATEWAY_MEMBERS_DIR,
    IF_LOADED_HEADER,
    LOADED_CACHE_VALID_S,
    GatewayPlan,
    member_conf_path,
    openai_models_json,
    tags_json,
)
from ollama_fleet.gpu import GpuSetup
from ollama_fleet.settings import CustomModel, FleetSettings
from ollama_fleet.settings.rules import ModelReference, model_reference

API_KEYS_PATH = PurePosixPath("/etc/nginx/ollama-fleet/api-keys.conf")
MODEL_ALLOW_LIST_JS = "nginx-model-allow-list.js"
MODEL_ALLOW_LIST_JS_PATH = PurePosixPath("/usr/share/ollama-fleet/nginx-model-allow-list.js")
"""Static (the lists are in the site's map), outside /etc/nginx so a staged copy validates against it."""
LOADED_CACHE_DIR = PurePosixPath("/var/lib/nginx/ollama-fleet-loaded")
"""The loaded check's cache of /api/ps; nginx makes it (its parent comes with Debian's nginx)."""
NJS_PACKAGE = "libnginx-mod-http-js"
METRICS_LOG = PurePosixPath("/var/log/nginx/ollama-fleet-metrics.log")
"""nginx's metrics log (one line per request), which mtail reads."""
METRICS_EXPORTER = "127.0.0.1:3903"
"""Where mtail serves its Prometheus page, on loopback only: clients reach it through nginx's /metrics."""
HOST_EXPORTER = "127.0.0.1:9100"
"""Where node-exporter serves the host's state, on loopback only: reached through nginx's /metrics/host."""
OLLAMA_BIN = PurePosixPath("/usr/local/bin/ollama")
RELEASE_STORE = PurePosixPath("/var/lib/ollama-fleet/releases")
"""On the models seed: the Ollama archives it fetched, v<version>/<archive>, served to the other hosts."""
RELEASE_STORE_URL_PATH = "/ollama-fleet/releases"
# install.sh bakes the installing shell's $PATH into the unit; a fixed, standard one keeps hosts identical.
SERVICE_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

UNIT_TEMPLATE = "ollama.service.j2"
DROPIN_TEMPLATE = "ollama-override.conf.j2"
HARDENING_TEMPLATE = "ollama-hardening.conf.j2"
GPU_DROPIN_TEMPLATE = "ollama-gpu.conf.j2"
GPU_NODES_TEMPLATE = "ollama-gpu-nodes.service.j2"
PERSONAL_DIRS = (PurePosixPath("/home"), PurePosixPath("/root"), PurePosixPath("/run/user"))
API_KEYS_TEMPLATE = "nginx-api-keys.conf.j2"


@dataclass(frozen=True)
class TlsPaths:
    """Where a host keeps its TLS material (nginx reads cert and key; ca is for local clients)."""

    cert: PurePosixPath  # leaf certificate followed by any intermediates
    key: PurePosixPath
    ca: PurePosixPath


def tls_paths(s: FleetSettings) -> TlsPaths:
    remote = PurePosixPath(s.tls.remote_dir)
    return TlsPaths(cert=remote / "fullchain.pem", key=remote / "privkey.pem", ca=remote / "ca.pem")


def render_unit(s: FleetSettings) -> str:
    """The base ollama.service, equivalent to the one Ollama's install.sh writes."""
    return _render(s, UNIT_TEMPLATE, ollama_bin=OLLAMA_BIN, service_path=SERVICE_PATH)


def render_dropin(s: FleetSettings) -> str:
    """ollama.service.d/override.conf: one Environment= line per validated setting."""
    return _render(s, DROPIN_TEMPLATE, environment=s.ollama.environment())


def render_gpu_dropin(s: FleetSettings, setup: GpuSetup) -> str | None:
    """ollama.service.d/gpu.conf on a host that serves from its GPU (None: a CPU host, no file)."""
    if not setup["vendors"]:
        return None
    nodes_unit = gpu.NODES_SERVICE if gpu.nodes_unit_commands(setup) else None
    return _render(s, GPU_DROPIN_TEMPLATE, setup=setup, nodes_unit=nodes_unit)


def render_gpu_nodes_unit(s: FleetSettings, setup: GpuSetup) -> str | None:
    """The root oneshot that loads nvidia_uvm and makes NVIDIA's device nodes (None: no NVIDIA card)."""
    commands = gpu.nodes_unit_commands(setup)
    return _render(s, GPU_NODES_TEMPLATE, commands=commands) if commands else None


def render_hardening(s: FleetSettings) -> str:
    """ollama.service.d/hardening.conf: the sandbox; writable only Ollama's home and models directory.

    ProtectHome hides /home, /root and /run/user even from ReadWritePaths, so it is off when a directory
    Ollama writes lies there (a models directory in someone's home).
    """
    writable = list(dict.fromkeys(str(p) for p in (s.ollama.home, s.ollama.models_dir)))
    personal = any(PurePosixPath(path).is_relative_to(base) for path in writable for base in PERSONAL_DIRS)
    return _render(s, HARDENING_TEMPLATE, writable=writable, protect_home="no" if personal else "yes")


RouteClass = Literal["inference", "admin", "refused"]

ROUTES: tuple[tuple[str, str, RouteClass], ...] = (
    # (method, path as Ollama's router writes it, class): every route of server/routes.go GenerateRoutes in
    # the pinned Ollama (tests/unit/test_route_table.py compares the two). inference: any key; admin: admin
    # keys; refused: no key (it reaches ollama.com, or its body is not one the proxy reads).
    ("HEAD", "/", "inference"),
    ("GET", "/", "inference"),
    ("HEAD", "/api/version", "inference"),
    ("GET", "/api/version", "inference"),
    ("GET", "/api/status", "inference"),
    ("POST", "/api/pull", "admin"),
    ("POST", "/api/push", "admin"),
    ("HEAD", "/api/tags", "inference"),
    ("GET", "/api/tags", "inference"),
    ("POST", "/api/show", "inference"),
    ("DELETE", "/api/delete", "admin"),
    ("POST", "/api/me", "refused"),  # ollama.com account
    ("POST", "/api/signout", "refused"),
    ("DELETE", "/api/user/keys/:encodedKey", "refused"),
    ("POST", "/api/create", "admin"),
    ("POST", "/api/blobs/:digest", "admin"),
    ("HEAD", "/api/blobs/:digest", "admin"),
    ("POST", "/api/copy", "admin"),
    ("POST", "/api/experimental/web_search", "refused"),  # forwarded to ollama.com
    ("POST", "/api/experimental/web_fetch", "refused"),
    ("GET", "/api/experimental/model-recommendations", "refused"),
    ("GET", "/api/ps", "inference"),
    ("POST", "/api/generate", "inference"),
    ("POST", "/api/chat", "inference"),
    ("POST", "/api/embed", "inference"),
    ("POST", "/api/embeddings", "inference"),
    ("POST", "/v1/chat/completions", "inference"),
    ("POST", "/v1/completions", "inference"),
    ("POST", "/v1/embeddings", "inference"),
    ("GET", "/v1/models", "inference"),
    ("GET", "/v1/models/:model", "inference"),
    ("POST", "/v1/responses", "inference"),
    ("POST", "/v1/images/generations", "inference"),
    ("POST", "/v1/images/edits", "inference"),
    # A multipart form: the proxy does not read its model (allow-lists, cloud refusal) from it.
    ("POST", "/v1/audio/transcriptions", "refused"),
    ("POST", "/v1/messages", "inference"),
)


def path_scopes(routes: tuple[tuple[str, str, RouteClass], ...] = ROUTES) -> list[tuple[str, RouteClass]]:
    """The nginx map entries ($uri pattern, class) of the route table: an exact path as it is, a path with
    a `:param` as a regex where the parameter is one segment. A path's methods must share one class (nginx
    maps the path)."""
    scopes: dict[str, RouteClass] = {}
    for method, path, scope in routes:
        if scopes.setdefault(path, scope) != scope:
            raise ValueError(f"{method} {path} is {scope} but another method of that path is {scopes[path]}")
    return [(_path_pattern(path), scope) for path, scope in scopes.items()]


def _path_pattern(path: str) -> str:
    if ":" not in path:
        return path
    segments = ("[^/]+" if part.startswith(":") else regex_literal(part) for part in path.split("/"))
    return "~^" + "/".join(segments) + "$"


def metric_routes(routes: tuple[tuple[str, str, RouteClass], ...] = ROUTES) -> list[tuple[str, str]]:
    """($uri pattern, route label) for the metrics: each route of Ollama's router as its router writes it
    (a path parameter stays `:name`, so the labels stay few); any other path is `other`."""
    paths = dict.fromkeys(path for _, path, _ in routes)
    return [(_path_pattern(path), path) for path in paths]


def inference_paths() -> list[str]:
    """What an `inference` key may use (nginx map patterns against the normalized $uri)."""
    return [pattern for pattern, scope in path_scopes() if scope == "inference"]


JSON_ERRORS = {
    413: (
        "request_too_large",
        "Request body too large (nginx_api_max_body_size; uploads: nginx_client_max_body_size).",
    ),
    429: ("rate_limit_exceeded", "Too many requests for this key (its rate or concurrency); retry later."),
    502: ("upstream_unavailable", "Ollama is not answering on this host; retry later or on another host."),
    504: ("upstream_timeout", "Ollama did not answer in time (nginx_read_timeout)."),
}
"""Errors nginx itself makes, answered as OpenAI-shaped JSON instead of nginx's HTML pages."""

GATEWAY_ERRORS = {
    **JSON_ERRORS,
    502: (
        "upstream_unavailable",
        "No host of the fleet serving this request answered (each down, refusing or failing); retry later.",
    ),
    504: ("upstream_timeout", "The host did not answer in time (gateway_read_timeout)."),
}
"""The gateway's own errors: a 502 there means every host that could serve the request was tried (with none
left to try at all, busy, failed or drained, the gateway answers 503 no_host_available instead)."""


def render_nginx_site(
    s: FleetSettings,
    *,
    api_keys_path: PurePosixPath = API_KEYS_PATH,
    allow_list_js_path: PurePosixPath = MODEL_ALLOW_LIST_JS_PATH,
    loaded_cache_dir: PurePosixPath = LOADED_CACHE_DIR,
    gateway: GatewayPlan | None = None,
    loaded_check: bool = False,
    gateway_members_dir: PurePosixPath = GATEWAY_MEMBERS_DIR,
    gateway_addresses: Sequence[str] = (),
    metrics_log: PurePosixPath = METRICS_LOG,
) -> str:
    """The nginx site: HTTP->HTTPS redirect, TLS, key check, CORS preflight, streaming proxy to Ollama;
    on a gateway host (`gateway`: the fleet's plan) also the gateway server, balancing over the hosts.
    `loaded_check` (gateway.answers_loaded_check): a gateway's first try is taken only with the model loaded;
    `gateway_addresses`: the gateways' addresses, the only ones whose first-try header the host honours.

    `api_keys_path` is where the keys include lives; a deploy validating a staged copy points it there;
    `gateway_members_dir` holds the gateway members' server lines (gateway.member_confs).
    """
    if s.is_gateway and gateway is None:
        raise ValueError(f"{s.host} is a gateway (gateway_enabled): render its site with the fleet's plan")
    model_allow_list_js = allow_list_js_path if needs_njs(s, loaded_check) else None
    policies = [(name, s.auth.policy(name)) for name in s.auth.key_names]
    return _render(
        s,
        s.nginx.site_template,
        server_names=" ".join(s.server_names),
        tls=tls_paths(s),
        api_keys_path=api_keys_path,
        https_redirect=https_redirect(s.nginx.https_port),
        upstream=f"http://{upstream_address(s.ollama.listen_host)}:{s.ollama.listen_port}",
        upstream_host=f"localhost:{s.ollama.listen_port}",
        origin_patterns=[origin_regex(origin) for origin in s.ollama.origins],
        path_scopes=path_scopes(),
        refuse_cloud=not s.ollama.cloud,
        gateway_addresses=list(dict.fromkeys(ipaddress.ip_address(a).compressed for a in gateway_addresses)),
        policies=policies,
        limited=[(name, policy) for name, policy in policies if policy.rate or policy.concurrency],
        json_errors=JSON_ERRORS,
        model_allow_list_js=model_allow_list_js,
        lan_models=lan_models(s),
        release_store=RELEASE_STORE if s.serves_releases else None,
        lan_ipv6=any(subnet.version == 6 for subnet in s.models.lan_subnets),
        gateway=gateway,
        gateway_member_conf=lambda m: member_conf_path(m.name, gateway_members_dir),
        loaded_check=loaded_check,
        loaded_cache_dir=loaded_cache_dir,
        loaded_cache_valid_s=LOADED_CACHE_VALID_S,
        runner_mates=s.models.runner_mates() if loaded_check else {},
        if_loaded_header=IF_LOADED_HEADER,
        if_loaded_variable="$http_" + IF_LOADED_HEADER.lower().replace("-", "_"),
        gateway_server_names=" ".join(dict.fromkeys([*s.server_names, *s.gateway.server_names])),
        gateway_errors=GATEWAY_ERRORS,
        tags_json=tags_json(gateway) if gateway else "",
        openai_models_json=openai_models_json(gateway) if gateway else "",
        metric_routes=metric_routes(),
        metrics_log=metrics_log,
        metrics_exporter=METRICS_EXPORTER,
        host_exporter=HOST_EXPORTER,
    )


def lan_models(s: FleetSettings) -> list[tuple[ModelReference, ModelReference]]:
    """(name on the LAN registry, name in the store) of every model a seed serves (none on other hosts)."""
    if not s.is_model_seed:
        return []
    return [(model_reference(n).on_lan(local), model_reference(n)) for n, local in s.models.fanned_out()]


def needs_njs(s: FleetSettings, loaded_check: bool = False) -> bool:
    """A key with a model allow-list, the gateway, or the cloud refusal (ollama_cloud off, the default):
    nginx needs njs to read the model from the body; a gateway's first try (`loaded_check`): to ask
    Ollama's /api/ps; the metrics (metrics_enabled): to read the tokens from the answers; a model seed: to
    serve only the blobs its fanned-out models' manifests name."""
    allow_lists = s.auth.enabled and any(s.auth.policy(name).models for name in s.auth.key_names)
    return (
        s.is_gateway
        or loaded_check
        or allow_lists
        or not s.ollama.cloud
        or s.serves_metrics
        or bool(lan_models(s))
    )


def model_allow_list_js(s: FleetSettings) -> str:
    """The njs module that checks a key's model allow-list (from nginx_template_dirs or built in)."""
    env = _environment(tuple(s.nginx.template_dirs))
    assert env.loader is not None
    return env.loader.get_source(env, MODEL_ALLOW_LIST_JS)[0]  # as written: JavaScript, not a template


def render_api_keys(s: FleetSettings) -> str:
    """The body of the `$ollama_fleet_key_name` map: one entry per key. SECRET: never print or diff it."""
    entries = [(key.name, bearer_regex(key.name, key.key.get_secret_value())) for key in s.auth.keys]
    return _render(s, API_KEYS_TEMPLATE, entries=entries)


def render_modelfile(s: FleetSettings, custom: CustomModel, base_ref: str | None = None) -> str:
    """A Modelfile for `custom`. `base_ref` is what FROM names on the host: pass the remote path of the GGUF
    when `custom.base` is one of models_gguf; by default it is `custom.base`, a model Ollama already has.
    (CustomModel validation keeps name, SYSTEM and PARAMETER values to one intended instruction each.)"""
    base = custom.base if base_ref is None else base_ref
    if not base or any(ord(c) < 32 for c in base):
        raise ValueError(f"models_custom {custom.name!r}: FROM {base!r} must be one non-empty line")
    parameters = sorted((name, modelfile_value(str(value))) for name, value in custom.parameters.items())
    return _render(s, custom.template, model=custom, base=base, parameters=parameters)


# --- helpers: each turns one value into safe text for one syntax ---


def https_redirect(https_port: int) -> str:
    """Redirect target keeping host and URI; $host has no port, so a non-default port is written out."""
    port = "" if https_port == 443 else f":{https_port}"
    return f"https://$host{port}$request_uri"


def upstream_address(listen_host: str) -> str:
    """The address nginx dials for Ollama: a literal IP, so `localhost` can't resolve to ::1 unexpectedly."""
    if listen_host == "localhost":
        return "127.0.0.1"
    return f"[{listen_host}]" if ipaddress.ip_address(listen_host).version == 6 else listen_host


def origin_regex(origin: str) -> str:
    """An OLLAMA_ORIGINS entry as a case-sensitive nginx map regex that matches no more than Ollama does.

    Ollama (gin-contrib/cors) lowercases exact origins and compares them with the Origin header as sent;
    an entry with one `*` matches by prefix and suffix. `*` alone allows every origin.
    """
    if "*" not in origin:
        return f"~^{regex_literal(origin.lower())}$"
    prefix, _, suffix = origin.partition("*")
    return f"~^{regex_literal(prefix)}.*{regex_literal(suffix)}$"


def bearer_regex(name: str, key: str) -> str:
    """The map source matching `Authorization: Bearer <key>`.

    A regex (not a plain map string) because nginx compares plain map strings ignoring case, which would
    accept a key with its letters' case changed. The scheme itself is case-insensitive (RFC 9110).
    """
    if not re.fullmatch(r"[A-Za-z0-9_\-.~+/=]{16,}", key):
        raise ValueError(
            f"API key {name!r} is too short or holds characters unsafe in a header (value not shown)"
        )
    return f"~^(?i:bearer) +{regex_literal(key)}$"


def regex_literal(text: str) -> str:
    """`text` as a PCRE literal, readable in a config: metacharacters as one-character classes (`[.]`)."""
    return "".join(f"[{c}]" if c in ".$|()?*+{[" else f"\\{c}" if c in "\\^" else c for c in text)


def nginx_quote(text: object) -> str:
    """A double-quoted nginx string; nginx unescapes only \\\\, \\", \\' and \\t \\r \\n inside quotes."""
    value = str(text)
    if any(ord(c) < 32 or ord(c) == 127 for c in value):
        raise ValueError(f"{value!r} holds a control character and cannot go into an nginx config")
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def systemd_quote(text: object) -> str:
    """A double-quoted systemd word: backslash and quote escaped, `%` doubled (specifier expansion)."""
    value = str(text)
    if any(ord(c) < 32 or ord(c) == 127 for c in value):
        raise ValueError(f"{value!r} holds a control character and cannot go into a systemd unit")
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"').replace("%", "%%") + '"'


def modelfile_value(value: str) -> str:
    """A PARAMETER value as Ollama's parser reads it: bare unless edge spaces would be lost, then quoted."""
    if value != value.strip() or value.startswith('"') or not value:
        return f'"""{value}"""' if '"' in value else f'"{value}"'
    return value


# --- template environment ---


def builtin_templates_dir() -> Path:
    """templates/ inside the installed wheel, or at the top of the source tree (editable installs)."""
    packaged = Path(__file__).parent / "templates"
    return packaged if packaged.is_dir() else Path(__file__).resolve().parents[2] / "templates"


@lru_cache(maxsize=8)
def _environment(template_dirs: tuple[Path, ...]) -> jinja2.Environment:
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader([*template_dirs, builtin_templates_dir()]),
        undefined=jinja2.StrictUndefined,
        autoescape=False,  # config files, not HTML: escaping is the job of the filters below
        keep_trailing_newline=True,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters["nginx_quote"] = nginx_quote
    env.filters["systemd_quote"] = systemd_quote
    env.filters["regex_literal"] = regex_literal
    return env


def _render(s: FleetSettings, template: str, **context: object) -> str:
    return _environment(tuple(s.nginx.template_dirs)).get_template(template).render(s=s, **context)
