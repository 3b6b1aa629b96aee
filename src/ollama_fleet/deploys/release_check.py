"""The release's archives asked for from the controller before any host changes: a version or URL that the
release page does not have (a 404, e.g. a `.tgz` of a release that publishes `.tar.zst` only) stops the
run naming the hosts, the URL and the fix. A controller that cannot reach the page cannot tell: the hosts
then fetch as usual, and one that gets an error fails naming the URL and the status, with nothing switched.
"""

from __future__ import annotations

import sys
from collections import defaultdict

import httpx

from ollama_fleet.operations import release
from ollama_fleet.settings import FleetSettings

TIMEOUT = httpx.Timeout(10.0, connect=3.0)
MISSING = (404, 410)


def archive_urls(settings: dict[str, FleetSettings]) -> dict[str, list[str]]:
    """URL -> the hosts that fetch it from the release page or mirror (a seed's hosts: the seed's)."""
    wanted: dict[str, list[str]] = defaultdict(list)
    for host, s in settings.items():
        o = s.ollama
        if not s.serves_api or o.source == "controller" or not o.check_url:
            continue
        for name in o.archive_names:
            wanted[f"{o.download_base}/{name}"].append(host)
    return wanted


def answer(client: httpx.Client, url: str) -> int | None:
    """The status the page gives a HEAD for `url` (after redirects), or None when it cannot be reached."""
    try:
        return client.head(url).status_code
    except httpx.HTTPError:
        return None


def missing_uploads(settings: dict[str, FleetSettings]) -> list[str]:
    """ollama_source "controller": the archives (and sha256sum.txt, unless every one is pinned) must be in
    ollama_controller_dir on this controller."""
    problems = []
    for host, s in sorted(settings.items()):
        o = s.ollama
        if not s.serves_api or o.source != "controller" or o.controller_dir is None:
            continue
        wanted = release.files_to_fetch(o.archive_names, o.pins)
        missing = [name for name in wanted if not (o.controller_dir / name).is_file()]
        if missing:
            problems.append(
                f"host {host!r}: ollama_controller_dir {str(o.controller_dir)!r} has no {', '.join(missing)} "
                f"for ollama_version {o.version!r}; put the release's files there (or check "
                "ollama_version and ollama_archive_format)"
            )
    return problems


def release_problems(settings: dict[str, FleetSettings]) -> list[str]:
    problems = missing_uploads(settings)
    if "--dry" in sys.argv:
        return problems  # a dry run sends no traffic
    with httpx.Client(timeout=TIMEOUT, trust_env=True, follow_redirects=True) as client:
        for url, hosts in sorted(archive_urls(settings).items()):
            status = answer(client, url)
            if status not in MISSING:
                continue
            s = settings[hosts[0]]
            problems.append(
                f"hosts {', '.join(sorted(hosts))}: {url} answers {status}: the release page has no such "
                f"archive; check ollama_version {s.ollama.version!r}, ollama_arch, ollama_overlays and "
                f"ollama_archive_format {s.ollama.archive_format!r} (auto: .tar.zst from 0.14.0, .tgz "
                "before); or set ollama_check_url = False if the controller sees another page than the hosts"
            )
    return problems
