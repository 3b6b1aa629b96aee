"""Install pinned Ollama releases side by side: /opt/ollama/<version>/ plus a `current` link.

The archive is verified against the release's sha256sum.txt on the host before anything is unpacked; a
version is unpacked into a hidden temporary directory and renamed into place, and `current` is switched
with a rename, so a failed or tampered download never touches the version that is serving.
"""

from __future__ import annotations

import posixpath
import re
import shlex
from collections.abc import Generator
from pathlib import Path
from typing import Any, TypedDict

from pyinfra.api.command import FileUploadCommand
from pyinfra.api.exceptions import OperationError
from pyinfra.api.facts import FactBase
from pyinfra.api.operation import operation
from pyinfra.context import host

from ollama_fleet.operations.shell import fail_command

MARKER = ".ollama-fleet-sha256"
"""Written into a version directory last: a directory without it is not ours or not complete."""


class InstalledReleases(TypedDict):
    current: str | None
    versions: dict[str, str]  # version -> sha256 of the archive it came from
    foreign: list[str]  # directories without our marker


class OllamaReleases(FactBase[InstalledReleases]):
    """Versions unpacked under `install_dir`, the archive checksum recorded for each, and `current`."""

    @staticmethod
    def default() -> InstalledReleases:
        return {"current": None, "versions": {}, "foreign": []}

    def command(self, install_dir: str) -> str:
        d = shlex.quote(install_dir)
        return (
            f'[ -d {d} ] || exit 0; cd {d} && echo "current $(readlink current || true)"; '
            'for v in */; do v=${v%/}; [ -L "$v" ] && continue; [ -d "$v" ] || continue; '
            f'if [ -f "$v/{MARKER}" ] && [ -x "$v/bin/ollama" ]; '
            f'then echo "version $v $(cat "$v/{MARKER}")"; else echo "foreign $v"; fi; done'
        )

    def process(self, output: list[str]) -> InstalledReleases:
        found = self.default()
        for line in output:
            kind, _, rest = line.partition(" ")
            if kind == "current":
                found["current"] = rest.strip() or None
            elif kind == "version":
                version, _, digest = rest.partition(" ")
                found["versions"][version] = digest.strip()
            elif kind == "foreign":
                found["foreign"].append(rest.strip())
        return found


def version_key(version: str) -> tuple[int, ...]:
    """0.24.0 < 0.24.1-rc1 < 0.24.1 (a release candidate sorts before its release)."""
    match = re.fullmatch(r"(\d+)\.(\d+)\.(\d+)(?:-rc(\d+))?", version)
    if not match:
        return (-1,)
    major, minor, patch, rc = match.groups()
    return (int(major), int(minor), int(patch), int(rc) if rc is not None else 1_000_000)


def verify_script(archive: str, sums: str, pinned: str | None = None) -> str:
    """Shell that aborts unless sha256(archive) equals its line in sha256sum.txt ('./' or '*' prefixes ok),
    or the `pinned` digest (ollama_sha256) when there is one: sha256sum.txt is then not read at all.

    On a mismatch the staged download is deleted so a bad archive can never be unpacked later.
    """
    name = shlex.quote(posixpath.basename(archive))
    stage = shlex.quote(posixpath.dirname(archive))
    source = "ollama_sha256" if pinned else "sha256sum.txt"
    lookup = (
        f"expected={shlex.quote(pinned)}; "
        if pinned
        else f'expected=$(awk -v f={name} \'{{n=$2; sub(/^\\*/, "", n); sub(/^\\.\\//, "", n); '
        f"if (n == f) print $1}}' {shlex.quote(sums)}); "
    )
    return (
        lookup + f"actual=$(sha256sum {shlex.quote(archive)} | cut -d' ' -f1); "
        f'if [ -z "$expected" ]; then rm -rf {stage}; '
        f'echo "ollama-fleet: {name} is not listed in sha256sum.txt" >&2; exit 1; fi; '
        f'if [ "$expected" != "$actual" ]; then rm -rf {stage}; '
        f'echo "ollama-fleet: checksum mismatch for {name}: expected $expected ({source}), got $actual; '
        f'the installed version is left untouched" >&2; exit 1; fi'
    )


def unpack_script(archive: str, install_dir: str, version: str) -> str:
    """Unpack into a hidden temp dir, record the checksum, then rename it to <version> in one step."""
    temp = shlex.quote(posixpath.join(install_dir, f".unpack-{version}"))
    final = shlex.quote(posixpath.join(install_dir, version))
    decompress = "--zstd" if archive.endswith(".zst") else "-z"
    return (
        f"rm -rf {temp} && mkdir -p {temp} && "
        f"tar {decompress} -x --no-same-owner -f {shlex.quote(archive)} -C {temp} && "
        f'test -x {temp}/bin/ollama || {{ echo "ollama-fleet: archive has no bin/ollama" >&2; exit 1; }}; '
        f"sha256sum {shlex.quote(archive)} | cut -d' ' -f1 > {temp}/{MARKER} && "
        f"chmod 755 {temp} && mv -T {temp} {final}"
    )


