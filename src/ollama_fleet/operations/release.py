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

from ollama_fleet.operations.shell import fail_command, shown_command
from ollama_fleet.settings.rules import release_key

MARKER = ".ollama-fleet-sha256"
"""Written into a version directory last, one `<sha256>  <archive>` line for each archive unpacked into it
(a lone digest: the main archive, as versions before overlays wrote it). A directory without it is not ours
or not complete."""

MAIN = ""
"""The variant of a release's main archive; an overlay's is its name (rocm, jetpack6, ...)."""


class InstalledReleases(TypedDict):
    current: str | None
    versions: dict[str, dict[str, str]]  # version -> {archive name (or MAIN, from an old marker): sha256}
    foreign: list[str]  # directories without our marker


class OllamaReleases(FactBase[InstalledReleases]):
    """Versions unpacked under `install_dir`, the archives each came from with their sha256, and `current`."""

    @staticmethod
    def default() -> InstalledReleases:
        return {"current": None, "versions": {}, "foreign": []}

    def command(self, install_dir: str) -> str:
        d = shlex.quote(install_dir)
        return (
            f'[ -d {d} ] || exit 0; cd {d} && echo "current $(readlink current || true)"; '
            'for v in */; do v=${v%/}; [ -L "$v" ] && continue; [ -d "$v" ] || continue; '
            f'if [ -f "$v/{MARKER}" ] && [ -x "$v/bin/ollama" ]; '
            f'then echo "version $v $(tr "\\n" " " < "$v/{MARKER}")"; else echo "foreign $v"; fi; done'
        )

    def process(self, output: list[str]) -> InstalledReleases:
        found = self.default()
        for line in output:
            kind, _, rest = line.partition(" ")
            if kind == "current":
                found["current"] = rest.strip() or None
            elif kind == "version":
                version, _, marker = rest.partition(" ")
                found["versions"][version] = parse_marker(marker)
            elif kind == "foreign":
                found["foreign"].append(rest.strip())
        return found


def parse_marker(text: str) -> dict[str, str]:
    """`<sha256>  <name>` pairs (whitespace-separated), or one lone digest: the main archive's."""
    words = text.split()
    if len(words) == 1:
        return {MAIN: words[0]}
    return {name: digest for digest, name in zip(words[::2], words[1::2], strict=False)}


def variant(archive: str) -> str:
    """MAIN for ollama-linux-amd64.tar.zst, `rocm` for ollama-linux-amd64-rocm.tar.zst."""
    match = re.fullmatch(r"ollama-linux-[a-z0-9]+(?:-([a-z0-9]+))?\.(?:tgz|tar\.zst)", archive)
    return (match.group(1) or MAIN) if match else archive


def variants(archives: dict[str, str] | list[str]) -> set[str]:
    return {MAIN if name == MAIN else variant(name) for name in archives}


def pin_mismatches(installed: dict[str, str], pins: dict[str, str]) -> list[str]:
    """The pinned archives an installed version came from with another digest: `name sha256 X, pinned Y`."""
    found = []
    for name, pinned in pins.items():
        digest = installed.get(name, installed.get(MAIN) if variant(name) == MAIN else None)
        if digest is not None and digest != pinned:
            found.append(f"{name} had sha256 {digest}, pinned {pinned}")
    return found


def unpacked_as(installed: dict[str, str] | None, archives: list[str]) -> bool:
    """Whether an installed version (its marker, or None) was unpacked from these archives' variants."""
    return installed is not None and variants(installed) == variants(archives)


def files_to_fetch(archives: list[str], pins: dict[str, str], keep_archives: bool = False) -> list[str]:
    """The archives, and sha256sum.txt unless every archive is pinned (a seed keeps it for the others)."""
    pinned = all(name in pins for name in archives)
    return archives if pinned and not keep_archives else [*archives, "sha256sum.txt"]


version_key = release_key


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


