"""The whole site for one host, in dependency order; `deploys/ollama.py` calls `deploy_site()`."""

from __future__ import annotations

import importlib
import importlib.util

from pyinfra.api.operation import OperationMeta
from pyinfra.context import host

from ollama_fleet.deploys.firewall import firewall
from ollama_fleet.deploys.fleet import settings_for
from ollama_fleet.deploys.install import install_ollama
from ollama_fleet.deploys.models import ollama_models
from ollama_fleet.deploys.proxy import nginx_proxy
from ollama_fleet.deploys.service import ollama_service
from ollama_fleet.deploys.tls import tls_material
from ollama_fleet.settings import FleetSettings

HEALTH_MODULE = "ollama_fleet.deploys.health"


def deploy_site() -> None:
    """Validate every host's settings (raises before any operation exists), then deploy this host."""
    s = settings_for(host.state, host.name)
    if s.firewall.enabled:
        # First: the SSH rule is in place and ufw is on before any port starts listening.
        firewall(s=s)
    restart_ollama_on: list[OperationMeta] = []
    install_ollama(s=s, restart_triggers=restart_ollama_on)
    ollama_service(s=s, restart_triggers=restart_ollama_on)
    if s.nginx.enabled:
        reload_nginx_on: list[OperationMeta] = []
        tls_material(s=s, reload_triggers=reload_nginx_on)
        nginx_proxy(s=s, reload_triggers=reload_nginx_on)
    ollama_models(s=s)
    _health_and_verify(s)


def _health_and_verify(s: FleetSettings) -> None:
    """The health timer and the final client-side verification, owned by the verify package."""
    if importlib.util.find_spec(HEALTH_MODULE) is None:
        return
    health = importlib.import_module(HEALTH_MODULE)
    if s.health.enabled:
        health.health_monitoring(s=s)
    health.verify_after_deploy(s)
