"""Ollama release artifacts and the tiny model, built here from source and cached.

Nothing can be downloaded from GitHub or ollama.com on these machines, so the Ollama release is built from the
Go module proxy. v0.24.0 is the last release whose ggml CPU backend and llama.cpp runner compile into the
binary with cgo; the module zip omits llama.cpp's vendored headers, which come from Debian packages and the
PyPI sdist of miniaudio. The result is packed like an official release directory (`ollama-linux-amd64.tgz`,
`ollama-linux-amd64.tar.zst`, `sha256sum.txt`) so the deploy installs it exactly as it would a download.

Cache layout under `<root>/artifacts/` (root: $OLLAMA_FLEET_CACHE or /var/cache/ollama-fleet):
  ollama/builds/<version>-<recipe key>/   one finished build, never modified once published
  ollama/v<version> -> builds/...         symlink swapped atomically when the recipe changes
  src/miniaudio-<v>/miniaudio/miniaudio.h the one header taken from the miniaudio sdist
  models/tiny-llama.gguf (+ .sha256)
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import gzip
import hashlib
import io
import json
import os
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
import urllib.parse
import urllib.request
from dataclasses import asdict, dataclass
from datetime import datetime
from pathlib import Path

from ollama_fleet.lab import tinymodel
from ollama_fleet.lab.progress import Progress, output_tail, run_with_progress
from ollama_fleet.localfiles import exclusive_lock, sha256_of
from ollama_fleet.settings.rules import release_key
from ollama_fleet.settings.sections import FIRST_ZST_RELEASE

DEFAULT_VERSION = "0.24.0"
MODULE = "github.com/ollama/ollama"
TGZ_NAME = "ollama-linux-amd64.tgz"
ZST_NAME = "ollama-linux-amd64.tar.zst"
SUMS_NAME = "sha256sum.txt"
RECIPE_NAME = ".build-recipe.json"

MINIAUDIO_VERSION = "1.71"
MINIAUDIO_SDIST_SHA256 = "ff51e2887bb673e2e757752b586b3dc924d59aa5fbcae9bbc45f4a111bd3262b"
# Headers the module zip drops from llama/llama.cpp/vendor, by the Debian package that provides them.
DEBIAN_HEADERS = {
    "nlohmann-json3-dev": Path("/usr/include/nlohmann/json.hpp"),
    "libstb-dev": Path("/usr/include/stb/stb_image.h"),
}
BUILD_TOOLS = {"go": "golang (Go >= 1.24 from go.dev)", "gcc": "gcc", "g++": "g++", "zstd": "zstd"}
ZSTD_LEVEL = 19

# Bump when the packing below changes in a way that changes the artifacts.
PACK_REVISION = 1


class BuildError(RuntimeError):
    """The Ollama release could not be built; the message says what to install or fix."""


def cache_root() -> Path:
    return Path(os.environ.get("OLLAMA_FLEET_CACHE", "/var/cache/ollama-fleet"))


def artifacts_dir() -> Path:
    return cache_root() / "artifacts"


def ensure_tiny_model(seed: int = 0) -> Path:
    """The tiny llama GGUF, cached at <root>/artifacts/models/tiny-llama.gguf."""
    return tinymodel.ensure_tiny_model(artifacts_dir() / "models", seed)


# ---------------------------------------------------------------------------------------------- recipe


@dataclass(frozen=True)
class Recipe:
    """Everything that decides the built bytes; its hash names the cached build."""

    version: str
    go_version: str
    miniaudio: str
    goflags: tuple[str, ...]
    cgo_cflags: str
    cgo_cxxflags: str
    pack_revision: int

    def key(self) -> str:
        blob = json.dumps(asdict(self), sort_keys=True).encode()
        return hashlib.sha256(blob).hexdigest()[:16]


def release_goflags(version: str) -> tuple[str, ...]:
    """The flags Ollama's release workflow and Dockerfile use for `go build`."""
    ldflags = f"-w -s -X={MODULE}/version.Version={version} -X={MODULE}/server.mode=release"
    return ("-trimpath", "-buildmode=pie", f"-ldflags={ldflags}")