def unpack_script(archives: str | list[str], install_dir: str, version: str) -> str:
    """Unpack the main archive, then each overlay over it, into a hidden temp dir; record each archive's
    checksum; then rename the whole into place as <version> (a directory already there, e.g. the same
    version without an overlay, is moved aside and removed: `current` names the version, not the copy)."""
    archives = [archives] if isinstance(archives, str) else archives
    temp = shlex.quote(posixpath.join(install_dir, f".unpack-{version}"))
    final = shlex.quote(posixpath.join(install_dir, version))
    old = shlex.quote(posixpath.join(install_dir, f".replaced-{version}"))
    steps = [f"rm -rf {temp} {old} && mkdir -p {temp}"]
    for archive in archives:
        decompress = "--zstd" if archive.endswith(".zst") else "-z"
        steps.append(f"tar {decompress} -x --no-same-owner -f {shlex.quote(archive)} -C {temp}")
    missing = 'echo "ollama-fleet: archive has no bin/ollama" >&2; exit 1'
    steps.append(f"{{ test -x {temp}/bin/ollama || {{ {missing}; }}; }}")
    for archive in archives:
        name = shlex.quote(posixpath.basename(archive))
        steps.append(
            f"printf '%s  %s\\n' \"$(sha256sum {shlex.quote(archive)} | cut -d' ' -f1)\" {name} "
            f">> {temp}/{MARKER}"
        )
    steps.append(f"chmod 755 {temp}")
    steps.append(f"{{ [ ! -e {final} ] || mv -T {final} {old}; }} && mv -T {temp} {final} && rm -rf {old}")
    return " && ".join(steps)


def download_script(url: str, dest: str) -> str:
    """Fetch `url` to `dest`, resuming a partial `dest`, printing the MB done and the rate every 5 s; on
    failure say which URL and what it answered (an HTTP status, or curl's reason)."""
    q_url, q_dest = shlex.quote(url), shlex.quote(dest)
    name = shlex.quote(posixpath.basename(dest))
    mb = "$(( $(stat -c %s " + q_dest + " 2>/dev/null || echo 0) / 1048576 ))"
    return (
        f"start=$(date +%s); before={mb}; "
        # A reporter beside curl, so that a quick download waits for nothing.
        f"( while sleep 5 >/dev/null 2>&1 </dev/null; do now={mb}; t=$(( $(date +%s) - start )); "
        f'echo "{name}: $now MB, $(( (now - before) / (t > 0 ? t : 1) )) MB/s"; done ) & reporter=$!; '
        f"curl -sS -L --retry 3 --connect-timeout 20 -C - -o {q_dest} -w '%{{http_code}}' {q_url} "
        f"> {q_dest}.status 2> {q_dest}.error; rc=$?; kill $reporter 2>/dev/null; "
        f"code=$(cat {q_dest}.status 2>/dev/null); reason=$(tail -1 {q_dest}.error); "
        f"rm -f {q_dest}.status {q_dest}.error; "
        # 416: the whole file was here already (a resumed download that had finished).
        f'case "$rc:$code" in 0:2??|*:416) ;; '
        f'*) if [ -n "$code" ] && [ "$code" != 000 ]; then why="HTTP $code"; else why="$reason"; fi; '
        f"rm -f {q_dest}; "
        f'echo "ollama-fleet: downloading {url} failed: $why" >&2; exit 1;; esac; '
        f'echo "{name}: {mb} MB in $(( $(date +%s) - start )) s"'
    )


def fetch_script(name: str, stage: str, bases: list[str]) -> str:
    """Fetch archive `name` into `stage` from the first of `bases` that has it (the seed, then the release
    page): the next base is tried only when one answered 404 or could not be reached."""
    dest = posixpath.join(stage, name)
    tries = [f"( {download_script(f'{base}/{name}', dest)} )" for base in bases]
    return " || ".join(tries)


