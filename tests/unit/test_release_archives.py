"""Installing from a real release page: the format that follows the version, overlays unpacked into one
release, downloads that resume and say what failed, the seed tried before the page, the controller's check
of the page, and the lab mirror publishing its build the way Ollama's page does. The shell scripts run for
real (curl, tar, sha256sum) against a loopback HTTP server that answers ranges like a release page."""

from __future__ import annotations

import hashlib
import http.server
import io
import subprocess
import tarfile
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any, ClassVar

import pytest

from ollama_fleet.deploys import release_check
from ollama_fleet.lab import artifacts, mirror
from ollama_fleet.operations import release
from ollama_fleet.settings import SettingsError, settings_for_host

pytestmark = pytest.mark.unit

MAIN = "ollama-linux-amd64.tar.zst"
ROCM = "ollama-linux-amd64-rocm.tar.zst"


def sh(script: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["sh", "-c", script], capture_output=True, text=True, check=False)


class Page:
    """A release page on loopback: files under `root`, each request's path and Range header recorded."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.requests: list[tuple[str, str | None]] = []
        page = self

        class Handler(mirror.MirrorHandler):
            table: ClassVar[dict[str, Path]] = {"/": root}

            def send_head(self) -> Any:
                page.requests.append((self.path, self.headers.get("Range")))
                return super().send_head()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def page(tmp_path: Path) -> Iterator[Page]:
    root = tmp_path / "page"
    root.mkdir()
    served = Page(root)
    yield served
    served.close()


def closed_port() -> int:
    server = http.server.HTTPServer(("127.0.0.1", 0), http.server.BaseHTTPRequestHandler)
    port = server.server_address[1]
    server.server_close()
    return int(port)


def tar_zst(path: Path, files: dict[str, bytes]) -> Path:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size, info.mode = len(data), 0o755
            tar.addfile(info, io.BytesIO(data))
    path.write_bytes(
        subprocess.run(["zstd", "-q", "-c"], input=buffer.getvalue(), capture_output=True).stdout
    )
    return path


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


# --- downloads ------------------------------------------------------------------------------------------


def test_download_fetches_the_archive_and_says_how_much(page: Page, tmp_path: Path) -> None:
    (page.root / MAIN).write_bytes(b"x" * 3_000_000)
    dest = tmp_path / MAIN
    result = sh(release.download_script(f"{page.url}/{MAIN}", str(dest)))
    assert result.returncode == 0, result.stderr
    assert dest.read_bytes() == b"x" * 3_000_000
    assert f"{MAIN}: 2 MB in " in result.stdout
    assert not list(tmp_path.glob("*.status")) and not list(tmp_path.glob("*.error"))


def test_a_missing_archive_fails_naming_the_url_and_the_status(page: Page, tmp_path: Path) -> None:
    dest = tmp_path / MAIN
    result = sh(release.download_script(f"{page.url}/v0.24.0/{MAIN}", str(dest)))
    assert result.returncode == 1
    assert f"ollama-fleet: downloading {page.url}/v0.24.0/{MAIN} failed: HTTP 404" in result.stderr
    assert not dest.exists()


def test_an_unreachable_page_fails_naming_the_url_and_why(tmp_path: Path) -> None:
    url = f"http://127.0.0.1:{closed_port()}/{MAIN}"
    result = sh(release.download_script(url, str(tmp_path / MAIN)))
    assert result.returncode == 1
    assert f"ollama-fleet: downloading {url} failed: curl: (7)" in result.stderr


def test_an_interrupted_download_is_resumed_not_started_again(page: Page, tmp_path: Path) -> None:
    data = bytes(range(256)) * 4096
    (page.root / MAIN).write_bytes(data)
    dest = tmp_path / MAIN
    dest.write_bytes(data[:400_000])
    result = sh(release.download_script(f"{page.url}/{MAIN}", str(dest)))
    assert result.returncode == 0, result.stderr
    assert dest.read_bytes() == data
    assert page.requests == [(f"/{MAIN}", "bytes=400000-")]


def test_a_download_that_had_finished_is_kept(page: Page, tmp_path: Path) -> None:
    (page.root / MAIN).write_bytes(b"whole")
    dest = tmp_path / MAIN
    dest.write_bytes(b"whole")
    result = sh(release.download_script(f"{page.url}/{MAIN}", str(dest)))
    assert result.returncode == 0, result.stderr
    assert dest.read_bytes() == b"whole"


def test_the_seed_is_tried_first_and_the_page_when_the_seed_has_none(page: Page, tmp_path: Path) -> None:
    (page.root / "page").mkdir()
    (page.root / "page" / MAIN).write_bytes(b"from the page")
    seed, own = f"{page.url}/seed", f"{page.url}/page"
    result = sh(release.fetch_script(MAIN, str(tmp_path), [seed, own]))
    assert result.returncode == 0, result.stderr
    assert (tmp_path / MAIN).read_bytes() == b"from the page"
    assert [path for path, _ in page.requests] == [f"/seed/{MAIN}", f"/page/{MAIN}"]
    (page.root / "seed").mkdir()
    (page.root / "seed" / MAIN).write_bytes(b"from the seed")
    (tmp_path / MAIN).unlink()
    assert sh(release.fetch_script(MAIN, str(tmp_path), [seed, own])).returncode == 0
    assert (tmp_path / MAIN).read_bytes() == b"from the seed"


# --- verify and unpack: the main archive and its overlays, as one release ---------------------------------


def staged_release(stage: Path, corrupt: str | None = None) -> list[Path]:
    stage.mkdir(parents=True)
    main = tar_zst(stage / MAIN, {"bin/ollama": b"#!/bin/sh\n", "lib/ollama/libggml-base.so": b"base"})
    rocm = tar_zst(stage / ROCM, {"lib/ollama/rocm/libggml-hip.so": b"hip"})
    sums = {p.name: ("0" * 64 if p.name == corrupt else sha(p)) for p in (main, rocm)}
    (stage / "sha256sum.txt").write_text("".join(f"{d}  ./{n}\n" for n, d in sums.items()))
    return [main, rocm]


def test_overlay_is_unpacked_into_the_same_release_and_recorded(tmp_path: Path) -> None:
    archives = staged_release(tmp_path / "stage")
    install = tmp_path / "opt"
    for archive in archives:
        assert sh(release.verify_script(str(archive), str(tmp_path / "stage/sha256sum.txt"))).returncode == 0
    assert sh(release.unpack_script([str(a) for a in archives], str(install), "0.24.0")).returncode == 0
    version = install / "0.24.0"
    assert (version / "lib/ollama/rocm/libggml-hip.so").read_bytes() == b"hip"
    assert (version / "lib/ollama/libggml-base.so").read_bytes() == b"base"
    recorded = release.parse_marker((version / release.MARKER).read_text())
    assert recorded == {MAIN: sha(archives[0]), ROCM: sha(archives[1])}
    assert release.variants(recorded) == {release.MAIN, "rocm"}


def test_a_version_unpacked_again_replaces_the_old_copy_whole(tmp_path: Path) -> None:
    archives = staged_release(tmp_path / "stage")
    install = tmp_path / "opt"
    (install / "0.24.0" / "lib/ollama/stale").mkdir(parents=True)
    assert sh(release.unpack_script([str(a) for a in archives], str(install), "0.24.0")).returncode == 0
    assert not (install / "0.24.0/lib/ollama/stale").exists()
    assert sorted(p.name for p in install.iterdir()) == ["0.24.0"]


def test_a_corrupt_overlay_is_refused_by_name_and_digest_and_removed(tmp_path: Path) -> None:
    main, rocm = staged_release(tmp_path / "stage", corrupt=ROCM)
    sums, digest = str(tmp_path / "stage/sha256sum.txt"), sha(rocm)
    assert sh(release.verify_script(str(main), sums)).returncode == 0
    result = sh(release.verify_script(str(rocm), sums))
    assert result.returncode == 1
    assert f"checksum mismatch for {ROCM}: expected {'0' * 64} (sha256sum.txt), got {digest}" in result.stderr
    assert not (tmp_path / "stage").exists()  # nothing left that a later run could unpack


def test_an_old_marker_is_the_main_archive_and_pins_are_checked_per_archive() -> None:
    assert release.parse_marker("a" * 64) == {release.MAIN: "a" * 64}
    assert release.variant("ollama-linux-arm64-jetpack6.tar.zst") == "jetpack6"
    assert release.variant("ollama-linux-amd64.tgz") == release.MAIN
    installed = {MAIN: "a" * 64, ROCM: "b" * 64}
    assert release.pin_mismatches(installed, {MAIN: "a" * 64, ROCM: "b" * 64}) == []
    assert release.pin_mismatches(installed, {ROCM: "c" * 64}) == [
        f"{ROCM} had sha256 {'b' * 64}, pinned {'c' * 64}"
    ]
    assert release.pin_mismatches({release.MAIN: "a" * 64}, {MAIN: "c" * 64}) == [
        f"{MAIN} had sha256 {'a' * 64}, pinned {'c' * 64}"
    ]


# --- settings -------------------------------------------------------------------------------------------

BASE = {
    "firewall_client_subnets": ["10.0.0.0/24"],
    "firewall_admin_subnets": ["10.0.0.0/24"],
    "auth_enabled": False,
}


def ollama(tmp_path: Path, **data: Any) -> Any:
    return settings_for_host("gpu1.lan", {**BASE, "tls_ca_dir": str(tmp_path / "pki"), **data}, {}).ollama


@pytest.mark.parametrize(
    ("version", "name"),
    [
        ("0.13.5", "ollama-linux-amd64.tgz"),
        ("0.14.0-rc1", "ollama-linux-amd64.tar.zst"),
        ("0.14.0", "ollama-linux-amd64.tar.zst"),
        ("0.24.0", "ollama-linux-amd64.tar.zst"),
    ],
)
def test_the_archive_format_follows_the_version(tmp_path: Path, version: str, name: str) -> None:
    assert ollama(tmp_path, ollama_version=version).archive_name == name


def test_a_set_format_and_overlays_name_the_archives(tmp_path: Path) -> None:
    o = ollama(tmp_path, ollama_archive_format="tgz", ollama_overlays=["rocm"])
    assert o.archive_names == ["ollama-linux-amd64.tgz", "ollama-linux-amd64-rocm.tgz"]
    o = ollama(tmp_path, ollama_arch="arm64", ollama_overlays=["jetpack6"])
    assert o.archive_names == ["ollama-linux-arm64.tar.zst", "ollama-linux-arm64-jetpack6.tar.zst"]
    pinned = ollama(tmp_path, ollama_overlays=["rocm"], ollama_sha256={f"0.24.0/{ROCM}": "c" * 64})
    assert pinned.pins == {ROCM: "c" * 64}


@pytest.mark.parametrize(
    ("data", "fragment"),
    [
        ({"ollama_overlays": ["rocm"], "ollama_arch": "arm64"}, "'rocm' is released for amd64 only"),
        ({"ollama_overlays": ["jetpack5"]}, "'jetpack5' is released for arm64 only"),
        ({"ollama_overlays": ["cuda"]}, "ollama_overlays"),
        ({"ollama_overlays": ["rocm", "rocm"]}, "lists an overlay twice"),
        ({"ollama_archive_format": "zip"}, "ollama_archive_format"),
    ],
)
def test_bad_overlays_are_refused_naming_host_and_key(
    tmp_path: Path, data: dict[str, Any], fragment: str
) -> None:
    with pytest.raises(SettingsError, match=r"gpu1\.lan") as error:
        ollama(tmp_path, **data)
    assert fragment in str(error.value)


# --- the controller's check of the release page ------------------------------------------------------------


def fleet(tmp_path: Path, url: str, version: str = "0.24.0") -> dict[str, Any]:
    data = {**BASE, "tls_ca_dir": str(tmp_path / "pki"), "ollama_release_url": url, "ollama_version": version}
    return {name: settings_for_host(name, data, {}) for name in ("h1", "h2")}


def test_a_release_the_page_does_not_have_stops_the_run_naming_hosts_url_and_fix(
    page: Page, tmp_path: Path
) -> None:
    (page.root / "v0.24.0").mkdir()
    (page.root / "v0.24.0" / MAIN).write_bytes(b"zst")
    assert release_check.release_problems(fleet(tmp_path, page.url)) == []
    problems = release_check.release_problems(fleet(tmp_path, page.url, version="0.24.1"))
    assert problems == [
        f"hosts h1, h2: {page.url}/v0.24.1/{MAIN} answers 404: the release page has no such archive; check "
        "ollama_version '0.24.1', ollama_arch, ollama_overlays and ollama_archive_format 'auto' (auto: "
        ".tar.zst from 0.14.0, .tgz before); or set ollama_check_url = False if the controller sees another "
        "page than the hosts"
    ]


def test_a_page_the_controller_cannot_reach_is_left_to_the_hosts(tmp_path: Path) -> None:
    assert release_check.release_problems(fleet(tmp_path, f"http://127.0.0.1:{closed_port()}")) == []


# --- the lab mirror is a release page ----------------------------------------------------------------------


@pytest.fixture
def build(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("OLLAMA_FLEET_CACHE", str(tmp_path / "cache"))
    directory = tmp_path / "build"
    directory.mkdir()
    binary = tmp_path / "ollama"
    binary.write_text("#!/bin/sh\n")
    artifacts.pack_release(binary, 1_778_785_693, directory)
    return directory


def test_the_lab_page_has_what_the_real_page_of_that_version_has(build: Path) -> None:
    page = artifacts.publish_release(build, "0.24.0")
    assert sorted(p.name for p in page.iterdir()) == [MAIN, "sha256sum.txt"]
    assert (page / "sha256sum.txt").read_text() == f"{sha(build / MAIN)}  ./{MAIN}\n"
    old = artifacts.publish_release(build, "0.13.5")
    assert sorted(p.name for p in old.iterdir()) == ["ollama-linux-amd64.tgz", "sha256sum.txt"]
    assert mirror.routes()["/ollama/"] / "v0.24.0" == page


def test_the_lab_page_publishes_overlays_and_can_list_one_wrongly(build: Path) -> None:
    page = artifacts.publish_release(build, "0.24.1", overlays=("rocm",), corrupt=(ROCM,))
    sums = artifacts.read_sums(page)
    assert sums == {MAIN: sha(page / MAIN), ROCM: "0" * 64}
    listing = subprocess.run(
        ["tar", "--zstd", "-tf", str(page / ROCM)], capture_output=True, text=True
    ).stdout
    assert listing.split() == ["lib/", "lib/ollama/", "lib/ollama/rocm/", "lib/ollama/rocm/STAND-IN"]
    artifacts.unpublish_release("0.24.1")
    assert not page.exists()


def test_a_controller_dir_without_the_release_stops_the_run_naming_what_is_missing(tmp_path: Path) -> None:
    release = tmp_path / "release"
    release.mkdir()
    (release / "ollama-linux-amd64.tgz").write_bytes(b"an old format")
    data = {**BASE, "tls_ca_dir": str(tmp_path / "pki"), "ollama_source": "controller"}
    fleet = {"h1": settings_for_host("h1", {**data, "ollama_controller_dir": str(release)}, {})}
    assert release_check.missing_uploads(fleet) == [
        f"host 'h1': ollama_controller_dir {str(release)!r} has no ollama-linux-amd64.tar.zst, sha256sum.txt "
        "for ollama_version '0.24.0'; put the release's files there (or check ollama_version and "
        "ollama_archive_format)"
    ]
    (release / MAIN).write_bytes(b"zst")
    (release / "sha256sum.txt").write_text("")
    assert release_check.missing_uploads(fleet) == []
