"""Drain hosts at the gateway for a rollout: `--data rollout_drain='["gpu-2.lan"]'` on the gateway hosts.

The live gateway keeps its configuration; only the drained hosts' server lines are marked `down` (and the
ones an earlier drain marked are put back), then nginx reloads and the run waits until the requests that
were in flight finished on the old workers. The next full deploy of the gateway host renders its site from
settings again, which puts back every host the rollout drained.
"""

from __future__ import annotations

from pyinfra import logger
from pyinfra.api.deploy import deploy
from pyinfra.context import host

from ollama_fleet.deploys.fleet import settings_for
from ollama_fleet.deploys.proxy import NGINX_DIR, SITE_NAME
from ollama_fleet.operations import connection, lock, nginx

DRAIN_KEY = "rollout_drain"  # inventory names of the hosts to drain ([] puts every drained host back)
WAIT_KEY = "rollout_drain_wait"  # seconds to wait for the requests in flight
DEFAULT_WAIT = 300


def drained_hosts(value: object) -> list[str]:
    """The --data value as a list of host names; anything else is a usage error, said plainly."""
    if not isinstance(value, list) or not all(isinstance(name, str) for name in value):
        raise ValueError(f"{DRAIN_KEY} must be a JSON list of inventory host names (got {value!r})")
    return value


@deploy("Drain hosts at the gateway")
def drain_at_gateway() -> None:
    s = settings_for(host.state, host.name)
    connection.without_nagle(host)
    if not s.is_gateway:
        logger.info(f"{host.print_prefix}not a gateway host: nothing to drain")
        return
    drained = drained_hosts(host.data.get(DRAIN_KEY, []))
    wait = int(host.data.get(WAIT_KEY, DEFAULT_WAIT))
    lock.deploy_lock_taken(name="Take the deploy lock", holder=lock.this_holder())
    marked = nginx.gateway_hosts_drained(
        name=f"Drain {', '.join(drained)} at the gateway" if drained else "Put drained hosts back",
        drained=drained,
        nginx_dir=NGINX_DIR,
        site_name=SITE_NAME,
    )
    if drained:
        nginx.reloaded_and_drained(
            name="Reload nginx and wait for the requests in flight", seconds=wait, _if=marked.did_change
        )
    else:
        nginx.reloaded_after_config_test(name="Reload nginx", _if=marked.did_change)
    lock.deploy_lock_released(name="Release the deploy lock", holder=lock.this_holder())
