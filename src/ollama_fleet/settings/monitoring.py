"""monitoring_*: the hosts that run Prometheus, Alertmanager and the blackbox exporter for the fleet."""

from __future__ import annotations

import re

from pydantic import field_validator

from ollama_fleet.settings.base import Section
from ollama_fleet.settings.rules import KEY_NAME

DURATION = re.compile(r"[1-9]\d*(ms|s|m|h)")


class MonitoringSettings(Section):
    """Prometheus here scrapes every fleet host's /metrics and probes its /health (docs/metrics.md)."""

    # None: hosts of the inventory group `monitoring` run it (membership decided before validation, as for
    # the gateway); true or false overrides the group.
    enabled: bool | None = None
    # The name of the key Prometheus sends to each host's /metrics: a key with the `metrics` scope that every
    # host lists in auth_key_names (its value comes from the secrets file like any key's).
    metrics_key: str | None = None
    # How often Prometheus scrapes and probes each host and evaluates the alert rules: with 15s and the
    # rules' `for`, a stopped Ollama fires its alert within about a minute; longer costs less, alerts later.
    scrape_interval: str = "15s"
    # Where Alertmanager sends alerts: a webhook URL (http or https) taking Alertmanager's JSON. None: alerts
    # are kept in Alertmanager (its API and UI on the monitoring host) and sent nowhere.
    alert_webhook_url: str | None = None

    @field_validator("metrics_key")
    @classmethod
    def _key(cls, value: str | None) -> str | None:
        if value is not None and not KEY_NAME.fullmatch(value):
            raise ValueError(f"key name {value!r} may only hold letters, digits, '_' and '-'")
        return value

    @field_validator("scrape_interval")
    @classmethod
    def _interval(cls, value: str) -> str:
        if not DURATION.fullmatch(value):
            raise ValueError(f"{value!r} is not a Prometheus duration; write it like 15s or 1m")
        return value

    @field_validator("alert_webhook_url")
    @classmethod
    def _webhook(cls, value: str | None) -> str | None:
        if value is not None and not re.fullmatch(r"https?://[^\s'\"]+", value):
            raise ValueError(f"{value!r} is not an http(s) URL, like https://alerts.example.lan/hook")
        return value
