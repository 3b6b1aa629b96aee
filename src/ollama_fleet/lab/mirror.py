"""The lab's LAN mirror: an apt repository of the .debs the deploy installs on hosts, plus Ollama release
artifacts, models and an Ollama registry (registry.py), served over HTTP by a small background server on the
controller's lab bridge address.

Each Debian release the lab boots has its own repository (/debian/ for the default release,
/debian-<release>/ for the others). The .debs are fetched once with ordinary apt, resolving against that
release's base rootfs' dpkg status (so only what the base lacks is downloaded), with an apt configuration of
its own that reads only Debian's archives.
"""

from __future__ import annotations

import argparse
import hashlib
import http.server
import json
import os
import posixpath
import select
import shutil
import socket
import subprocess
import sys
import time
import urllib.parse
from email.utils import formatdate
from pathlib import Path
from typing import BinaryIO, ClassVar

from ollama_fleet.lab import rootfs
from ollama_fleet.lab.paths import cache_dir
from ollama_fleet.lab.progress import apt_bytes
from ollama_fleet.lab.releases import DEFAULT_RELEASE, RELEASES
from ollama_fleet.lab.run import LabError, run, run_long
from ollama_fleet.localfiles import exclusive_lock

MIRROR_PACKAGES = (
    "nginx",
    "libnginx-mod-http-js",
    "ufw",
    "zstd",
    "mtail",  # metrics (deploys/metrics.py)
    "prometheus-node-exporter",  # the host's state (deploys/host_state.py)
    "prometheus",  # the monitoring role (deploys/monitoring.py)
    "prometheus-alertmanager",
    "prometheus-blackbox-exporter",
)
"""What the deploy installs on hosts (their dependencies come along). Add here when the deploy needs more."""

SERVER_MODULE = "ollama_fleet.lab.mirror"


def debian_sources(release: str = DEFAULT_RELEASE) -> str:
    """Debian's archives for `release`: the release with its point updates and its security updates."""
    signed = "deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg]"
    return (
        f"{signed} http://deb.debian.org/debian {release} {release}-updates main\n"
        f"{signed} http://deb.debian.org/debian-security {release}-security main\n"
    )


def debs_recipe_hash(release: str = DEFAULT_RELEASE) -> str:
    recipe = {
        "base": rootfs.recipe_hash(release),
        "packages": sorted(MIRROR_PACKAGES),
        "sources": debian_sources(release),
    }
    return hashlib.sha256(json.dumps(recipe, sort_keys=True).encode()).hexdigest()[:16]


def debian_route(release: str = DEFAULT_RELEASE) -> str:
    """The URL prefix of `release`'s repository: the default release keeps /debian/, as before releases."""
    return "/debian/" if release == DEFAULT_RELEASE else f"/debian-{release}/"


def routes() -> dict[str, Path]:
    """URL prefix -> directory. Directories that do not exist (yet) simply answer 404."""
    artifacts = cache_dir() / "artifacts"
    return {
        **{debian_route(release): cache_dir() / "debs" / debs_recipe_hash(release) for release in RELEASES},
        "/ollama/": artifacts / "ollama" / "pages",  # a release page: v<version>/<archive>, sha256sum.txt
        "/ollama-builds/": artifacts / "ollama",  # the lab's builds, both formats (by-hand installs)
        "/models/": artifacts / "models",
        "/v2/": artifacts / "registry",
    }


def _apt_dir(release: str) -> Path:
    return cache_dir() / "apt" / release


def _apt_options(base: Path, repo: Path, release: str) -> list[str]:
    apt_dir = _apt_dir(release)
    options = {
        "Dir::Etc::SourceList": str(apt_dir / "sources.list"),
        "Dir::Etc::SourceParts": str(apt_dir / "empty"),
        "Dir::Etc::Preferences": str(apt_dir / "empty" / "preferences"),
        "Dir::Etc::PreferencesParts": str(apt_dir / "empty"),
        "Dir::State::Lists": str(apt_dir / "lists"),
        "Dir::State::status": str(base / "var/lib/dpkg/status"),
        "Dir::State::extended_states": str(apt_dir / "extended_states"),
        "Dir::Cache": str(apt_dir / "cache"),
        "Dir::Cache::archives": str(repo),
        "APT::Architecture": "amd64",
        # Download-only never touches dpkg; skipping apt's system locks lets this run beside other apt users.
        "Debug::NoLocking": "true",
    }
    return [arg for key, value in options.items() for arg in ("-o", f"{key}={value}")]


def _prepare_apt_dirs(release: str) -> None:
    apt_dir = _apt_dir(release)
    for sub in ("empty", "lists/partial", "cache"):
        (apt_dir / sub).mkdir(parents=True, exist_ok=True)
    (apt_dir / "sources.list").write_text(debian_sources(release))


