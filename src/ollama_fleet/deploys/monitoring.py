"""The monitoring role (monitoring_enabled: the inventory group `monitoring`): Prometheus, Alertmanager and
the blackbox exporter from Debian's packages, configured from the inventory (ollama_fleet.monitoring)."""

from __future__ import annotations

from pyinfra import logger
from pyinfra.api.deploy import deploy
from pyinfra.context import host
from pyinfra.operations import systemd
from pyinfra.operations.util import any_changed

from ollama_fleet import monitoring as m
from ollama_fleet.deploys.fleet import fleet_settings, inventory_address
from ollama_fleet.operations import packages, textfile
from ollama_fleet.operations.secrets import Secret, secret_file
from ollama_fleet.settings import FleetSettings


def scrape_targets() -> list[m.ScrapeTarget]:
    """Every inventory host with metrics, at its service address."""
    found = []
    for name, other in fleet_settings(host.state).items():
        target = m.scrape_target(other, inventory_address(host, name))
        if target:
            found.append(target)
    return found


def install_dashboard() -> None:
    """The fleet dashboard: console templates Prometheus reads at each request (no restart); on its
    loopback like the rest, at http://127.0.0.1:9090/consoles/ollama-fleet.html."""
    for dest, text in m.dashboard_files().items():
        textfile.text_file(name=f"Write {dest} (the fleet dashboard)", text=text, dest=str(dest))


@deploy("Monitoring (Prometheus, Alertmanager, blackbox exporter)")
def monitoring_role(s: FleetSettings, ca_pem: str) -> None:
    targets = scrape_targets()
    if not s.monitoring.alert_webhook_url:
        logger.warning(
            f"{host.print_prefix}monitoring: alerts are sent nowhere (monitoring_alert_webhook_url is not "
            "set); they are kept in Alertmanager on this host (127.0.0.1:9093)"
        )
    packages.packages_installed(
        name="Install Prometheus, Alertmanager, blackbox exporter", packages=list(m.PACKAGES)
    )
    defaults = [
        textfile.text_file(name=f"Write {path}", text=text, dest=path)
        for path, text in m.service_defaults().items()
    ]
    shared = [
        textfile.text_file(name=f"Install {m.CA_PATH}", text=ca_pem, dest=str(m.CA_PATH)),
        secret_file(
            name=f"Install {m.METRICS_KEY_PATH} (the metrics key)",
            secret=Secret(s.metrics_key_value),
            dest=str(m.METRICS_KEY_PATH),
            group="prometheus",
            mode=0o640,
        ),
    ]
    prometheus = [
        textfile.text_file(name=f"Write {m.RULES_PATH}", text=m.rules_text(), dest=str(m.RULES_PATH)),
        textfile.text_file(
            name=f"Write {m.PROMETHEUS_CONFIG} ({len(targets)} host(s))",
            text=m.prometheus_config(s, targets),
            dest=str(m.PROMETHEUS_CONFIG),
        ),
    ]
    install_dashboard()
    blackbox = textfile.text_file(
        name=f"Write {m.BLACKBOX_CONFIG}", text=m.blackbox_config(s), dest=str(m.BLACKBOX_CONFIG)
    )
    alertmanager = textfile.text_file(
        name=f"Write {m.ALERTMANAGER_CONFIG}", text=m.alertmanager_config(s), dest=str(m.ALERTMANAGER_CONFIG)
    )
    changed = {
        "prometheus.service": [defaults[0], *shared, *prometheus],
        "prometheus-alertmanager.service": [defaults[1], alertmanager],
        "prometheus-blackbox-exporter.service": [defaults[2], shared[0], blackbox],
    }
    for service, files in changed.items():
        systemd.service(name=f"Enable and start {service}", service=service, running=True, enabled=True)
        systemd.service(
            name=f"Restart {service} for its new configuration",
            service=service,
            restarted=True,
            _if=any_changed(*files),
        )