def go_binary() -> str:
    return shutil.which("go") or "/usr/local/go/bin/go"


def recipe_for(version: str) -> Recipe:
    go_version = _run([go_binary(), "env", "GOVERSION"], env=_go_env({})).strip()
    return Recipe(
        version=version,
        go_version=go_version,
        miniaudio=MINIAUDIO_VERSION,
        goflags=release_goflags(version),
        # As the release workflow does; also part of Go's cache key, so keep them stable.
        cgo_cflags="-O3",
        cgo_cxxflags="-O3",
        pack_revision=PACK_REVISION,
    )


# ---------------------------------------------------------------------------------------------- helpers


def _run(cmd: list[str], env: dict[str, str] | None = None, cwd: Path | None = None) -> str:
    proc = subprocess.run(cmd, env=env, cwd=cwd, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        tail = output_tail(proc.stdout + proc.stderr)
        raise BuildError(f"{' '.join(cmd[:3])} ... failed (exit {proc.returncode}):\n{tail}")
    return proc.stdout


def missing_prerequisites() -> list[str]:
    """What must be installed before building, each with the package that provides it."""
    missing = [f"{tool} (install {pkg})" for tool, pkg in BUILD_TOOLS.items() if not _have_tool(tool)]
    missing += [
        f"{header} (apt-get install {pkg})" for pkg, header in DEBIAN_HEADERS.items() if not header.exists()
    ]
    return missing


def _have_tool(tool: str) -> bool:
    return Path(go_binary()).exists() if tool == "go" else shutil.which(tool) is not None


def ensure_miniaudio_header() -> Path:
    """Directory to put on the include path: it holds miniaudio/miniaudio.h from the pinned PyPI sdist."""
    include_dir = artifacts_dir() / "src" / f"miniaudio-{MINIAUDIO_VERSION}"
    header = include_dir / "miniaudio" / "miniaudio.h"
    if header.exists():
        return include_dir
    artifacts_dir().mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=artifacts_dir()) as tmp:
        sdist = _download_miniaudio_sdist(Path(tmp))
        staged = Path(tmp) / "include"
        member = f"miniaudio-{MINIAUDIO_VERSION}/miniaudio/miniaudio.h"
        with tarfile.open(sdist) as archive, archive.extractfile(member) as src:  # type: ignore[union-attr]
            (staged / "miniaudio").mkdir(parents=True)
            (staged / "miniaudio" / "miniaudio.h").write_bytes(src.read())
        include_dir.parent.mkdir(parents=True, exist_ok=True)
        with contextlib.suppress(FileExistsError, OSError):
            staged.rename(include_dir)  # a concurrent caller may have won; its header is identical
    if not header.exists():
        raise BuildError(f"could not place {header}")
    return include_dir


def _download_miniaudio_sdist(dest: Path) -> Path:
    """The sdist file from PyPI as it is (pip download would build its metadata, needing Python's headers)."""
    spec = f"miniaudio=={MINIAUDIO_VERSION}"
    sdist = dest / f"miniaudio-{MINIAUDIO_VERSION}.tar.gz"
    index = os.environ.get("OLLAMA_FLEET_PYPI_SIMPLE", "https://pypi.org/simple")
    page = f"{index}/miniaudio/"
    try:  # the simple index (PEP 503), as pip reads it
        with urllib.request.urlopen(page, timeout=60) as answer:
            html = answer.read().decode()
        match = re.search(rf'href="([^"#]*/{re.escape(sdist.name)})[#"]', html)
        if match is None:
            raise BuildError(f"{page} does not list {sdist.name}")
        url = urllib.parse.urljoin(page, match.group(1))
        with urllib.request.urlopen(url, timeout=300) as answer, sdist.open("wb") as out:
            shutil.copyfileobj(answer, out)
    except OSError as exc:
        raise BuildError(f"could not download the {spec} sdist from {page}: {exc}") from None
    if not sdist.exists() or sha256_of(sdist) != MINIAUDIO_SDIST_SHA256:
        raise BuildError(f"{spec} sdist missing or not the pinned sha256 {MINIAUDIO_SDIST_SHA256}")
    return sdist