@operation()
def release_installed(
    version: str,
    archive_name: str,
    install_dir: str,
    staging_dir: str,
    download_base: str | None = None,
    controller_dir: Path | None = None,
    pinned_sha256: str | None = None,
) -> Generator[Any, None, None]:
    """
    Ensure Ollama `version` is unpacked in `install_dir/<version>`, verified by sha256 first.

    + version: the release, e.g. 0.24.0
    + archive_name: ollama-linux-amd64.tgz or .tar.zst
    + install_dir: /opt/ollama
    + staging_dir: where the archive is downloaded/uploaded and checked (removed afterwards)
    + download_base: URL of the directory holding the archive and sha256sum.txt (release or mirror)
    + controller_dir: or a directory on the controller holding them (air-gapped LANs)
    + pinned_sha256: a trusted digest of the archive (ollama_sha256), checked instead of sha256sum.txt
    """
    releases = host.get_fact(OllamaReleases, install_dir=install_dir)
    installed = releases["versions"].get(version)
    if installed is not None and pinned_sha256 and installed != pinned_sha256:
        yield fail_command(
            f"{install_dir}/{version} was unpacked from an archive with sha256 {installed}, not the pinned "
            f"{pinned_sha256} (ollama_sha256); check the pin, then remove {install_dir}/{version} to "
            "reinstall"
        )
        return
    if installed is not None:
        host.noop(f"Ollama {version} is installed")
        return
    if version in releases["foreign"]:
        yield fail_command(
            f"{install_dir}/{version} exists but was not installed by ollama-fleet (no {MARKER}); "
            "move it away and run again"
        )
        return

    stage = posixpath.join(staging_dir, version)
    archive = posixpath.join(stage, archive_name)
    sums = posixpath.join(stage, "sha256sum.txt")
    yield f"rm -rf {shlex.quote(stage)} && mkdir -p -m 700 {shlex.quote(stage)}"
    names = [archive_name] if pinned_sha256 else [archive_name, "sha256sum.txt"]
    if download_base is not None:
        for name in names:
            remote, url = posixpath.join(stage, name), f"{download_base}/{name}"
            yield f"curl -fsSL --retry 3 --connect-timeout 20 -o {shlex.quote(remote)} {shlex.quote(url)}"
    elif controller_dir is not None:
        for name in names:
            yield FileUploadCommand(str(controller_dir / name), posixpath.join(stage, name))
    else:
        raise OperationError("release_installed needs download_base or controller_dir")  # a caller's bug
    yield verify_script(archive, sums, pinned_sha256)
    yield unpack_script(archive, install_dir, version)
    yield f"rm -rf {shlex.quote(stage)}"


@operation()
def current_release(version: str, install_dir: str) -> Generator[str, None, None]:
    """
    Point `install_dir/current` at `version` with an atomic rename.

    + version: an installed version
    + install_dir: /opt/ollama
    """
    releases = host.get_fact(OllamaReleases, install_dir=install_dir)
    if releases["current"] == version:
        host.noop(f"current is {version}")
        return
    yield switch_script(install_dir, version)


def versions_to_remove(versions: list[str], current: str | None, keep: int) -> list[str]:
    """All but the current version and the newest others, so that `keep` versions remain."""
    others = sorted((v for v in versions if v != current), key=version_key, reverse=True)
    slots = keep - 1 if current in versions else keep
    return sorted(others[max(slots, 0) :], key=version_key)


@operation()
def old_releases_removed(install_dir: str, keep: int, current: str) -> Generator[str, None, None]:
    """
    Remove installed versions beyond `keep` (the current one is never removed).

    Run it only after the current version was verified: until then the previous one is the way back.

    + install_dir: /opt/ollama
    + keep: how many versions to keep, counting the current one
    + current: the version this deploy made current (the fact was read before the switch)
    """
    releases = host.get_fact(OllamaReleases, install_dir=install_dir)
    doomed = versions_to_remove(list(releases["versions"]), current, keep)
    if not doomed:
        host.noop(f"at most {keep} Ollama versions installed")
        return
    for version in doomed:
        yield f"rm -rf {shlex.quote(posixpath.join(install_dir, version))}"


