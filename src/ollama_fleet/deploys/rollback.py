"""Back one release on purpose: `current` to the previous installed version, restart, check it serves."""

from __future__ import annotations

from pyinfra import logger
from pyinfra.api.deploy import deploy
from pyinfra.context import host
from pyinfra.operations import systemd

from ollama_fleet.deploys.fleet import settings_for
from ollama_fleet.deploys.service import api_base
from ollama_fleet.operations import connection, lock, release
from ollama_fleet.operations.shell import fail_command
from ollama_fleet.settings import FleetSettings


def previous_release(current: str | None, versions: list[str]) -> str | None:
    """The newest installed version older than `current`: one release back, never forward."""
    if current is None:
        return None
    older = [v for v in versions if release.version_key(v) < release.version_key(current)]
    return max(older, key=release.version_key) if older else None


@deploy("Roll back one Ollama release")
def roll_back(s: FleetSettings) -> None:
    o = s.ollama
    releases = host.get_fact(release.OllamaReleases, install_dir=str(o.install_dir))
    target = previous_release(releases["current"], list(releases["versions"]))
    if target is None:
        release.refused(
            name="Find the previous release",
            command=fail_command(
                f"no release older than {releases['current'] or 'none'} is installed in {o.install_dir} "
                f"(installed: {', '.join(sorted(releases['versions'])) or 'none'}); "
                "ollama_keep_versions >= 2 keeps one to go back to"
            ),
        )
        return
    logger.info(f"{host.print_prefix}rolling back from {releases['current']} to {target}")
    switched = release.current_release(
        name=f"Switch {o.install_dir}/current back to {target}",
        version=target,
        install_dir=str(o.install_dir),
    )
    systemd.service(
        name="Restart ollama on the previous release",
        service="ollama.service",
        running=True,
        restarted=True,
        _if=switched.did_change,
    )
    release.release_serving(
        name=f"Check that Ollama {target} serves",
        version=target,
        api=api_base(s),
        install_dir=str(o.install_dir),
    )


def roll_back_one_release() -> None:
    s = settings_for(host.state, host.name)
    connection.without_nagle(host)
    lock.deploy_lock_taken(name="Take the deploy lock", holder=lock.this_holder())
    roll_back(s=s)
    lock.deploy_lock_released(name="Release the deploy lock", holder=lock.this_holder())