# ---------------------------------------------------------------------------------------------- build


@dataclass(frozen=True)
class ModuleInfo:
    source_dir: Path
    commit_time: int


def download_module(version: str) -> ModuleInfo:
    """Fetch the module through the Go proxy; its commit time becomes the tarball's fixed mtime."""
    out = _run([go_binary(), "mod", "download", "-json", f"{MODULE}@v{version}"], env=_go_env({}))
    info = json.loads(out)
    if info.get("Error"):
        raise BuildError(f"go mod download {MODULE}@v{version}: {info['Error']}")
    stamp = datetime.fromisoformat(json.loads(Path(info["Info"]).read_text())["Time"].replace("Z", "+00:00"))
    return ModuleInfo(Path(info["Dir"]), int(stamp.timestamp()))


def _go_env(extra: dict[str, str]) -> dict[str, str]:
    env = dict(os.environ)
    env.pop("GOFLAGS", None)  # the recipe passes every flag explicitly
    env |= {"GOTOOLCHAIN": "local", "GO111MODULE": "on", **extra}
    return env


def compile_ollama(recipe: Recipe, include_dir: Path, gobin: Path) -> Path:
    """`go install` the release through the module proxy, as the team brief and Ollama's release do."""
    env = _go_env(
        {
            "CGO_ENABLED": "1",
            "GOBIN": str(gobin),
            "CGO_CPPFLAGS": f"-I{include_dir}",
            "CGO_CFLAGS": recipe.cgo_cflags,
            "CGO_CXXFLAGS": recipe.cgo_cxxflags,
        }
    )
    # -v (not part of the recipe): each package compiled is a line, so the progress shows steps.
    cmd = [go_binary(), "install", "-v", *recipe.goflags, f"{MODULE}@v{recipe.version}"]
    code, output = run_with_progress(
        cmd, Progress(f"compiling Ollama v{recipe.version} (cold: ~4 min)"), env=env
    )
    if code != 0:
        raise BuildError(f"go install ... failed (exit {code}):\n{output_tail(output)}")
    binary = gobin / "ollama"
    reported, expected = binary_version(binary), labelled_version(recipe)
    if reported != expected:
        raise BuildError(f"built binary reports version {reported!r}, expected {expected}")
    return binary


def labelled_version(recipe: Recipe) -> str:
    """The version the build reports: the ldflags' version.Version (the source's, unless relabelled)."""
    for flag in recipe.goflags:
        match = re.search(r"/version\.Version=(\S+)", flag)
        if match:
            return match.group(1)
    return recipe.version


def binary_version(binary: Path) -> str:
    """The client version `ollama --version` prints; it asks loopback port 1, where no server runs."""
    env = {"PATH": "/usr/bin:/bin", "HOME": str(binary.parent), "OLLAMA_HOST": "127.0.0.1:1"}
    out = subprocess.run([str(binary), "--version"], env=env, capture_output=True, text=True, check=False)
    for line in (out.stdout + out.stderr).splitlines():
        if "client version is" in line:
            return line.rsplit(maxsplit=1)[-1]
    raise BuildError(f"{binary} --version printed no client version: {(out.stdout + out.stderr).strip()!r}")


# ---------------------------------------------------------------------------------------------- packing


