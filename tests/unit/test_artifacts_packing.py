"""Packing and caching of the Ollama release, on a stand-in binary (the real build is in tests/e2e)."""

from __future__ import annotations

import gzip
import io
import json
import re
import subprocess
import tarfile
from dataclasses import asdict, replace
from pathlib import Path

import pytest

from ollama_fleet.lab import artifacts
from ollama_fleet.localfiles import sha256_of

pytestmark = pytest.mark.unit

MTIME = 1_778_785_693


@pytest.fixture
def fake_binary(tmp_path: Path) -> Path:
    binary = tmp_path / "ollama"
    binary.write_text("#!/bin/sh\necho 'Warning: client version is 0.24.0' >&2\n")
    binary.chmod(0o755)
    return binary


@pytest.fixture
def recipe() -> artifacts.Recipe:
    return artifacts.Recipe(
        version="0.24.0",
        go_version="go1.26.8",
        miniaudio="1.71",
        goflags=artifacts.release_goflags("0.24.0"),
        cgo_cflags="-O3",
        cgo_cxxflags="-O3",
        pack_revision=artifacts.PACK_REVISION,
    )


def _members(tar_bytes: bytes) -> list[tarfile.TarInfo]:
    with tarfile.open(fileobj=io.BytesIO(tar_bytes)) as tar:
        return tar.getmembers()


def test_tar_has_release_layout_sorted_and_owned_by_root(fake_binary: Path) -> None:
    members = _members(artifacts.release_tar_bytes(fake_binary, MTIME))
    assert [m.name for m in members] == ["bin", "bin/ollama", "lib", "lib/ollama"]
    assert [m.isdir() for m in members] == [True, False, True, True]
    assert {(m.uid, m.gid, m.uname, m.gname, m.mtime, m.mode) for m in members} == {
        (0, 0, "root", "root", MTIME, 0o755)
    }


def test_tgz_and_zst_are_byte_identical_on_repack(fake_binary: Path, tmp_path: Path) -> None:
    first, second = tmp_path / "a", tmp_path / "b"
    for directory in (first, second):
        directory.mkdir()
        artifacts.pack_release(fake_binary, MTIME, directory)
    for name in (artifacts.TGZ_NAME, artifacts.ZST_NAME, artifacts.SUMS_NAME):
        assert (first / name).read_bytes() == (second / name).read_bytes(), name


def test_both_archives_hold_the_same_tar(fake_binary: Path, tmp_path: Path) -> None:
    artifacts.pack_release(fake_binary, MTIME, tmp_path)
    from_tgz = gzip.decompress((tmp_path / artifacts.TGZ_NAME).read_bytes())
    from_zst = subprocess.run(
        ["zstd", "-dc", str(tmp_path / artifacts.ZST_NAME)], capture_output=True, check=True
    ).stdout
    assert from_tgz == from_zst == artifacts.release_tar_bytes(fake_binary, MTIME)


def test_sha256sum_file_uses_release_format(fake_binary: Path, tmp_path: Path) -> None:
    artifacts.pack_release(fake_binary, MTIME, tmp_path)
    lines = (tmp_path / artifacts.SUMS_NAME).read_text().splitlines()
    assert [line.split("  ")[1] for line in lines] == [
        "./ollama-linux-amd64.tar.zst",
        "./ollama-linux-amd64.tgz",
    ]
    assert all(re.fullmatch(r"[0-9a-f]{64}  \./[\w.-]+", line) for line in lines)
    sums = artifacts.read_sums(tmp_path)
    assert sums[artifacts.TGZ_NAME] == sha256_of(tmp_path / artifacts.TGZ_NAME)


def test_recipe_key_follows_version_and_flags(recipe: artifacts.Recipe) -> None:
    assert recipe.key() == replace(recipe).key()
    assert recipe.key() != replace(recipe, version="0.23.0").key()
    assert recipe.key() != replace(recipe, cgo_cflags="-O2").key()
    assert any("version.Version=0.24.0" in flag for flag in recipe.goflags)


def _publish(directory: Path, binary: Path, recipe: artifacts.Recipe) -> None:
    directory.mkdir(parents=True)
    artifacts.pack_release(binary, MTIME, directory)
    (directory / artifacts.RECIPE_NAME).write_text(json.dumps(asdict(recipe)))


def test_complete_release_is_recognised_and_tampering_is_not(
    fake_binary: Path, recipe: artifacts.Recipe, tmp_path: Path
) -> None:
    build = tmp_path / "build"
    _publish(build, fake_binary, recipe)
    assert artifacts.release_is_complete(build, recipe)
    assert not artifacts.release_is_complete(build, replace(recipe, version="0.23.0"))
    (build / artifacts.TGZ_NAME).write_bytes(b"truncated")
    assert not artifacts.release_is_complete(build, recipe)
    assert not artifacts.release_is_complete(tmp_path / "absent", recipe)


def test_warm_cache_returns_the_version_link_without_building(
    fake_binary: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("OLLAMA_FLEET_CACHE", str(tmp_path))
    recipe = artifacts.recipe_for("0.24.0")
    builds = tmp_path / "artifacts" / "ollama" / "builds"
    _publish(builds / f"0.24.0-{recipe.key()}", fake_binary, recipe)
    _publish(builds / "0.24.0-stalerecipe", fake_binary, replace(recipe, go_version="go1.0"))
    (builds / ".0.24.0-stalerecipe.tmp-interrupted").mkdir()

    def no_build(recipe: artifacts.Recipe, dest: Path) -> None:
        raise AssertionError("a warm cache must not build")

    monkeypatch.setattr(artifacts, "build_release", no_build)
    link = artifacts.ensure_ollama_release("0.24.0")
    assert link == tmp_path / "artifacts" / "ollama" / "v0.24.0"
    assert link.is_symlink() and (link / artifacts.TGZ_NAME).is_file()
    assert [p.name for p in builds.iterdir()] == [f"0.24.0-{recipe.key()}"]


def test_missing_debian_header_names_the_apt_package(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setitem(artifacts.DEBIAN_HEADERS, "libstb-dev", tmp_path / "stb_image.h")
    assert any("apt-get install libstb-dev" in item for item in artifacts.missing_prerequisites())


def test_binary_version_reads_the_client_version(fake_binary: Path) -> None:
    assert artifacts.binary_version(fake_binary) == "0.24.0"