@operation()
def release_installed(
    version: str,
    archive_name: str | list[str],
    install_dir: str,
    staging_dir: str,
    download_base: str | list[str] | None = None,
    controller_dir: Path | None = None,
    pinned_sha256: str | dict[str, str] | None = None,
    keep_archives: bool = False,
) -> Generator[Any, None, None]:
    """
    Ensure Ollama `version` is unpacked in `install_dir/<version>` from exactly `archive_name` (the main
    archive, then its overlays), each verified by sha256 first.

    + version: the release, e.g. 0.24.0
    + archive_name: ollama-linux-amd64.tar.zst, or a list: the main archive, then overlays (-rocm, ...)
    + install_dir: /opt/ollama
    + staging_dir: where archives are downloaded/uploaded and checked (a partial download is resumed)
    + download_base: URL of the directory holding the archives and sha256sum.txt (release or mirror), or a
      list tried in order (the fleet's seed, then the release page)
    + controller_dir: or a directory on the controller holding them (air-gapped LANs)
    + pinned_sha256: trusted digests (ollama_sha256), archive name -> sha256 (or the main one's alone),
      checked instead of sha256sum.txt
    + keep_archives: leave the verified archives and sha256sum.txt in `staging_dir/v<version>` (the seed
      serves them to the other hosts); otherwise they are removed once unpacked
    """
    archives = [archive_name] if isinstance(archive_name, str) else list(archive_name)
    pins = pinned_sha256 if isinstance(pinned_sha256, dict) else {}
    if isinstance(pinned_sha256, str):
        pins = {archives[0]: pinned_sha256}
    bases = [download_base] if isinstance(download_base, str) else list(download_base or [])
    releases = host.get_fact(OllamaReleases, install_dir=install_dir)
    installed = releases["versions"].get(version)
    stage = posixpath.join(staging_dir, f"v{version}" if keep_archives else version)
    kept = keep_archives and host.get_fact(StagedArchives, stage=stage) == sorted(
        files_to_fetch(archives, pins, keep_archives=True)
    )
    mismatched = pin_mismatches(installed or {}, pins)
    if mismatched:
        yield fail_command(
            f"{install_dir}/{version} was unpacked from another archive than ollama_sha256 pins "
            f"({'; '.join(mismatched)}); check the pin, then remove {install_dir}/{version} to reinstall"
        )
        return
    unpacked = unpacked_as(installed, archives)
    if unpacked and (kept or not keep_archives):
        with_overlays = f" with {', '.join(archives[1:])}" if archives[1:] else ""
        host.noop(f"Ollama {version} is installed{with_overlays}")
        return
    if version in releases["foreign"]:
        yield fail_command(
            f"{install_dir}/{version} exists but was not installed by ollama-fleet (no {MARKER}); "
            "move it away and run again"
        )
        return

    paths = [posixpath.join(stage, name) for name in archives]
    sums = posixpath.join(stage, "sha256sum.txt")
    # Kept: a partial download from an interrupted run is resumed (every archive is checked before use).
    yield (
        f"mkdir -p -m 755 {shlex.quote(stage)}" if keep_archives else f"mkdir -p -m 700 {shlex.quote(stage)}"
    )
    names = files_to_fetch(archives, pins, keep_archives)
    if bases:
        # sha256sum.txt is small and may change with a re-published release: always fetched anew.
        yield f"rm -f {shlex.quote(sums)}"
        for name in names:
            yield shown_command(fetch_script(name, stage, bases))
    elif controller_dir is not None:
        for name in names:
            yield FileUploadCommand(str(controller_dir / name), posixpath.join(stage, name))
    else:
        raise OperationError("release_installed needs download_base or controller_dir")  # a caller's bug
    for name, path in zip(archives, paths, strict=True):
        yield verify_script(path, sums, pins.get(name))
    if not unpacked:  # (a seed that has the version but not its archives only fetches them to serve)
        yield unpack_script(paths, install_dir, version)
    if not keep_archives:
        yield f"rm -rf {shlex.quote(stage)}"


class StagedArchives(FactBase[list[str]]):
    """The files a seed keeps for a version (archives and sha256sum.txt), sorted; [] when none."""

    def command(self, stage: str) -> str:
        return f"cd {shlex.quote(stage)} 2>/dev/null && ls -1 || true"

    def process(self, output: list[str]) -> list[str]:
        return sorted(line.strip() for line in output if line.strip() and not line.startswith("."))


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
def old_releases_removed(
    install_dir: str, keep: int, current: str, store_dir: str | None = None
) -> Generator[str, None, None]:
    """
    Remove installed versions beyond `keep` (the current one is never removed), and the archives a seed
    kept of them.

    Run it only after the current version was verified: until then the previous one is the way back.

    + install_dir: /opt/ollama
    + keep: how many versions to keep, counting the current one
    + current: the version this deploy made current (the fact was read before the switch)
    + store_dir: where a seed keeps the archives it serves, v<version>/ (None: not a seed)
    """
    releases = host.get_fact(OllamaReleases, install_dir=install_dir)
    doomed = versions_to_remove(list(releases["versions"]), current, keep)
    if not doomed:
        host.noop(f"at most {keep} Ollama versions installed")
        return
    for version in doomed:
        kept = [posixpath.join(store_dir, f"v{version}")] if store_dir else []
        yield "rm -rf " + " ".join(shlex.quote(p) for p in [posixpath.join(install_dir, version), *kept])


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