def release_tar_bytes(binary: Path, mtime: int) -> bytes:
    """The uncompressed tar: bin/ollama and lib/ollama/, sorted, owner root, fixed mtime.

    Official v0.24 amd64 archives also carry lib/ollama/libggml-*.so CPU variants and cuda/vulkan
    directories; here the CPU backend is compiled into bin/ollama, so lib/ollama is an empty directory.
    """
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.GNU_FORMAT) as tar:
        tar.addfile(_tar_entry("bin", tarfile.DIRTYPE, mtime))
        entry = _tar_entry("bin/ollama", tarfile.REGTYPE, mtime)
        entry.size = binary.stat().st_size
        with binary.open("rb") as data:
            tar.addfile(entry, data)
        tar.addfile(_tar_entry("lib", tarfile.DIRTYPE, mtime))
        tar.addfile(_tar_entry("lib/ollama", tarfile.DIRTYPE, mtime))
    return buffer.getvalue()


def _tar_entry(name: str, kind: bytes, mtime: int) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type, info.mode, info.mtime = kind, 0o755, mtime
    info.uid = info.gid = 0
    info.uname = info.gname = "root"
    return info


def write_tgz(tar_bytes: bytes, dest: Path) -> None:
    with dest.open("wb") as raw, gzip.GzipFile(filename="", mode="wb", fileobj=raw, mtime=0) as gz:
        gz.write(tar_bytes)


def write_tar_zst(tar_bytes: bytes, dest: Path, level: int = ZSTD_LEVEL) -> None:
    """zstd CLI (Ollama's own release uses it); one worker keeps the output independent of core count."""
    with dest.open("wb") as out:
        proc = subprocess.run(
            ["zstd", f"-{level}", "-T1", "-q", "-c"], input=tar_bytes, stdout=out, check=False
        )
    if proc.returncode != 0:
        raise BuildError(f"zstd failed with exit {proc.returncode}")


def write_sums(directory: Path, names: list[str]) -> None:
    """Same format as the release's `find . -type f | xargs sha256sum`: `<sha256>  ./<name>`."""
    lines = [f"{sha256_of(directory / name)}  ./{name}\n" for name in sorted(names)]
    (directory / SUMS_NAME).write_text("".join(lines))


def read_sums(directory: Path) -> dict[str, str]:
    sums: dict[str, str] = {}
    for line in (directory / SUMS_NAME).read_text().splitlines():
        digest, name = line.split(maxsplit=1)
        sums[name.removeprefix("./")] = digest
    return sums


def pack_release(binary: Path, mtime: int, directory: Path) -> None:
    tar_bytes = release_tar_bytes(binary, mtime)
    write_tgz(tar_bytes, directory / TGZ_NAME)
    write_tar_zst(tar_bytes, directory / ZST_NAME)
    write_sums(directory, [TGZ_NAME, ZST_NAME])


# ---------------------------------------------------------------------------------------------- cache


def release_is_complete(directory: Path, recipe: Recipe) -> bool:
    """A published build whose recipe matches and whose files still match sha256sum.txt."""
    try:
        if json.loads((directory / RECIPE_NAME).read_text()) != json.loads(json.dumps(asdict(recipe))):
            return False
        sums = read_sums(directory)
    except (OSError, ValueError):
        return False
    return set(sums) == {TGZ_NAME, ZST_NAME} and all(
        sha256_of(directory / name) == digest for name, digest in sums.items()
    )


def build_release(recipe: Recipe, dest: Path) -> None:
    """Build and pack into a temp dir beside `dest`, then rename it into place."""
    missing = missing_prerequisites()
    if missing:
        raise BuildError("cannot build Ollama, missing: " + "; ".join(missing))
    include_dir = ensure_miniaudio_header()
    module = download_module(recipe.version)
    staging = Path(tempfile.mkdtemp(prefix=f".{dest.name}.tmp-", dir=dest.parent))
    try:
        binary = compile_ollama(recipe, include_dir, staging / "gobin")
        pack_release(binary, module.commit_time, staging)
        shutil.rmtree(staging / "gobin")
        (staging / RECIPE_NAME).write_text(json.dumps(asdict(recipe), indent=2) + "\n")
        staging.chmod(0o755)
        if dest.exists():
            shutil.rmtree(dest)
        staging.rename(dest)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


