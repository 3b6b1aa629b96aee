"""The whole site for one host, in dependency order; `deploys/ollama.py` calls `deploy_site()`."""

from __future__ import annotations

from pyinfra.api.operation import OperationMeta
from pyinfra.context import host

from ollama_fleet.deploys.firewall import firewall
from ollama_fleet.deploys.fleet import settings_for
from ollama_fleet.deploys.health import health_monitoring, verify_after_deploy
from ollama_fleet.deploys.install import install_ollama
from ollama_fleet.deploys.models import ollama_models
from ollama_fleet.deploys.proxy import nginx_proxy
from ollama_fleet.deploys.service import ollama_service
from ollama_fleet.deploys.tls import tls_material


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
    health_monitoring(s=s)  # installs the timer, or removes it when health_enabled is false
    # Last: check the host from the controller as a client would; a host that does not work fails the run.
    verify_after_deploy(s)
