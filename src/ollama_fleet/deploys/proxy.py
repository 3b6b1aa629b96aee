"""nginx in front of Ollama: the site and keys validated on a staging copy, reloaded only on change."""

from __future__ import annotations

from collections.abc import Sequence

from pyinfra.api.deploy import deploy
from pyinfra.api.operation import OperationMeta
from pyinfra.operations import systemd

from ollama_fleet.deploys.service import any_changed
from ollama_fleet.operations import nginx, packages
from ollama_fleet.operations.secrets import Secret
from ollama_fleet.render import API_KEYS_PATH, render_api_keys, render_nginx_site
from ollama_fleet.settings import FleetSettings

NGINX_DIR = "/etc/nginx"
SITE_NAME = "ollama-fleet"


@deploy("nginx proxy")
def nginx_proxy(s: FleetSettings, reload_triggers: Sequence[OperationMeta]) -> None:
    # The site template and the keys include must agree on where the include lives.
    assert str(API_KEYS_PATH) == nginx.SitePaths(NGINX_DIR, SITE_NAME).keys
    packages.packages_installed(name="Install nginx", packages=["nginx"])
    site = nginx.site_validated(
        name=f"Install the {SITE_NAME} site after nginx -t on a staging copy",
        site=render_nginx_site(s),
        api_keys=Secret(render_api_keys(s)),
        nginx_dir=NGINX_DIR,
    )
    systemd.service(
        name="Reload nginx after a change",
        service="nginx.service",
        running=True,
        reloaded=True,
        _if=any_changed([site, *reload_triggers]),
    )
    systemd.service(name="Enable and start nginx", service="nginx.service", running=True, enabled=True)
