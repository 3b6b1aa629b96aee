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

from pyinfra.api.command import FileUploadCommand
from pyinfra.api.operation import operation
from pyinfra.context import host
from pyinfra.facts.files import Link

from ollama_fleet.operations.secrets import FileDigest, Secret, file_matches, secret_file


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


def _site_is_live(paths: SitePaths, site_sha: str, api_keys: Secret, keys_group: str) -> bool:
    enabled = host.get_fact(Link, path=paths.enabled)
    return (
        file_matches(host.get_fact(FileDigest, path=paths.site), site_sha, "root", "root", 0o644)
        and file_matches(
            host.get_fact(FileDigest, path=paths.keys), api_keys.sha256, "root", keys_group, 0o640
        )
        and isinstance(enabled, dict)
        and enabled.get("link_target") == paths.site
        and host.get_fact(Link, path=paths.default_site) is None
    )


def _stage_and_test_script(paths: SitePaths, new: str, staging: str) -> str:
    """Put the new files into the staging copy, repoint /etc/nginx paths at it, run nginx -t on it."""
    ngx, s = paths.nginx_dir, staging
    q = shlex.quote
    rel_site = posixpath.relpath(paths.site, ngx)
    rel_keys = posixpath.relpath(paths.keys, ngx)
    rel_enabled = posixpath.relpath(paths.enabled, ngx)
    rel_default = posixpath.relpath(paths.default_site, ngx)
    return " && ".join(
        [
            f"mkdir -p {q(posixpath.dirname(f'{s}/{rel_site}'))} {q(posixpath.dirname(f'{s}/{rel_keys}'))}"
            f" {q(posixpath.dirname(f'{s}/{rel_enabled}'))}",
            f"cp {q(new)}/site.conf {q(f'{s}/{rel_site}')}",
            f"cp -p {q(new)}/api-keys.conf {q(f'{s}/{rel_keys}')}",
            f"rm -f {q(f'{s}/{rel_default}')}",
            f"ln -sfn {q(paths.site)} {q(f'{s}/{rel_enabled}')}",
            f"{{ grep -rlZ -F {q(ngx + '/')} {q(s)} | xargs -0r sed -i 's#{ngx}/#{s}/#g'; }}",
            f'find {q(s)} -type l | while IFS= read -r l; do t=$(readlink "$l"); case "$t" in {ngx}/*) '
            f'ln -sfn "{s}/${{t#{ngx}/}}" "$l";; esac; done',
            f"nginx -t -q -c {q(s + '/nginx.conf')}",
        ]
    )


def _go_live_script(paths: SitePaths, new: str) -> str:
    """Each file replaced by a rename (never half-written); the default site is disabled."""
    q = shlex.quote

    def swap(src: str, dest: str, mode: str) -> str:
        temp = posixpath.join(posixpath.dirname(dest), f".{posixpath.basename(dest)}.new")
        return f"cp -p {q(src)} {q(temp)} && chmod {mode} {q(temp)} && mv -f {q(temp)} {q(dest)}"

    enabled_temp = posixpath.join(posixpath.dirname(paths.enabled), f".{paths.name}.conf.new")
    return " && ".join(
        [
            "mkdir -p " + " ".join(q(posixpath.dirname(p)) for p in (paths.site, paths.enabled, paths.keys)),
            swap(f"{new}/api-keys.conf", paths.keys, "640"),
            swap(f"{new}/site.conf", paths.site, "644"),
            f"ln -sfn {q(paths.site)} {q(enabled_temp)} && mv -Tf {q(enabled_temp)} {q(paths.enabled)}",
            f"rm -f {q(paths.default_site)}",
        ]
    )


@operation()
def site_validated(
    site: str,
    api_keys: Secret,
    nginx_dir: str = "/etc/nginx",
    site_name: str = "ollama-fleet",
    work_dir: str = "/var/lib/ollama-fleet/nginx",
    keys_group: str = "www-data",
) -> Generator[Any, None, None]:
    """
    Install the nginx site and its API-keys include, only after `nginx -t` passed on a staging copy.

    + site: the rendered site text
    + api_keys: the rendered keys include (secret: compared by digest, never shown)
    + nginx_dir: the live nginx configuration directory
    + site_name: sites-available/<site_name>.conf and <nginx_dir>/<site_name>/api-keys.conf
    + work_dir: root-only directory for the upload and the staging copy (removed afterwards)
    + keys_group: group that may read the keys include
    """
    paths = SitePaths(nginx_dir, site_name)
    site_sha = hashlib.sha256(site.encode()).hexdigest()
    if _site_is_live(paths, site_sha, api_keys, keys_group):
        host.noop(f"nginx site {site_name} is live")
        return

    new, staging = f"{work_dir}/new", f"{work_dir}/staging"
    yield (
        f"rm -rf {shlex.quote(work_dir)} && mkdir -p -m 700 {shlex.quote(work_dir)} {shlex.quote(new)}"
        f" && cp -a {shlex.quote(nginx_dir)} {shlex.quote(staging)}"
    )
    yield FileUploadCommand(BytesIO(site.encode()), f"{new}/site.conf")
    yield from secret_file._inner(api_keys, f"{new}/api-keys.conf", "root", keys_group, 0o640)
    yield _stage_and_test_script(paths, new, staging)
    yield _go_live_script(paths, new)
    yield f"rm -rf {shlex.quote(work_dir)}"
