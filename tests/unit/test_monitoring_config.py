"""The monitoring role's files, from the inventory: Prometheus's configuration as promtool reads it, the
receiver setting, and the settings a monitoring host must have (refused before any host changes)."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
from test_render import ALICE_KEY, fleet_settings

from ollama_fleet import monitoring
from ollama_fleet.gateway import with_gateway_group
from ollama_fleet.settings import FleetSettings, SettingsError, settings_for_host

pytestmark = pytest.mark.unit

MONITOR_KEY = "mon-Zq8r2Lx0Vb7Ny4Tk"
ENVIRON = {"OLLAMA_FLEET_API_KEY_ALICE": ALICE_KEY, "OLLAMA_FLEET_API_KEY_MONITOR": MONITOR_KEY}
MONITORED = {
    "firewall_client_subnets": ["10.0.0.0/24"],
    "firewall_admin_subnets": ["10.0.9.0/24"],
    "auth_key_names": ["alice", "monitor"],
    "auth_key_policies": {"monitor": {"scope": "metrics"}},
    "monitoring_metrics_key": "monitor",
}


def monitoring_host(tmp_path: Path, groups: tuple[str, ...] = ("monitoring",), **data: Any) -> FleetSettings:
    merged = {**MONITORED, "auth_secrets_file": str(tmp_path / "none.json"), **data}
    return settings_for_host("mon1", with_gateway_group(merged, groups), ENVIRON)


def test_promtool_accepts_the_prometheus_configuration(tmp_path: Path) -> None:
    s = monitoring_host(tmp_path)
    targets = [
        monitoring.ScrapeTarget("gpu-1", "10.0.0.11", 443),
        monitoring.ScrapeTarget("gpu-2", "fd00::12", 443),
        monitoring.ScrapeTarget("gw", "10.0.0.2", 8443),
    ]
    text = monitoring.prometheus_config(s, targets)
    config = json.loads(text.split("\n", 1)[1])
    metrics_job, health_job, host_job = config["scrape_configs"]
    assert [c["labels"]["host"] for c in metrics_job["static_configs"]] == ["gpu-1", "gpu-2", "gw"]
    assert metrics_job["static_configs"][1]["targets"] == ["[fd00::12]:443"]
    assert health_job["static_configs"][2]["targets"] == ["https://10.0.0.2:8443/health"]
    # The host's state: node-exporter's page through each host's nginx, with the same key and CA.
    assert host_job["metrics_path"] == "/metrics/host" and host_job["scheme"] == "https"
    assert host_job["authorization"] == metrics_job["authorization"]
    assert host_job["static_configs"] == metrics_job["static_configs"]
    assert MONITOR_KEY not in text  # the key lives in its own file, root:prometheus 0640
    # promtool reads the files it names: put them under tmp_path.
    here = str(tmp_path)
    (tmp_path / "prometheus.yml").write_text(text.replace(str(monitoring.PROMETHEUS_DIR), here))
    (tmp_path / monitoring.RULES_PATH.name).write_text(monitoring.rules_text())
    (tmp_path / monitoring.CA_PATH.name).write_text("")
    (tmp_path / monitoring.METRICS_KEY_PATH.name).write_text(MONITOR_KEY)
    promtool = shutil.which("promtool")
    if not promtool:
        pytest.fail("promtool is not installed: on Debian 12 apt-get install prometheus, on 13 promtool")
    checked = subprocess.run(
        [promtool, "check", "config", str(tmp_path / "prometheus.yml")], capture_output=True, text=True
    )
    assert checked.returncode == 0, checked.stdout + checked.stderr


def test_alerts_go_to_the_webhook_set_else_nowhere_and_the_file_says_so(tmp_path: Path) -> None:
    quiet = monitoring.alertmanager_config(monitoring_host(tmp_path))
    assert "sent NOWHERE" in quiet and "webhook_configs" not in quiet
    url = "https://alerts.example.lan/hook"
    loud = monitoring.alertmanager_config(monitoring_host(tmp_path, monitoring_alert_webhook_url=url))
    receiver = json.loads(loud.split("\n", 2)[2])["receivers"][0]
    assert receiver["webhook_configs"] == [{"url": url, "send_resolved": True}]


def test_every_service_listens_on_loopback_only() -> None:
    for path, text in monitoring.service_defaults().items():
        assert "127.0.0.1:" in text, path
    assert (
        "--cluster.listen-address=" in monitoring.service_defaults()["/etc/default/prometheus-alertmanager"]
    )


@pytest.mark.parametrize(
    ("data", "fragment"),
    [
        ({"monitoring_metrics_key": None}, "set monitoring_metrics_key to its name"),
        ({"auth_key_policies": {}}, "'monitor' must be in auth_key_names with the metrics scope"),
        ({"monitoring_scrape_interval": "15"}, "write it like 15s or 1m"),
        ({"monitoring_alert_webhook_url": "alerts.lan"}, "is not an http(s) URL"),
    ],
    ids=["no-key", "key-without-metrics-scope", "bad-interval", "bad-webhook"],
)
def test_a_monitoring_host_without_what_it_needs_is_refused(
    tmp_path: Path, data: dict[str, Any], fragment: str
) -> None:
    with pytest.raises(SettingsError) as refused:
        monitoring_host(tmp_path, **data)
    assert "mon1" in str(refused.value) and fragment in str(refused.value)


def test_only_the_monitoring_group_decides_unless_set(tmp_path: Path) -> None:
    assert monitoring_host(tmp_path).monitoring.enabled is True
    assert monitoring_host(tmp_path, groups=()).monitoring.enabled is False
    assert monitoring_host(tmp_path, groups=(), monitoring_enabled=True).monitoring.enabled is True
    # An ordinary host needs no metrics key.
    assert fleet_settings(tmp_path).monitoring.enabled is None


def test_a_host_without_metrics_is_not_scraped(tmp_path: Path) -> None:
    assert monitoring.scrape_target(fleet_settings(tmp_path, metrics_enabled=False), "10.0.0.11") is None
    target = monitoring.scrape_target(fleet_settings(tmp_path), "10.0.0.11")
    assert target == monitoring.ScrapeTarget("ollama1", "10.0.0.11", 443)
