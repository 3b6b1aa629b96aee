"""The nginx site, validated with `nginx -t` against a staging copy of /etc/nginx before it goes live.

A config that fails validation never reaches /etc/nginx, so the running nginx (and a later reload or
reboot) keeps the old, working site. The staging copy is a full copy of the live tree with every absolute
`/etc/nginx/` path (in files and in symlinks) rewritten to the copy, so each include resolves inside it.
"""

from __future__ import annotations

import hashlib
import posixpath
import shlex
from collections.abc import Generator
from dataclasses import dataclass
from io import BytesIO
from typing import Any

from pyinfra.api.command import FileUploadCommand, StringCommand
from pyinfra.api.facts import FactBase
from pyinfra.api.operation import operation
from pyinfra.context import host
from pyinfra.facts.files import Link

from ollama_fleet.nginx_config import ConfigError, in_rotation, upstream_servers
from ollama_fleet.operations.running import with_nginx_master
from ollama_fleet.operations.secrets import FileDigest, Secret, file_matches, secret_file
from ollama_fleet.operations.shell import fail_command, operation_connector_arguments, shown_command

RELOAD_WAIT_S = 15  # for the master to replace its workers; it takes well under a second
KEYS_MODE = 0o600  # nginx parses its config as root; workers never need the keys file


@dataclass(frozen=True)
class SitePaths:
    nginx_dir: str
    name: str

    @property
    def site(self) -> str:
        return f"{self.nginx_dir}/sites-available/{self.name}.conf"

    @property
    def enabled(self) -> str:
        return f"{self.nginx_dir}/sites-enabled/{self.name}.conf"

    @property
    def keys(self) -> str:
        return f"{self.nginx_dir}/{self.name}/api-keys.conf"

    @property
    def default_site(self) -> str:
        return f"{self.nginx_dir}/sites-enabled/default"


