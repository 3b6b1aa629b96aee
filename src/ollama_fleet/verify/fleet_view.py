"""`ollama-fleet status`'s view of each host, as the dashboard shows it: up, Ollama's version, the models
loaded and where (GPU/CPU), requests/s, time to first token p95 and 5xx/s.

From Prometheus when the inventory has a monitoring host (its API on that host's loopback, read over SSH:
one command for the whole fleet; rates over RATE_WINDOW). Otherwise straight from each host over SSH:
Ollama's /api/version and /api/ps and mtail's counters on loopback, totals since mtail started.
"""

from __future__ import annotations

import json
import re
import shlex
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from typing import Any

from ollama_fleet.health import loopback_address
from ollama_fleet.monitoring import HOST_JOB, METRICS_JOB, PROMETHEUS_ADDRESS
from ollama_fleet.render import METRICS_EXPORTER
from ollama_fleet.verify.status import run_ssh
from ollama_fleet.verify.targets import Target

RATE_WINDOW = "5m"
_API = 'server="api"'
PROMETHEUS_QUERIES = {
    "up": f'max by (host) (up{{job="{METRICS_JOB}"}})',
    "ollama_up": f'max by (host) (ollama_fleet_ollama_up{{job="{HOST_JOB}"}})',
    "version": f'ollama_fleet_ollama_version_info{{job="{HOST_JOB}"}}',
    "size": f'ollama_fleet_model_loaded_size_bytes{{job="{HOST_JOB}"}}',
    "vram": f'ollama_fleet_model_loaded_vram_bytes{{job="{HOST_JOB}"}}',
    "rps": f"sum by (host) (rate(ollama_fleet_requests_total{{{_API}}}[{RATE_WINDOW}]))",
    "errors": f'sum by (host) (rate(ollama_fleet_requests_total{{{_API}, status=~"5.."}}[{RATE_WINDOW}]))',
    "ttft_p95": "histogram_quantile(0.95, sum by (host, le) "
    f"(rate(ollama_fleet_ttft_seconds_bucket{{{_API}}}[{RATE_WINDOW}])))",
}


@dataclass(frozen=True)
class LoadedModel:
    name: str
    size: int
    vram: int

    @property
    def where(self) -> str:
        """GPU, CPU, or the share on the GPU (a model split between them)."""
        if self.size and self.vram >= self.size:
            return "GPU"
        if self.vram <= 0:
            return "CPU"
        return f"{round(self.vram * 100 / self.size)}% GPU"


@dataclass(frozen=True)
class HostView:
    host: str
    up: bool | None  # None: unknown (no answer)
    version: str = ""
    models: tuple[LoadedModel, ...] = ()
    requests_per_s: float | None = None  # Prometheus: a rate; straight from the host: None (totals below)
    errors_per_s: float | None = None
    ttft_p95_s: float | None = None
    requests_total: float | None = None  # straight from the host: since mtail started
    errors_total: float | None = None
    note: str = ""


@dataclass(frozen=True)
class FleetView:
    source: str  # "prometheus on <host>" | "hosts"
    hosts: tuple[HostView, ...]


def sectioned(parts: Mapping[str, str]) -> str:
    """One remote command printing each part's output after a `## name` line."""
    return "; ".join(f"echo '## {name}'; {command}; echo" for name, command in parts.items())


def sections(output: str) -> dict[str, str]:
    found: dict[str, list[str]] = {}
    current: list[str] | None = None
    for line in output.splitlines():
        if line.startswith("## "):
            current = found.setdefault(line[3:].strip(), [])
        elif current is not None:
            current.append(line)
    return {name: "\n".join(lines).strip() for name, lines in found.items()}


# --- from Prometheus ---


def prometheus_command() -> str:
    url = f"http://{PROMETHEUS_ADDRESS}/api/v1/query"
    return sectioned(
        {
            name: f"curl -sf --max-time 10 --get --data-urlencode {shlex.quote('query=' + q)} {url}"
            for name, q in PROMETHEUS_QUERIES.items()
        }
    )


