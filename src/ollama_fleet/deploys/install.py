"""Install the pinned Ollama release, its system user and its models directory."""

from __future__ import annotations

from collections.abc import Sequence

from pyinfra.api.deploy import deploy
from pyinfra.api.operation import OperationMeta
from pyinfra.context import host
from pyinfra.facts.server import Groups
from pyinfra.operations import files, server

from ollama_fleet.operations import accounts, packages, release
from ollama_fleet.render import OLLAMA_BIN, RELEASE_STORE, RELEASE_STORE_URL_PATH
from ollama_fleet.settings import FleetSettings
from ollama_fleet.settings.sections import OllamaSettings

STAGING_DIR = "/var/lib/ollama-fleet/staging"
GPU_GROUPS = ("render", "video")


def required_packages(s: FleetSettings) -> list[str]:
    """What the host needs besides a base system: curl for downloads and API calls, zstd for .tar.zst."""
    wanted = ["curl", "ca-certificates"]
    if s.ollama.archive_suffix == "tar.zst":
        wanted.append("zstd")
    return wanted


def release_bases(s: FleetSettings, seed_address: str | None) -> list[str]:
    """Where this host fetches the release's archives from, in order: the fleet's seed when it has one (it
    fetched them once from the release page), then the release page or mirror itself."""
    own = [s.ollama.download_base]
    if s.fetches_release_from_seed and seed_address:
        seed = f"http://{seed_address}:{s.models.lan_port}{RELEASE_STORE_URL_PATH}/v{s.ollama.version}"
        return [seed, *own]
    return own


def gpu_groups(existing: list[str]) -> list[str]:
    """render and video, where the host has them: AMD GPUs need /dev/kfd and /dev/dri (as install.sh adds)."""
    return [group for group in GPU_GROUPS if group in existing]


@deploy("Install Ollama")
def install_ollama(
    s: FleetSettings,
    restart_triggers: list[OperationMeta],
    overlays: list[str] | None = None,
    seed_address: str | None = None,
) -> None:
    """Appends to `restart_triggers` the operations whose change means the running binary is outdated.
    `overlays`: the ones to unpack (ollama_overlays, and those the host's GPUs need; None: the settings');
    `seed_address`: where this host reaches the fleet's seed, when it fetches the release from it."""
    o = s.ollama
    wanted = release_wanted(s, overlays)
    archives = wanted.archive_names
    packages.packages_installed(name="Install download tools", packages=required_packages(s))

    # Like the official installer: a system user with its home as Ollama's data directory, no login shell.
    server.group(name=f"Create group {o.group}", group=o.group, system=True)
    accounts.system_user(
        name=f"Create system user {o.user}",
        user=o.user,
        group=o.group,
        groups=gpu_groups(host.get_fact(Groups)),
        home=str(o.home),
        shell="/bin/false",
    )
    # `ollama serve` writes its key pair into ~/.ollama, and models below it. The home is 755 as Debian 12's
    # useradd makes it (Debian 13's makes it 0700: HOME_MODE), so a seed's nginx can read the models below it.
    for directory in (o.home, o.home / ".ollama", o.models_dir):
        files.directory(
            name=f"Create {directory}", path=str(directory), user=o.user, group=o.group, mode="755"
        )

    releases = host.get_fact(release.OllamaReleases, install_dir=str(o.install_dir))
    installed = releases["versions"].get(o.version)
    # The serving version unpacked again with other overlays: same path, new files: Ollama must restart.
    replaces_current = (
        releases["current"] == o.version
        and installed is not None
        and not release.unpacked_as(installed, archives)
    )
    unpacked = release.release_installed(
        name=f"Download, verify and unpack Ollama {o.version}"
        + _with_overlays(wanted.overlays)
        + _from_where(s),
        version=o.version,
        archive_name=archives,
        install_dir=str(o.install_dir),
        staging_dir=str(RELEASE_STORE) if s.serves_releases else STAGING_DIR,
        download_base=release_bases(s, seed_address) if o.source in ("release", "mirror") else None,
        controller_dir=o.controller_dir if o.source == "controller" else None,
        pinned_sha256=wanted.pins,
        keep_archives=s.serves_releases,
    )
    switched = release.current_release(
        name=f"Switch {o.install_dir}/current to {o.version}",
        version=o.version,
        install_dir=str(o.install_dir),
    )
    linked = files.link(
        name=f"Link {OLLAMA_BIN}",
        path=str(OLLAMA_BIN),
        target=f"{o.install_dir}/current/bin/ollama",
    )
    restart_triggers.extend([switched, linked, *([unpacked] if replaces_current else [])])


def release_wanted(s: FleetSettings, gpu_overlays: list[str] | None) -> OllamaSettings:
    """The release this host installs: its settings' overlays, and those its GPUs need (None: settings')."""
    if gpu_overlays is None:
        return s.ollama
    return s.ollama.model_copy(update={"overlays": sorted(set(s.ollama.overlays) | set(gpu_overlays))})


def _with_overlays(overlays: Sequence[str]) -> str:
    return f" with {', '.join(overlays)}" if overlays else ""


def _from_where(s: FleetSettings) -> str:
    if s.serves_releases:
        return " (and keep its archives for the fleet)"
    if s.fetches_release_from_seed:
        return f" (from the seed {s.models.seed_host})"
    return ""


@deploy("Prune old Ollama releases")
def prune_old_releases(s: FleetSettings) -> None:
    """Call after the host was verified: until then the previous release is the way back."""
    o = s.ollama
    release.old_releases_removed(
        name=f"Keep {o.keep_versions} Ollama versions",
        install_dir=str(o.install_dir),
        keep=o.keep_versions,
        current=o.version,
        store_dir=str(RELEASE_STORE) if s.serves_releases else None,
    )