def _sha256(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


class ConfFiles(FactBase[list[str]]):
    """The names of the *.conf files in a directory (none when it does not exist)."""

    @staticmethod
    def default() -> list[str]:
        return []

    def command(self, path: str) -> str:
        q = shlex.quote(path)
        return f'for f in {q}/*.conf; do [ -f "$f" ] && echo "${{f##*/}}"; done; true'

    def process(self, output: list[str]) -> list[str]:
        return sorted(line.strip() for line in output if line.strip())


def _files_are_live(files: dict[str, str]) -> bool:
    """Whether each file holds its text (root's, 0644)."""
    return all(
        file_matches(host.get_fact(FileDigest, path=path), _sha256(text), "root", "root", 0o644)
        for path, text in files.items()
    )


def _site_is_live(
    paths: SitePaths,
    site_sha: str,
    api_keys: Secret,
    keys_group: str,
    members: dict[str, str],
    members_dir: str,
) -> bool:
    enabled = host.get_fact(Link, path=paths.enabled)
    listed = host.get_fact(ConfFiles, path=members_dir) if members_dir else []
    return (
        _files_are_live(members)
        and listed == sorted(posixpath.basename(p) for p in members)
        and file_matches(host.get_fact(FileDigest, path=paths.site), site_sha, "root", "root", 0o644)
        and file_matches(
            host.get_fact(FileDigest, path=paths.keys), api_keys.sha256, "root", keys_group, KEYS_MODE
        )
        and isinstance(enabled, dict)
        and enabled.get("link_target") == paths.site
        and host.get_fact(Link, path=paths.default_site) is None
    )


def stage_script(
    paths: SitePaths,
    work_dir: str,
    with_site: bool = True,
    members_dir: str = "",
    replace_members: bool = True,
) -> str:
    """Copy the new files into the staging copy and repoint every /etc/nginx path in it at the copy.
    `members_dir`: where the gateway members' files go (from new/members/); `replace_members`: only those
    (the site's deploy), else over the ones there (a drain, which leaves the live site as it is)."""
    ngx, s, new = paths.nginx_dir, f"{work_dir}/staging", f"{work_dir}/new"
    q = shlex.quote

    def staged(path: str) -> str:
        return f"{s}/{posixpath.relpath(path, ngx)}"

    site = (
        [
            "mkdir -p "
            + " ".join(q(posixpath.dirname(staged(p))) for p in (paths.site, paths.keys, paths.enabled)),
            f"cp {q(new)}/site.conf {q(staged(paths.site))}",
            f"cp -p {q(new)}/api-keys.conf {q(staged(paths.keys))}",
            f"rm -f {q(staged(paths.default_site))}",
            f"ln -sfn {q(paths.site)} {q(staged(paths.enabled))}",
        ]
        if with_site
        else []
    )
    members = []
    if members_dir:
        fresh = f"rm -rf {q(staged(members_dir))} && " if replace_members else ""
        members = [
            f"{fresh}mkdir -p {q(staged(members_dir))}",
            f"{{ ! [ -d {q(new)}/members ] || cp -rp {q(new)}/members/. {q(staged(members_dir))}/; }}",
        ]
    return " && ".join(
        [
            *site,
            *members,
            f"{{ grep -rlZ -F {q(ngx + '/')} {q(s)} | xargs -0r sed -i 's#{ngx}/#{s}/#g'; }}",
            f'find {q(s)} -type l | while IFS= read -r l; do t=$(readlink "$l"); case "$t" in {ngx}/*) '
            f'ln -sfn "{s}/${{t#{ngx}/}}" "$l";; esac; done',
        ]
    )


def staging_commands(nginx_dir: str, work_dir: str) -> list[str]:
    """A fresh root-only work directory with `new/` for the upload and a full copy of the live tree."""
    q = shlex.quote
    return [
        f"rm -rf {q(work_dir)} && mkdir -p {q(posixpath.dirname(work_dir))}",
        f"mkdir -m 700 {q(work_dir)} {q(work_dir + '/new')}",
        f"cp -a {q(nginx_dir)} {q(work_dir + '/staging')}",
    ]


def validate_script(paths: SitePaths, work_dir: str) -> str:
    """`nginx -t` on the staging copy. On failure: quoted words of lines about the keys file are masked
    (nginx quotes the offending token, which there could be a key), the copy is removed, the host fails."""
    conf = shlex.quote(f"{work_dir}/staging/nginx.conf")
    keys_file = posixpath.basename(paths.keys).replace(".", "[.]")
    return (
        f"if out=$(nginx -t -q -c {conf} 2>&1); then exit 0; fi; "
        f'printf \'%s\\n\' "$out" | sed -E \'/{keys_file}/ s/"[^"]*"/"(hidden)"/g\' >&2; '
        f"rm -rf {shlex.quote(work_dir)}; "
        + fail_command("nginx rejected the new site; the live configuration is unchanged and still serving")
    )


def swap_script(src: str, dest: str, mode: str) -> str:
    """Copy `src` beside `dest` with `mode`, then rename it over `dest` (never half-written)."""
    q, temp = shlex.quote, posixpath.join(posixpath.dirname(dest), f".{posixpath.basename(dest)}.new")
    return f"cp -p {q(src)} {q(temp)} && chmod {mode} {q(temp)} && mv -f {q(temp)} {q(dest)}"


def members_live_script(work_dir: str, members: list[str]) -> list[str]:
    """Each gateway member's file (uploaded to new/members/) renamed into place."""
    q = shlex.quote
    made = sorted({posixpath.dirname(p) for p in members})
    mkdir = [f"mkdir -p {' '.join(q(d) for d in made)}"] if made else []
    new = f"{work_dir}/new/members"
    return [*mkdir, *(swap_script(f"{new}/{posixpath.basename(p)}", p, "644") for p in members)]


def stale_members_script(members_dir: str, keep: list[str]) -> str:
    """Remove the member files of hosts no longer in the gateway (after the site that included them)."""
    names = "|".join(shlex.quote(posixpath.basename(p)) for p in keep) or "''"
    return (
        f'for f in {shlex.quote(members_dir)}/*.conf; do [ -f "$f" ] || continue; '
        f'case "${{f##*/}}" in {names}) ;; *) rm -f "$f";; esac; done'
    )


def go_live_script(
    paths: SitePaths, work_dir: str, members: list[str] | None = None, members_dir: str = ""
) -> str:
    """Each file replaced by a rename (never half-written): the gateway members' first (the old site may
    include them too), then the keys and the site; the default site is disabled; then the member files no
    host of the new site has are removed."""
    q = shlex.quote
    new = f"{work_dir}/new"

    enabled_temp = posixpath.join(posixpath.dirname(paths.enabled), f".{paths.name}.conf.new")
    stale = [stale_members_script(members_dir, members or [])] if members_dir else []
    return " && ".join(
        [
            *members_live_script(work_dir, members or []),
            "mkdir -p " + " ".join(q(posixpath.dirname(p)) for p in (paths.site, paths.enabled, paths.keys)),
            swap_script(f"{new}/api-keys.conf", paths.keys, f"{KEYS_MODE:o}"),
            swap_script(f"{new}/site.conf", paths.site, "644"),
            f"ln -sfn {q(paths.site)} {q(enabled_temp)} && mv -Tf {q(enabled_temp)} {q(paths.enabled)}",
            f"rm -f {q(paths.default_site)}",
            *stale,
        ]
    )


def _member_uploads(work_dir: str, members: dict[str, str]) -> list[str | FileUploadCommand]:
    """The commands that put the members' files in new/members/ (none without members)."""
    new = f"{work_dir}/new/members"
    uploads = [
        FileUploadCommand(BytesIO(text.encode()), f"{new}/{posixpath.basename(path)}")
        for path, text in members.items()
    ]
    return [f"mkdir -m 700 {shlex.quote(new)}", *uploads] if uploads else []


@operation()
def site_validated(
    site: str,
    api_keys: Secret,
    nginx_dir: str = "/etc/nginx",
    site_name: str = "ollama-fleet",
    work_dir: str = "/var/lib/ollama-fleet/nginx",
    keys_group: str = "root",
    members: dict[str, str] | None = None,
    members_dir: str = "",
) -> Generator[Any, None, None]:
    """
    Install the nginx site and its API-keys include, only after `nginx -t` passed on a staging copy.

    + site: the rendered site text
    + api_keys: the rendered keys include (secret: compared by digest, never shown)
    + nginx_dir: the live nginx configuration directory
    + site_name: sites-available/<site_name>.conf and <nginx_dir>/<site_name>/api-keys.conf
    + work_dir: root-only directory for the upload and the staging copy (removed afterwards)
    + keys_group: group of the keys include (root: only nginx's master, which runs as root, reads it)
    + members: path -> text of the gateway members' server lines the site includes (gateway.member_confs)
    + members_dir: their directory; files there of hosts not in `members` are removed ("": none handled)
    """
    paths = SitePaths(nginx_dir, site_name)
    members = members or {}
    if _site_is_live(paths, _sha256(site), api_keys, keys_group, members, members_dir):
        host.noop(f"nginx site {site_name} is live")
        return

    q, new = shlex.quote, f"{work_dir}/new"
    # Root-only: the upload and the staged copy hold the keys.
    yield from staging_commands(nginx_dir, work_dir)
    yield FileUploadCommand(BytesIO(site.encode()), f"{new}/site.conf")
    yield from secret_file._inner(api_keys, f"{new}/api-keys.conf", "root", keys_group, KEYS_MODE)
    yield from _member_uploads(work_dir, members)
    yield stage_script(paths, work_dir, members_dir=members_dir)
    yield validate_script(paths, work_dir)
    yield go_live_script(paths, work_dir, list(members), members_dir)
    yield f"rm -rf {q(work_dir)}"


@operation(is_idempotent=False)
def reloaded_after_config_test() -> Generator[str, None, None]:
    """
    Reload nginx only when the live configuration (site, keys, certificate and key together) passes
    `nginx -t`; otherwise fail with nginx's words while the running workers keep serving the old one.
    Returns once the workers from before no longer take connections (reload_script).
    """
    yield reload_script()


@operation()
def gateway_members_written(
    members: dict[str, str],
    members_dir: str,
    nginx_dir: str = "/etc/nginx",
    site_name: str = "ollama-fleet",
    work_dir: str = "/var/lib/ollama-fleet/nginx",
) -> Generator[Any, None, None]:
    """
    Write the gateway members' server lines (a rollout's drain: `down` for the drained hosts), only after
    `nginx -t` passed on a staging copy; nothing else in the live configuration changes.

    + members: path -> text (gateway.member_confs)
    + members_dir: their directory
    + nginx_dir, site_name, work_dir: as for site_validated
    """
    changed = {path: text for path, text in members.items() if not _files_are_live({path: text})}
    if not changed:
        host.noop("each member's server line is as it must be")
        return
    paths = SitePaths(nginx_dir, site_name)
    yield from staging_commands(nginx_dir, work_dir)
    yield from _member_uploads(work_dir, changed)
    yield stage_script(paths, work_dir, with_site=False, members_dir=members_dir, replace_members=False)
    yield validate_script(paths, work_dir)
    yield " && ".join(members_live_script(work_dir, list(changed)))
    yield f"rm -rf {shlex.quote(work_dir)}"


def live_config_command(keys_path: str) -> str:
    """`nginx -T` without the keys include's text (it holds the keys: it stays on the host)."""
    header = shlex.quote(f"# configuration file {keys_path}:")
    drop_keys = "'/^# configuration file / { skip = ($0 == keys) } !skip'"
    return (
        f"dump=$(nginx -T 2>/dev/null) || exit 1; printf '%s\\n' \"$dump\" | awk -v keys={header} {drop_keys}"
    )


def drain_problem(dump: str, drained: dict[str, str]) -> str | None:
    """Why the configuration nginx dumped still sends to a `drained` host (host -> address:port), or None."""
    try:
        still = in_rotation(upstream_servers(dump), drained)
    except ConfigError as exc:
        return f"its live configuration could not be read back ({exc})"
    if not still:
        return None
    where = "; ".join(f"{name} in {', '.join(places)}" for name, places in still.items())
    return (
        f"the gateway still sends requests to {where}, after its reload: the drain did not take. An override "
        "of nginx-gateway.conf.j2 (nginx_template_dirs) must include each member's server line as the "
        "shipped template does (include {{ gateway_member_conf(m) }};) instead of writing it"
    )


@operation(is_idempotent=False)
def gateway_drain_checked(drained: dict[str, str], keys_path: str) -> Generator[Any, None, None]:
    """
    Read the gateway's configuration back (`nginx -T`) while executing, and fail when an upstream still
    lists a drained host without `down` (a passing check runs no command: no change reported).

    + drained: inventory name -> address:port of each host the gateway must send nothing to
    + keys_path: the API-keys include, left out of what is read (it holds the keys)
    """
    if not drained or not host.state.is_executing:
        return
    command = StringCommand(live_config_command(keys_path))
    ok, output = host.run_shell_command(command, **operation_connector_arguments())
    dump = "\n".join(output.stdout_lines)
    unread = "nginx -T failed: its configuration could not be read back"
    problem = drain_problem(dump, drained) if ok else unread
    if problem is not None:
        yield fail_command(problem)


# $old: the workers of nginx.service's master. As pgrep -f's pattern, "proces[s]" matches nginx's workers
# but not the shell running this script.
LIST_WORKERS = 'old=""; ' + with_nginx_master(
    "old=$(pgrep -P \"$master\" -f 'nginx: worker proces[s]' | tr '\\n' ' ')"
)


def workers_replaced_wait_script(seconds: int) -> str:
    """Wait until none of the workers listed in $old takes new connections (each has exited, or is titled
    "is shutting down": it closed its listening sockets and idle keepalive connections). `systemctl reload`
    returns when the master has the signal, before it starts new workers, so a client right after would be
    served by an old worker and cut off mid-connection. Old workers still taking connections after `seconds`
    mean the master did not load the new config (`nginx -t` passed, but e.g. a port failed to bind): fail."""
    taking = (
        'n=0; for p in $old; do case "$(ps -o args= -p "$p")" in '
        '"nginx: worker process is shutting down"*) ;; "nginx: worker process"*) n=$((n + 1));; '
        "esac; done; echo $n"
    )
    failed = shlex.quote(
        f"ollama-fleet: nginx still serves with its workers from before the reload after {seconds} s: "
        "the new configuration was not loaded (see journalctl -u nginx and /var/log/nginx/error.log)"
    )
    return (
        f'i=0; while [ "$({taking})" -gt 0 ]; do '
        f"if [ $i -ge {seconds * 10} ]; then echo {failed} >&2; exit 1; fi; "
        "sleep 0.1; i=$((i + 1)); done"
    )


def reload_script() -> str:
    """List the workers, reload nginx when its configuration passes `nginx -t` (a configuration that fails is
    never loaded: the running workers keep serving the old one), then wait for the workers to be replaced."""
    reload = "nginx -t -q && systemctl reload-or-restart nginx.service"
    return f"{LIST_WORKERS}; {reload} && {{ {workers_replaced_wait_script(RELOAD_WAIT_S)}; }}"


def in_flight_wait_script(seconds: int) -> str:
    """Wait for the workers listed in $old (those before a reload: they finish the requests they had, then
    exit) and say how long that took; after `seconds`, go on and say how many are still busy."""
    # A worker that exited but is not reaped yet (state Z) is done. No wait at all says 0 s, even when the
    # clock's second turned while the workers were listed.
    alive = 's=$(ps -o stat= -p "$p") && case "$s" in Z*) ;; *) n=$((n + 1));; esac'
    busy = f"n=0; for p in $old; do {alive}; done; echo $n"
    return (
        f"start=$(date +%s); waited=0; "
        f'while [ "$({busy})" -gt 0 ] && [ $(($(date +%s) - start)) -lt {seconds} ]; '
        "do sleep 0.5; waited=$(($(date +%s) - start)); done; left=$(" + busy + "); "
        'if [ "$left" -eq 0 ]; then echo "gateway: the requests in flight before the drain finished '
        'after ${waited} s"; else echo "gateway: ${left} old nginx worker(s) still busy after ${waited} s '
        '(gateway drain timeout); going on"; fi'
    )


def drain_reload_script(seconds: int) -> str:
    """Reload nginx (reload_script), then wait for the workers it had before to finish their requests
    (in_flight_wait_script)."""
    return f"{reload_script()} && {{ {in_flight_wait_script(seconds)}; }}"


@operation(is_idempotent=False)
def reloaded_and_drained(seconds: int) -> Generator[Any, None, None]:
    """
    Reload nginx when its configuration passes `nginx -t`, then wait (at most `seconds`) for the workers it
    had to finish the requests they were serving.

    + seconds: the longest wait before going on
    """
    yield shown_command(drain_reload_script(seconds))