def _results(text: str) -> list[dict[str, Any]]:
    if not text:
        return []
    answer = json.loads(text)
    return list(answer.get("data", {}).get("result", []))


def _by_host(results: list[dict[str, Any]]) -> dict[str, float]:
    return {r["metric"].get("host", ""): float(r["value"][1]) for r in results}


def _finite(value: float | None) -> float | None:
    return None if value is None or value != value else value  # NaN: no observation in the window


def views_from_prometheus(hosts: Sequence[str], answers: Mapping[str, str]) -> list[HostView]:
    """Each host's view from the answers of PROMETHEUS_QUERIES (JSON texts, by query name)."""
    results = {name: _results(answers.get(name, "")) for name in PROMETHEUS_QUERIES}
    scalar = {name: _by_host(results[name]) for name in ("up", "ollama_up", "rps", "errors", "ttft_p95")}
    versions = {r["metric"].get("host", ""): r["metric"].get("version", "") for r in results["version"]}
    sizes = {
        (r["metric"].get("host"), r["metric"].get("model")): int(float(r["value"][1]))
        for r in results["size"]
    }
    vram = {
        (r["metric"].get("host"), r["metric"].get("model")): int(float(r["value"][1]))
        for r in results["vram"]
    }
    views = []
    for host in hosts:
        nginx_up, ollama_up = scalar["up"].get(host), scalar["ollama_up"].get(host)
        up = None if nginx_up is None else bool(nginx_up) and ollama_up != 0
        models = tuple(
            LoadedModel(model, size, vram.get((h, model), 0))
            for (h, model), size in sorted(sizes.items())
            if h == host
        )
        views.append(
            HostView(
                host,
                up,
                versions.get(host, ""),
                models,
                requests_per_s=scalar["rps"].get(host),
                errors_per_s=scalar["errors"].get(host),
                ttft_p95_s=_finite(scalar["ttft_p95"].get(host)),
                note="" if nginx_up is not None else "not scraped by Prometheus",
            )
        )
    return views


def read_from_prometheus(monitor: Target, hosts: Sequence[str]) -> FleetView:
    output, failure = run_ssh(monitor, prometheus_command())
    if failure:
        return FleetView(
            f"prometheus on {monitor.name}", tuple(HostView(h, None, note=failure) for h in hosts)
        )
    return FleetView(f"prometheus on {monitor.name}", tuple(views_from_prometheus(hosts, sections(output))))


# --- straight from the hosts ---

_SAMPLE = re.compile(r"^(?P<name>[a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(?P<labels>.*)\})?\s+(?P<value>\S+)")
_LABEL = re.compile(r'(\w+)="((?:[^"\\]|\\.)*)"')


def parse_samples(text: str) -> list[tuple[str, dict[str, str], float]]:
    """Prometheus's text format: (name, labels, value) of each sample line."""
    found = []
    for line in text.splitlines():
        match = _SAMPLE.match(line)
        if not match or line.startswith("#"):
            continue
        labels = dict(_LABEL.findall(match["labels"] or ""))
        found.append((match["name"], labels, float(match["value"])))
    return found


def upper_p95(buckets: Mapping[float, float]) -> float | None:
    """The upper bound of the bucket holding the 95th percentile (cumulative counts by `le`)."""
    total = buckets.get(float("inf"), 0.0)
    if not total:
        return None
    return next(le for le, count in sorted(buckets.items()) if count >= 0.95 * total)


def host_command(target: Target) -> str:
    o = target.settings.ollama
    api = f"http://{loopback_address(o.listen_host)}:{o.listen_port}"
    return sectioned(
        {
            "version": f"curl -sf --max-time 10 {api}/api/version",
            "ps": f"curl -sf --max-time 10 {api}/api/ps",
            "metrics": f"curl -sf --max-time 10 http://{METRICS_EXPORTER}/metrics",
        }
    )


