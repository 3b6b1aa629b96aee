"""The monitoring role's files (pure): Prometheus's scrape configuration from the inventory, the blackbox
exporter's probe, Alertmanager's receiver, and the services' arguments (loopback only).

Written as JSON, which is YAML: every value is quoted by json.dumps, so no host name or URL can break the
file's structure."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import PurePosixPath

from ollama_fleet.render import builtin_templates_dir
from ollama_fleet.settings import FleetSettings, url_host

PROMETHEUS_DIR = PurePosixPath("/etc/prometheus")
PROMETHEUS_CONFIG = PROMETHEUS_DIR / "prometheus.yml"
RULES_PATH = PROMETHEUS_DIR / "ollama-fleet-rules.yml"
BLACKBOX_CONFIG = PROMETHEUS_DIR / "blackbox.yml"
ALERTMANAGER_CONFIG = PROMETHEUS_DIR / "alertmanager.yml"
CA_PATH = PROMETHEUS_DIR / "ollama-fleet-ca.pem"
METRICS_KEY_PATH = PROMETHEUS_DIR / "ollama-fleet-metrics.key"
PROMETHEUS_ADDRESS = "127.0.0.1:9090"
ALERTMANAGER_ADDRESS = "127.0.0.1:9093"
BLACKBOX_ADDRESS = "127.0.0.1:9115"
PACKAGES = ("prometheus", "prometheus-alertmanager", "prometheus-blackbox-exporter")
HEALTH_MODULE = "ollama_fleet_health"
METRICS_JOB = "ollama_fleet"
HEALTH_JOB = "ollama_fleet_health"
# Debian's prometheus (2.42 on 12, 2.53 on 13) reads console templates and libraries from these directories
# by default (--web.console.templates / --web.console.libraries) and ships them empty; it reads the files at
# each request, so a new dashboard needs no restart.
CONSOLES_DIR = PROMETHEUS_DIR / "consoles"
CONSOLE_LIBRARIES_DIR = PROMETHEUS_DIR / "console_libraries"
DASHBOARD_PAGE = "ollama-fleet.html"
DASHBOARD_PATH = f"/consoles/{DASHBOARD_PAGE}"
HOST_JOB = "ollama_fleet_host"
HOST_METRICS_PATH = "/metrics/host"
HEADER = "# Managed by ollama-fleet (monitoring_*); a deploy overwrites local edits. JSON, which is YAML.\n"


@dataclass(frozen=True)
class ScrapeTarget:
    """One fleet host as Prometheus reaches it: its /metrics and /health on this port (its API's, or a
    gateway_only host's gateway port)."""

    name: str
    address: str
    port: int

    @property
    def host_port(self) -> str:
        return f"{url_host(self.address)}:{self.port}"


def scrape_target(s: FleetSettings, address: str) -> ScrapeTarget | None:
    """Where Prometheus reads host `s` (at `address`, its service address), or None: no metrics there."""
    if not s.serves_metrics:
        return None
    return ScrapeTarget(s.host, address, s.nginx.https_port if s.serves_api else s.gateway.port)


def rules_text() -> str:
    return (builtin_templates_dir() / "monitoring" / "ollama-fleet-rules.yml").read_text()


def dashboard_files() -> dict[PurePosixPath, str]:
    """The fleet dashboard (Prometheus console templates): destination on the monitoring host -> text."""
    shipped = builtin_templates_dir() / "monitoring" / "consoles"
    return {
        CONSOLES_DIR / DASHBOARD_PAGE: (shipped / DASHBOARD_PAGE).read_text(),
        CONSOLE_LIBRARIES_DIR / "ollama-fleet.lib": (shipped / "ollama-fleet.lib").read_text(),
    }


def prometheus_config(s: FleetSettings, targets: list[ScrapeTarget]) -> str:
    interval = s.monitoring.scrape_interval
    tls = {"ca_file": str(CA_PATH)}
    config = {
        "global": {"scrape_interval": interval, "evaluation_interval": interval, "scrape_timeout": "10s"},
        "rule_files": [str(RULES_PATH)],
        "alerting": {"alertmanagers": [{"static_configs": [{"targets": [ALERTMANAGER_ADDRESS]}]}]},
        "scrape_configs": [
            {
                # Each host's nginx /metrics (mtail's series), over TLS with the metrics key.
                "job_name": METRICS_JOB,
                "scheme": "https",
                "tls_config": tls,
                "authorization": {"type": "Bearer", "credentials_file": str(METRICS_KEY_PATH)},
                "static_configs": [{"targets": [t.host_port], "labels": {"host": t.name}} for t in targets],
            },
            {
                # Each host's GET /health through the blackbox exporter: Ollama answering, and the
                # certificate's expiry (probe_ssl_earliest_cert_expiry).
                "job_name": HEALTH_JOB,
                "metrics_path": "/probe",
                "params": {"module": [HEALTH_MODULE]},
                "static_configs": [
                    {"targets": [f"https://{t.host_port}/health"], "labels": {"host": t.name}}
                    for t in targets
                ],
                "relabel_configs": [
                    {"source_labels": ["__address__"], "target_label": "__param_target"},
                    {"source_labels": ["__param_target"], "target_label": "instance"},
                    {"target_label": "__address__", "replacement": BLACKBOX_ADDRESS},
                ],
            },
            {
                # Each host's nginx /metrics/host (node-exporter's: Ollama's state, the health check's last
                # result, the models' disk, the last deploy), the same way.
                "job_name": HOST_JOB,
                "metrics_path": HOST_METRICS_PATH,
                "scheme": "https",
                "tls_config": tls,
                "authorization": {"type": "Bearer", "credentials_file": str(METRICS_KEY_PATH)},
                "static_configs": [{"targets": [t.host_port], "labels": {"host": t.name}} for t in targets],
            },
        ],
    }
    return HEADER + json.dumps(config, indent=2) + "\n"


def blackbox_config(s: FleetSettings) -> str:
    module = {
        "prober": "http",
        "timeout": "8s",
        "http": {
            "method": "GET",
            "valid_status_codes": [200],
            "fail_if_not_ssl": True,
            "fail_if_body_not_matches_regexp": ["Ollama is running"],
            "tls_config": {"ca_file": str(CA_PATH)},
        },
    }
    return HEADER + json.dumps({"modules": {HEALTH_MODULE: module}}, indent=2) + "\n"


def alertmanager_config(s: FleetSettings) -> str:
    url = s.monitoring.alert_webhook_url
    receiver: dict[str, object] = {"name": "ollama-fleet"}
    if url:
        receiver["webhook_configs"] = [{"url": url, "send_resolved": True}]
    route = {"receiver": "ollama-fleet", "group_by": ["alertname", "host"], "group_wait": "10s"}
    note = (
        f"# Alerts go to the webhook {url} (monitoring_alert_webhook_url).\n"
        if url
        else "# Alerts are sent NOWHERE (monitoring_alert_webhook_url is not set): they are kept in\n"
        "# Alertmanager, whose API and UI answer on the monitoring host's loopback (127.0.0.1:9093).\n"
    )
    return HEADER + note + json.dumps({"route": route, "receivers": [receiver]}, indent=2) + "\n"


def service_defaults() -> dict[str, str]:
    """/etc/default files of Debian's units: each service on loopback only (Alertmanager's cluster port
    off: one Alertmanager per monitoring host)."""
    args = {
        "prometheus": f"--web.listen-address={PROMETHEUS_ADDRESS}",
        "prometheus-alertmanager": f"--web.listen-address={ALERTMANAGER_ADDRESS} --cluster.listen-address=",
        "prometheus-blackbox-exporter": (
            f"--config.file {BLACKBOX_CONFIG} --web.listen-address={BLACKBOX_ADDRESS}"
        ),
    }
    return {f"/etc/default/{unit}": f'{HEADER}ARGS="{value}"\n' for unit, value in args.items()}