def wait_for_version_script(api: str, version: str, seconds: int) -> str:
    """Shell that waits up to `seconds` for ollama.service to be active and `api` to report `version`.

    Prints one last line: `serving <version>`, `other <version>` or `down <why>`; exits 0 only when serving.
    A main process that exited (systemd waits to restart it, or gave up) ends the wait at once.
    """
    url = shlex.quote(api + "/api/version")
    wanted = shlex.quote(version)
    return (
        f"seen=; for i in $(seq {seconds}); do "
        f"body=$(curl -fsS --max-time 2 {url} 2>/dev/null) && "
        'seen=$(printf \'%s\' "$body" | sed -n \'s/.*"version": *"\\([^"]*\\)".*/\\1/p\'); '
        f'if [ "$seen" = {wanted} ] && systemctl is-active -q ollama.service; then '
        'echo "serving $seen"; exit 0; fi; '
        "sub=$(systemctl show ollama.service -p SubState --value 2>/dev/null); "
        'case "$sub" in auto-restart|failed) echo "down crashed (its process exited: $sub)"; exit 1;; esac; '
        "sleep 1; done; "
        'if [ -n "$seen" ]; then echo "other $seen"; '
        'else echo "down $(systemctl is-active ollama.service 2>/dev/null || true)"; fi; exit 1'
    )


def switch_script(install_dir: str, version: str) -> str:
    """Point `current` at `version` in one rename."""
    temp = shlex.quote(posixpath.join(install_dir, ".current-new"))
    current = shlex.quote(posixpath.join(install_dir, "current"))
    return f"ln -sfn {shlex.quote(version)} {temp} && mv -T {temp} {current}"


def rollback_script(install_dir: str, failed: str, previous: str, api: str, why: str, seconds: int) -> str:
    """Switch back to `previous`, restart, wait for it to serve; always fails the host, saying so."""
    back = f"ollama-fleet: Ollama {failed} {why}; rolled back to {previous}, which serves again"
    stuck = f"ollama-fleet: Ollama {failed} {why}; rolled back to {previous}, but it does not serve either"
    return (
        f"{switch_script(install_dir, previous)} && systemctl restart ollama.service && "
        f"( {wait_for_version_script(api, previous, seconds)} ) >/dev/null; "
        f"ok=$?; if [ $ok = 0 ]; then echo {shlex.quote(back)} >&2; "
        f"else echo {shlex.quote(stuck)} >&2; fi; exit 1"
    )


class ServingVersion(FactBase[str]):
    """`serving V`, `other V` or `down STATE`, after waiting up to `seconds` for Ollama to serve `version`.

    Read at execution time by `release_serving` (after the restart); `read` makes each reading a new fact.
    """

    def command(self, api: str, version: str, seconds: int, read: int) -> str:
        return f"( {wait_for_version_script(api, version, seconds)} ) || true"

    def process(self, output: list[str]) -> str:
        return output[-1].strip() if output else "down ?"


_readings = 0


def read_serving_version(api: str, version: str, seconds: int) -> str:
    global _readings
    _readings += 1
    reading: str = host.get_fact(ServingVersion, api=api, version=version, seconds=seconds, read=_readings)
    return reading


def unhealthy_reason(reading: str, version: str, seconds: int) -> str | None:
    """Why a `ServingVersion` reading is not `version` serving, or None when it is."""
    kind, _, seen = reading.partition(" ")
    if kind == "serving" and seen == version:
        return None
    if kind == "other":
        return f"did not come up: /api/version reports {seen} after {seconds}s"
    if seen.startswith("crashed"):
        return f"did not come up: ollama.service {seen} (see journalctl -u ollama)"
    state = seen or "not active"
    return f"did not come up: ollama.service is {state} after {seconds}s (see journalctl -u ollama)"


@operation()
def release_serving(
    version: str,
    api: str,
    install_dir: str,
    rollback_to: str | None = None,
    timeout_seconds: int = 60,
) -> Generator[str, None, None]:
    """
    Wait (while executing) until ollama.service serves `version`; otherwise roll back and fail the host.

    Nothing to do, and no change reported, when it serves. When it does not and `rollback_to` is set (the
    version that was serving before this deploy), `current` goes back to it and Ollama is restarted; the
    host fails either way, with a message naming both versions and why.

    + version: the pinned version that must be serving
    + api: base URL of the local API
    + install_dir: /opt/ollama
    + rollback_to: the version to go back to, if any
    + timeout_seconds: how long to wait for the service to come up
    """
    if not host.state.is_executing:
        return  # a check of what runs: nothing to plan
    reason = unhealthy_reason(read_serving_version(api, version, timeout_seconds), version, timeout_seconds)
    if reason is None:
        return
    if rollback_to is None:
        yield fail_command(f"Ollama {version} {reason}; no previous release to roll back to")
        return
    yield rollback_script(install_dir, version, rollback_to, api, reason, timeout_seconds)


@operation()
def refused(command: str) -> Generator[str, None, None]:
    """
    Fail the host with `command` (from `fail_command`): a deploy that cannot go on for this host.

    + command: the failing command
    """
    yield command