def view_from_host(host: str, parts: Mapping[str, str]) -> HostView:
    """A host's view from its own answers (sections of host_command's output)."""
    try:
        version = json.loads(parts["version"])["version"] if parts.get("version") else ""
        ps = json.loads(parts["ps"]).get("models") or [] if parts.get("ps") else []
    except (ValueError, KeyError) as exc:
        return HostView(host, False, note=f"Ollama answered something unexpected: {exc}")
    models = tuple(
        LoadedModel(m.get("name", ""), int(m.get("size") or 0), int(m.get("size_vram") or 0)) for m in ps
    )
    requests = errors = 0.0
    buckets: dict[float, float] = {}
    for name, labels, value in parse_samples(parts.get("metrics", "")):
        if labels.get("server") != "api":
            continue
        if name == "ollama_fleet_requests_total":
            requests += value
            errors += value if labels.get("status", "").startswith("5") else 0
        elif name == "ollama_fleet_ttft_seconds_bucket":
            le = float(labels.get("le", "inf").replace("+Inf", "inf"))
            buckets[le] = buckets.get(le, 0.0) + value
    return HostView(
        host,
        bool(version),
        version,
        models,
        ttft_p95_s=upper_p95(buckets),
        requests_total=requests if parts.get("metrics") else None,
        errors_total=errors if parts.get("metrics") else None,
        note="" if version else "Ollama does not answer on the host",
    )


def read_from_host(target: Target) -> HostView:
    if not target.settings.serves_api:
        return HostView(target.name, None, note="gateway_only: no Ollama")
    output, failure = run_ssh(target, host_command(target))
    if failure:
        return HostView(target.name, None, note=failure)
    return view_from_host(target.name, sections(output))


def fleet_view(targets: Sequence[Target], everyone: Sequence[Target]) -> FleetView:
    """`targets`' view: from the inventory's first monitoring host (of `everyone`), else from each host."""
    monitor = next((t for t in everyone if t.settings.monitoring.enabled), None)
    if monitor is not None:
        return read_from_prometheus(monitor, [t.name for t in targets])
    with ThreadPoolExecutor(max_workers=max(1, min(16, len(targets)))) as pool:
        return FleetView("hosts", tuple(pool.map(read_from_host, targets)))


# --- shown ---


def _number(value: float | None, unit: str = "", digits: int = 2) -> str:
    return "-" if value is None else f"{value:.{digits}f}{unit}"


def render_view(view: FleetView) -> list[str]:
    from ollama_fleet.verify.report import format_table

    direct = view.source == "hosts"
    if direct:
        header = ["host", "up", "version", "models loaded (where)", "requests", "5xx", "ttft p95 <="]
        caption = "straight from the hosts (no monitoring host): totals since mtail started"
    else:
        header = ["host", "up", "version", "models loaded (where)", "req/s", "5xx/s", "ttft p95"]
        caption = f"from {view.source} (rates over {RATE_WINDOW})"
    rows = [header]
    for h in view.hosts:
        up = "?" if h.up is None else ("up" if h.up else "DOWN")
        models = ", ".join(f"{m.name} ({m.where})" for m in h.models) or "-"
        figures = (
            [_number(h.requests_total, digits=0), _number(h.errors_total, digits=0)]
            if direct
            else [_number(h.requests_per_s), _number(h.errors_per_s)]
        )
        rows.append([h.host, up, h.version or "-", models, *figures, _number(h.ttft_p95_s, " s")])
    notes = [f"  {h.host}: {h.note}" for h in view.hosts if h.note]
    return [caption, *format_table(rows), *notes]


def view_json(view: FleetView) -> dict[str, Any]:
    hosts = []
    for h in view.hosts:
        item = asdict(h)
        item["models"] = [{**asdict(m), "where": m.where} for m in h.models]
        hosts.append(item)
    return {"source": view.source, "hosts": hosts}