def ensure_debs(base: Path, release: str = DEFAULT_RELEASE) -> Path:
    """Return `release`'s apt repository for the current package list (`base` is that release's base
    rootfs), downloading and indexing it when missing."""
    final = routes()[debian_route(release)]
    if (final / "Release").is_file():
        return final
    with exclusive_lock(cache_dir() / "debs" / ".lock"):
        if (final / "Release").is_file():
            return final
        building = final.with_name(f".build-{final.name}-{os.getpid()}")
        shutil.rmtree(building, ignore_errors=True)
        (building / "partial").mkdir(parents=True)
        print(
            f"lab: downloading {release}'s mirror packages {', '.join(MIRROR_PACKAGES)} into {final}",
            flush=True,
        )
        _prepare_apt_dirs(release)
        options = _apt_options(base, building, release)
        run(["apt-get", "-q", *options, "update"], timeout=900)
        run_long(
            ["apt-get", "-q", "-y", *options, "install", "--download-only", *MIRROR_PACKAGES],
            f"downloading {release}'s mirror packages",
            count_bytes=apt_bytes,
            timeout=900,
        )
        shutil.rmtree(building / "partial")
        (building / "lock").unlink(missing_ok=True)
        index_repository(building)
        shutil.rmtree(final, ignore_errors=True)
        building.rename(final)
    return final


def index_repository(repo: Path) -> None:
    """Write Packages and Release for a flat repository (`deb [trusted=yes] URL ./`)."""
    for deb in repo.glob("*%3a*"):
        # The epoch's ':' is URL-quoted in the file name; apt would ask for a name that does not exist.
        deb.rename(deb.with_name(deb.name.replace("%3a", "_")))
    # Run from the repository so Filename: fields are relative to it.
    packages = subprocess.run(
        ["dpkg-scanpackages", "-m", "."], cwd=repo, capture_output=True, text=True, check=True
    ).stdout
    (repo / "Packages").write_text(packages)
    (repo / "Release").write_text(release_text(packages, formatdate(usegmt=True)))


def release_text(packages: str, date: str) -> str:
    data = packages.encode()
    return (
        "Origin: ollama-fleet-lab\nLabel: ollama-fleet-lab\nArchitectures: amd64\n"
        f"Date: {date}\nSHA256:\n {hashlib.sha256(data).hexdigest()} {len(data)} Packages\n"
    )


# --- the HTTP server (runs as `python -m ollama_fleet.lab.mirror`) ---


def resolve(url_path: str, table: dict[str, Path]) -> Path | None:
    """Map a request path to a file under one route, or None (404). Never escapes a route's directory."""
    path = urllib.parse.unquote(url_path.split("?", 1)[0].split("#", 1)[0])
    normalized = posixpath.normpath(path)
    if path.endswith("/"):
        normalized += "/"
    for prefix, directory in table.items():
        if normalized == prefix.rstrip("/"):
            normalized = prefix
        if normalized.startswith(prefix):
            parts = [part for part in normalized[len(prefix) :].split("/") if part not in ("", ".", "..")]
            return directory.joinpath(*parts)
    return None


class UnsatisfiableRange(ValueError):
    pass


def byte_span(range_header: str, size: int) -> tuple[int, int] | None:
    """The [start, end) a `Range: bytes=...` header asks of a `size`-byte file; None for a form we answer
    with the whole file (several ranges, other units: allowed, Range is only a hint).
    Raises UnsatisfiableRange when the range starts at or beyond the end (416)."""
    unit, _, spec = range_header.strip().partition("=")
    if unit.strip().lower() != "bytes" or "," in spec:
        return None
    first, dash, last = spec.strip().partition("-")
    if not dash or not (first + last).isdigit():
        return None
    if not first:  # bytes=-N: the last N bytes
        if int(last) == 0:
            raise UnsatisfiableRange(range_header)
        return max(size - int(last), 0), size
    start = int(first)
    end = min(int(last) + 1, size) if last else size
    if start >= size or end <= start:
        raise UnsatisfiableRange(range_header)
    return start, end


STALL_SUFFIX = ".stall-at"
"""Beside a file: the byte offset at which the mirror stops sending it and holds the connection silent."""
STALL_HOLD_S = 1800  # at most: the client gives up first (Ollama retries a silent part after 30 s)


def stall_offset(path: str) -> int | None:
    """Where the mirror stops sending the file at `path` (its STALL_SUFFIX marker), or None: never."""
    try:
        return int(Path(path + STALL_SUFFIX).read_text())
    except (OSError, ValueError):
        return None


def is_registry_blob(url_path: str) -> bool:
    parts = url_path.split("?", 1)[0].split("/")
    return len(parts) >= 4 and parts[1] == "v2" and parts[-2] == "blobs"