def _point_symlink(link: Path, target: str) -> None:
    tmp_link = link.with_name(f".{link.name}.link-{os.getpid()}")
    tmp_link.unlink(missing_ok=True)
    tmp_link.symlink_to(target)
    os.replace(tmp_link, link)


def _prune_other_builds(builds: Path, version: str, keep: str) -> None:
    """Drop superseded builds and staging dirs left by an interrupted build (we hold the lock)."""
    for old in [*builds.glob(f"{version}-*"), *builds.glob(f".{version}-*.tmp-*")]:
        if old.name != keep:
            shutil.rmtree(old, ignore_errors=True)


def ensure_ollama_release(version: str = DEFAULT_VERSION) -> Path:
    """Directory holding the tgz, the tar.zst and sha256sum.txt of Ollama `version`, built if needed."""
    ollama_dir = artifacts_dir() / "ollama"
    builds = ollama_dir / "builds"
    builds.mkdir(parents=True, exist_ok=True)
    recipe = recipe_for(version)
    build_name = f"{version}-{recipe.key()}"
    link = ollama_dir / f"v{version}"
    with exclusive_lock(ollama_dir / ".lock"):
        if not release_is_complete(builds / build_name, recipe):
            build_release(recipe, builds / build_name)
        if not link.is_symlink() or os.readlink(link) != f"builds/{build_name}":
            _point_symlink(link, f"builds/{build_name}")
        _prune_other_builds(builds, version, build_name)
    if not (pages_dir() / f"v{version}" / page_archive(version)).is_file():
        publish_release(link, version)
    return link


def ensure_relabelled_release(label: str, base: str = DEFAULT_VERSION) -> Path:
    """The source of Ollama `base` built to report version `label`: a second release for upgrade tests.

    Only the link step differs from the `base` build (Go's build cache keeps the compiled packages), so
    it takes seconds once `base` was built on this machine. Its archives and sha256sum.txt are a release
    directory like `ensure_ollama_release`'s, for `ollama_source = "controller"`, and the lab mirror
    serves it as v`label` (so `ollama_version = label` is all a lab deploy needs).
    """
    ensure_ollama_release(base)  # fills the build cache
    recipe = dataclasses.replace(recipe_for(base), goflags=release_goflags(label))
    dest = artifacts_dir() / "ollama" / "relabelled" / f"{label}-from-{base}-{recipe.key()}"
    dest.parent.mkdir(parents=True, exist_ok=True)
    with exclusive_lock(artifacts_dir() / "ollama" / ".lock"):
        if not release_is_complete(dest, recipe):
            build_release(recipe, dest)
    publish_release(dest, label)
    return dest


def pages_dir() -> Path:
    """What the lab mirror serves as its release page: `v<version>/` holding what Ollama's page would."""
    return artifacts_dir() / "ollama" / "pages"


def page_archive(version: str) -> str:
    """The main archive a real release page of `version` has: .tar.zst from 0.14.0, .tgz before."""
    return ZST_NAME if release_key(version) >= FIRST_ZST_RELEASE else TGZ_NAME


