"""Drain hosts at the gateway for a rollout: `--data rollout_drain='["gpu-2.lan"]'` on the gateway hosts.

Whether a host is in the gateway's rotation is data: each host's `server` line lives in a file of its own
(gateway.member_confs) that every pool of the site includes, whatever template rendered the site. A drain
writes those files from the inventory's settings with the drained hosts `down` (and the ones an earlier
drain took out back in), after `nginx -t` on a staging copy; nginx reloads and the run waits until the
requests in flight finished on the old workers. Then the gateway's configuration is read back (`nginx -T`):
a drained host that some upstream still lists without `down` fails the gateway host, and so the rollout.
A deploy of the gateway host writes the same files from settings (with the rollout's drain, when the
rollout passes it to a batch).
"""

from __future__ import annotations

from pyinfra import logger
from pyinfra.api.deploy import deploy
from pyinfra.context import host

from ollama_fleet.deploys.fleet import settings_for
from ollama_fleet.deploys.proxy import (
    NGINX_DIR,
    ROLLOUT_DRAIN_KEY,
    SITE_NAME,
    fleet_gateway_plan,
    gateway_members_reload_reason,
)
from ollama_fleet.deploys.service import any_changed
from ollama_fleet.gateway import GATEWAY_MEMBERS_DIR, member_confs
from ollama_fleet.operations import connection, lock, nginx
from ollama_fleet.render import API_KEYS_PATH

DRAIN_KEY = ROLLOUT_DRAIN_KEY  # inventory names of the hosts to drain ([] puts every drained host back)
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
    plan = fleet_gateway_plan(drained)
    members = member_confs(plan, s.gateway)
    stale = gateway_members_reload_reason(list(members))
    lock.deploy_lock_taken(name="Take the deploy lock", holder=lock.this_holder())
    written = nginx.gateway_members_written(
        name=f"Drain {', '.join(drained)} at the gateway" if drained else "Put drained hosts back",
        members=members,
        members_dir=str(GATEWAY_MEMBERS_DIR),
        nginx_dir=NGINX_DIR,
        site_name=SITE_NAME,
    )
    reload_if = any_changed([written], or_if=stale is not None)
    if drained:
        nginx.reloaded_and_drained(
            name="Reload nginx and wait for the requests in flight", seconds=wait, _if=reload_if
        )
    else:
        nginx.reloaded_after_config_test(name="Reload nginx", _if=reload_if)
    nginx.gateway_drain_checked(
        name="Read the gateway's configuration back: the drained hosts are out of rotation",
        drained={m.name: m.peer for m in plan.members if m.name in drained},
        keys_path=str(API_KEYS_PATH),
    )
    lock.deploy_lock_released(name="Release the deploy lock", holder=lock.this_holder())