class MirrorHandler(http.server.SimpleHTTPRequestHandler):
    table: ClassVar[dict[str, Path]] = {}
    body_length: int | None = None  # bytes of the open file to send; None: to its end
    stall_after: int | None = None  # bytes of the body sent before the mirror goes silent; None: never

    def translate_path(self, path: str) -> str:
        resolved = resolve(path, self.table)
        return str(resolved) if resolved is not None else "/nonexistent/ollama-fleet-lab"

    def send_response(self, code: int, message: str | None = None) -> None:
        super().send_response(code, message)
        if code == 200 and is_registry_blob(self.path):
            # Ollama's pull takes a blob's download URL from the Location header of a 200 or 307 answer
            # (the public registry redirects to a CDN); here the blob is its own download URL.
            self.send_header("Location", self.path)

    def send_head(self) -> BinaryIO | None:
        self.body_length = None
        path = self.translate_path(self.path)
        self.stall_after = stall_offset(path)
        wanted = self.headers.get("Range")
        # With If-Range we may not know the client's copy is current: the whole file is always right.
        if wanted and not self.headers.get("If-Range") and os.path.isfile(path):
            return self._send_range(path, wanted)
        return super().send_head()

    def _send_range(self, path: str, wanted: str) -> BinaryIO | None:
        try:
            source = open(path, "rb")  # noqa: SIM115 (do_GET closes it after copyfile)
        except OSError:
            self.send_error(http.HTTPStatus.NOT_FOUND, "File not found")
            return None
        size = os.fstat(source.fileno()).st_size
        try:
            span = byte_span(wanted, size)
        except UnsatisfiableRange:
            source.close()
            self.send_response(http.HTTPStatus.REQUESTED_RANGE_NOT_SATISFIABLE)
            self.send_header("Content-Range", f"bytes */{size}")
            self.send_header("Content-Length", "0")
            self.end_headers()
            return None
        start, end = span or (0, size)
        self.send_response(http.HTTPStatus.PARTIAL_CONTENT if span else http.HTTPStatus.OK)
        self.send_header("Content-Type", self.guess_type(path))
        self.send_header("Content-Length", str(end - start))
        if span:
            self.send_header("Content-Range", f"bytes {start}-{end - 1}/{size}")
        self.end_headers()
        source.seek(start)
        self.body_length = end - start
        if self.stall_after is not None:
            self.stall_after = max(0, self.stall_after - start)
        return source

    def copyfile(self, source: BinaryIO, outputfile: BinaryIO) -> None:  # type: ignore[override]
        remaining = self.body_length
        if self.stall_after is not None:
            remaining = self.stall_after if remaining is None else min(remaining, self.stall_after)
        try:
            while remaining is None or remaining > 0:
                chunk = source.read(1 << 20 if remaining is None else min(1 << 20, remaining))
                if not chunk:
                    return
                outputfile.write(chunk)
                remaining = None if remaining is None else remaining - len(chunk)
            if self.stall_after is not None:
                self.stall()
        except (BrokenPipeError, ConnectionResetError):
            return  # the client had enough (Ollama reads no body from its Location probe)

    def stall(self) -> None:
        """Send nothing more, holding the connection open until the client closes it."""
        self.close_connection = True
        select.select([self.connection], [], [], STALL_HOLD_S)


def serve(bind: str, port: int, table: dict[str, Path]) -> None:
    handler = type("Handler", (MirrorHandler,), {"table": table})
    with http.server.ThreadingHTTPServer((bind, port), handler) as server:
        server.serve_forever()


def server_command(bind: str, port: int) -> list[str]:
    return [sys.executable, "-m", SERVER_MODULE, "--bind", bind, "--port", str(port)]


def start_server(bind: str, port: int, log: Path) -> int:
    """Start the server in its own session; return its PID once it accepts connections."""
    with log.open("wb") as out:
        proc = subprocess.Popen(
            server_command(bind, port),
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise LabError(f"mirror server exited with {proc.returncode}; see {log}")
        try:
            socket.create_connection((bind, port), timeout=0.5).close()
            return proc.pid
        except OSError:
            time.sleep(0.1)
    raise LabError(f"mirror server did not listen on {bind}:{port} within 15s; see {log}")


def is_server_process(pid: int, bind: str) -> bool:
    """Whether PID is our mirror server for this bind address (guards the kill against PID reuse)."""
    try:
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except (FileNotFoundError, ProcessLookupError):
        return False
    return SERVER_MODULE.encode() in argv and bind.encode() in argv


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Serve the lab mirror (started by `lab up`).")
    parser.add_argument("--bind", required=True)
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args(argv)
    serve(args.bind, args.port, routes())


if __name__ == "__main__":
    main()