def overlay_tar_bytes(overlay: str, mtime: int, size: int = 0) -> bytes:
    """A stand-in for an overlay archive (e.g. -rocm): only lib/ollama/<overlay>/, as the real one, holding a
    file that says what it stands for, padded with `size` incompressible bytes for a realistic download."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.GNU_FORMAT) as tar:
        for directory in ("lib", "lib/ollama", f"lib/ollama/{overlay}"):
            tar.addfile(_tar_entry(directory, tarfile.DIRTYPE, mtime))
        note = f"ollama-fleet lab stand-in for the {overlay} overlay\n".encode()
        entry = _tar_entry(f"lib/ollama/{overlay}/STAND-IN", tarfile.REGTYPE, mtime)
        entry.mode, entry.size = 0o644, len(note)
        tar.addfile(entry, io.BytesIO(note))
        if size:
            padding = hashlib.shake_256(overlay.encode()).digest(size)
            entry = _tar_entry(f"lib/ollama/{overlay}/padding.bin", tarfile.REGTYPE, mtime)
            entry.mode, entry.size = 0o644, size
            tar.addfile(entry, io.BytesIO(padding))
    return buffer.getvalue()


def publish_release(
    directory: Path,
    version: str,
    overlays: tuple[str, ...] = (),
    corrupt: tuple[str, ...] = (),
    overlay_size: int = 0,
) -> Path:
    """Publish a build on the lab mirror's release page as `<mirror>/ollama/v<version>/`, as Ollama's own
    page would hold it: the main archive in the format of that version, stand-in overlay archives
    (`ollama-linux-amd64-<overlay>.<format>`) and sha256sum.txt in the release's format. An archive named in
    `corrupt` is listed with a digest it does not have. Replaces the page of that version at once."""
    main = page_archive(version)
    suffix = main.removeprefix("ollama-linux-amd64.")
    pages = pages_dir()
    pages.mkdir(parents=True, exist_ok=True)
    page = Path(tempfile.mkdtemp(prefix=f".v{version}.", dir=pages))
    (page / main).symlink_to(os.path.relpath((directory / main).resolve(), page))
    names = [main]
    for overlay in overlays:
        name = f"ollama-linux-amd64-{overlay}.{suffix}"
        tar_bytes = overlay_tar_bytes(overlay, 0, overlay_size)
        if suffix == "tar.zst":
            write_tar_zst(tar_bytes, page / name, level=1)  # a stand-in: its bytes do not compress anyway
        else:
            write_tgz(tar_bytes, page / name)
        names.append(name)
    write_sums(page, names)
    if corrupt:  # listed with a digest they do not have
        sums = read_sums(page)
        listed = {name: ("0" * 64 if name in corrupt else digest) for name, digest in sums.items()}
        (page / SUMS_NAME).write_text("".join(f"{d}  ./{n}\n" for n, d in sorted(listed.items())))
    page.chmod(0o755)
    link = pages / f"v{version}"
    _point_symlink(link, page.name)
    for old in pages.glob(f".v{version}.*"):
        if old != page:
            shutil.rmtree(old, ignore_errors=True)
    return link


def unpublish_release(version: str) -> None:
    link = pages_dir() / f"v{version}"
    target = link.resolve() if link.is_symlink() else None
    link.unlink(missing_ok=True)
    if target is not None and target.parent == pages_dir().resolve():
        shutil.rmtree(target, ignore_errors=True)


# ---------------------------------------------------------------------------------------------- CLI


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m ollama_fleet.lab.artifacts",
        description="Build (or reuse) the Ollama release artifacts and the tiny model.",
    )
    parser.add_argument(
        "--version", default=DEFAULT_VERSION, help="Ollama release to build (default %(default)s)"
    )
    parser.add_argument("--json", action="store_true", help="print a JSON object instead of text")
    args = parser.parse_args(argv)
    try:
        release = ensure_ollama_release(args.version)
    except BuildError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    sums = read_sums(release)
    model = ensure_tiny_model()
    model_sha = sha256_of(model)
    if args.json:
        report = {"release_dir": str(release), "sha256": sums, "model": str(model), "model_sha256": model_sha}
        print(json.dumps(report, indent=2))
    else:
        print(f"ollama v{args.version}: {release}")
        for name, digest in sums.items():
            print(f"  {digest}  {name}")
        print(f"tiny model: {model}\n  {model_sha}  {model.name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
