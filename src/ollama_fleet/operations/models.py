"""Ollama models through the local API: GGUF files from the controller, custom Modelfiles, pulls, prune.

Each model we create records the sha256 of what defines it (the GGUF bytes, or the Modelfile text) in
/var/lib/ollama-fleet/models/<name>.sha256, so a model is re-created only when its definition changed,
and the staged GGUF is removed after `ollama create` (the blob then lives in Ollama's store only once).
Every API call goes from the host to its own loopback address.
"""

from __future__ import annotations

import base64
import hashlib
import json
import posixpath
import shlex
from collections.abc import Generator
from functools import lru_cache
from io import BytesIO
from pathlib import Path
from typing import Any
from urllib.parse import quote

from pyinfra import logger
from pyinfra.api.command import FileUploadCommand
from pyinfra.api.facts import FactBase
from pyinfra.api.operation import operation
from pyinfra.context import host

from ollama_fleet.localfiles import sha256_of
from ollama_fleet.operations.shell import fail_command, shown_command

RECORDS_DIR = "/var/lib/ollama-fleet/models"
STAGING_DIR = "/var/lib/ollama-fleet/models/staging"


class OllamaModels(FactBase[dict[str, str] | None]):
    """Model name -> digest from `GET /api/tags`; None when the API does not answer."""

    def command(self, api: str) -> str:
        return f"curl -fsS --max-time 10 {shlex.quote(api + '/api/tags')} || echo unreachable"

    def process(self, output: list[str]) -> dict[str, str] | None:
        text = "\n".join(output).strip()
        if text.endswith("unreachable"):
            return None
        return {model["name"]: model.get("digest", "") for model in json.loads(text).get("models", [])}


MANIFEST_ACCEPT = "application/vnd.docker.distribution.manifest.v2+json"


class ManifestDigest(FactBase[str | None]):
    """The digest of the manifest a registry serves at `url` (sha256 of its bytes, as /api/tags shows a
    pulled model's digest), fetched by the host; None when it cannot get it."""

    def command(self, url: str) -> str:
        accept = shlex.quote(f"Accept: {MANIFEST_ACCEPT}")
        get = f"curl -fsS --connect-timeout 5 --max-time 20 -H {accept} {shlex.quote(url)}"
        return f'if body=$({get} | base64 -w0); then echo "manifest $body"; else echo unreachable; fi'

    def process(self, output: list[str]) -> str | None:
        line = " ".join(output).strip()
        if not line.startswith("manifest ") or line == "manifest":
            return None
        return hashlib.sha256(base64.b64decode(line.removeprefix("manifest "))).hexdigest()


class ModelRecords(FactBase[dict[str, str]]):
    """Record file name -> the sha256 of the definition a model was last created from."""

    @staticmethod
    def default() -> dict[str, str]:
        return {}

    def command(self, records_dir: str) -> str:
        d = shlex.quote(records_dir)
        return f'for f in {d}/*.sha256; do [ -f "$f" ] && echo "${{f##*/}} $(cat "$f")"; done; true'

    def process(self, output: list[str]) -> dict[str, str]:
        pairs = (line.split(" ", 1) for line in output if " " in line)
        return {name.removesuffix(".sha256"): digest.strip() for name, digest in pairs}


def record_name(model: str) -> str:
    """A file-safe name for a model name like `library/llama3.2:1b`."""
    return quote(model, safe="")


@lru_cache(maxsize=64)
def _file_sha256(path: Path, size: int, mtime_ns: int) -> str:
    return sha256_of(path)  # size and mtime only key the cache


def file_sha256(path: Path) -> str:
    """sha256 of a controller file, computed once per content version (GGUFs can be many GB)."""
    stat = path.stat()
    return _file_sha256(path.resolve(), stat.st_size, stat.st_mtime_ns)


def _api_down(api: str) -> str:
    return fail_command(f"the Ollama API at {api} does not answer; is the ollama service running?")


def _is_current(name: str, digest: str, models: dict[str, str], records_dir: str) -> bool:
    records = host.get_fact(ModelRecords, records_dir=records_dir)
    return name in models and records.get(record_name(name)) == digest


def _staging_if_stale(model: str, digest: str, api: str, records_dir: str) -> Generator[Any, None, str]:
    """Yield the commands that make a fresh staging dir when `model` must be (re)created; return its path,
    or "" when the model is current (or the API is down, which fails the operation)."""
    models = host.get_fact(OllamaModels, api=api)
    if models is None:
        yield _api_down(api)
        return ""
    if _is_current(model, digest, models, records_dir):
        host.noop(f"model {model} is current")
        return ""
    staging = posixpath.join(STAGING_DIR, record_name(model))
    yield f"rm -rf {shlex.quote(staging)} && mkdir -p -m 700 {shlex.quote(staging)}"
    return staging


def _create_commands(
    name: str, digest: str, modelfile: str, api_host: str, records_dir: str, staging: str
) -> Generator[Any, None, None]:
    q = shlex.quote
    record = posixpath.join(records_dir, f"{record_name(name)}.sha256")
    yield FileUploadCommand(BytesIO(modelfile.encode()), posixpath.join(staging, "Modelfile"))
    # The CLI parses the Modelfile (the API takes structured fields only) and uploads local blobs.
    yield f"cd {q(staging)} && OLLAMA_HOST={q(api_host)} ollama create {q(name)} -f Modelfile"
    yield f"echo {q(digest)} > {q(record)} && rm -rf {q(staging)}"


@operation()
def gguf_model(
    model: str, gguf: Path, api: str, api_host: str, records_dir: str = RECORDS_DIR
) -> Generator[Any, None, None]:
    """
    Create `model` from a GGUF file on the controller, unless it exists from the same bytes.

    + model: the model name, tagged (tiny:latest)
    + gguf: the GGUF file on the controller
    + api: base URL of the local API (http://127.0.0.1:11434)
    + api_host: host:port for the ollama CLI (OLLAMA_HOST)
    + records_dir: where the definition digests are kept
    """
    digest = file_sha256(gguf)
    staging = yield from _staging_if_stale(model, digest, api, records_dir)
    if staging:
        yield FileUploadCommand(str(gguf), posixpath.join(staging, "model.gguf"))
        yield from _create_commands(model, digest, "FROM ./model.gguf\n", api_host, records_dir, staging)


def modelfile_digest(modelfile: str, base_digest: str | None = None) -> str:
    """What a custom model is built from: its Modelfile, and its base's bytes when the base is ours."""
    return hashlib.sha256((modelfile + "\n" + (base_digest or "")).encode()).hexdigest()


@operation()
def custom_model(
    model: str, modelfile: str, digest: str, api: str, api_host: str, records_dir: str = RECORDS_DIR
) -> Generator[Any, None, None]:
    """
    Create `model` from a Modelfile, re-creating it only when `digest` changed.

    + model: the model name, tagged
    + modelfile: the rendered Modelfile
    + digest: modelfile_digest(...) of its definition
    + api, api_host, records_dir: as for gguf_model
    """
    staging = yield from _staging_if_stale(model, digest, api, records_dir)
    if staging:
        yield from _create_commands(model, digest, modelfile, api_host, records_dir, staging)


# mawk (Debian's awk) reads a pipe in blocks unless interactive: progress would come in bursts.
LINE_AWK = "$(command -v mawk >/dev/null && echo mawk -W interactive || echo awk)"
# now(): POSIX awk's clock, srand() returning the last seed (the time of day): seconds in mawk 1.3.4-20200120
# (Debian 12), nanoseconds in 1.3.4-20250131 (Debian 13); whatever the unit, scaled down to seconds.
PULL_PROGRESS_PROGRAM = r"""
function now(    t) { srand(); t = srand(); while (t >= 100000000000) t /= 1000; return int(t) }
function mb(n) { return sprintf("%.1f", n / 1048576) }
function done_so_far() {
    return last == "" ? "" : sprintf(" (%s: %s of %s MB done)", last, mb(best[last]), mb(size[last]))
}
/"error"/ {
    print; bad = 1
    if (match($0, /"error":"[^"]*"/)) why = substr($0, RSTART + 9, RLENGTH - 10)
    next
}
{ t = 0; c = 0 }
match($0, /"status":"[^"]*"/) { s = substr($0, RSTART + 10, RLENGTH - 11) }
match($0, /"total":[0-9]+/) { t = substr($0, RSTART + 8, RLENGTH - 8) + 0 }
match($0, /"completed":[0-9]+/) { c = substr($0, RSTART + 12, RLENGTH - 12) + 0 }
!(s in t0) { t0[s] = now(); c0[s] = c; best[s] = c; moved = t0[s] }
c > best[s] { best[s] = c; moved = now() }
t > 0 { last = s; size[s] = t }
{
    p = (t > 0) ? int(c * 10 / t) * 10 : -1
    if (s != shown || p != shownp) {
        dt = now() - t0[s]; r = (dt > 0) ? sprintf(", %.1f MB/s", (c - c0[s]) / 1048576 / dt) : ""
        if (p >= 0) printf "%s %d%% (%s of %s MB%s)\n", s, p, mb(c), mb(t), r; else print s
        shown = s; shownp = p
    }
}
t > 0 && best[s] < t && now() - moved >= stall {
    why = sprintf("%s of %s MB done (%s), no byte more for %d s", mb(best[s]), mb(t), s, now() - moved)
    printf "ollama-fleet: pulling %s stalled: %s (models_pull_stall_timeout)\n", model, why > "/dev/stderr"
    stalled = 1; exit 1
}
s == "success" { ok = 1 }
END {
    if (stalled) exit 1
    if (ok && !bad) exit 0
    if (why == "") why = "the progress stream ended without success"
    printf "ollama-fleet: pulling %s failed: %s%s\n", model, why, done_so_far() > "/dev/stderr"
    exit 1
}
"""
"""Reads /api/pull's NDJSON: one line per status and per 10% of a layer, with the MB done and, once a second
has passed, the layer's rate since its first line. Fails, naming the model and the bytes done, on an error
line, without a final success, or when a layer's completed bytes stop growing for `stall` seconds: Ollama
sends a progress line every 60 ms and retries a stalled part forever, so the stream never goes quiet."""


def pull_progress_awk(model: str, stall_seconds: int) -> str:
    """The progress reader for a pull of `model` (PULL_PROGRESS_PROGRAM)."""
    q = shlex.quote
    return f"{LINE_AWK} -v model={q(model)} -v stall={int(stall_seconds)} {q(PULL_PROGRESS_PROGRAM)}"


SILENT_PULL_LIMIT_S = 600
"""A pull stream with no byte at all for this long fails (curl): Ollama is silent only while it checks a
blob's sha256, which takes well under a minute per GB."""


def pull_command(api: str, model: str, insecure: bool = False, stall_seconds: int = 600) -> str:
    """POST /api/pull with progress lines (pull_progress_awk); `insecure` lets Ollama use plain http; the
    pull fails once its bytes stop growing for `stall_seconds`."""
    request: dict[str, object] = {"model": model, "stream": True}
    if insecure:
        request["insecure"] = True
    body = shlex.quote(json.dumps(request))
    silent = f"--speed-limit 1 --speed-time {max(SILENT_PULL_LIMIT_S, stall_seconds)}"
    return f"curl -sSN --fail {silent} {shlex.quote(api + '/api/pull')} -d {body} | " + pull_progress_awk(
        model, stall_seconds
    )


def _hex(digest: str | None) -> str | None:
    return digest.removeprefix("sha256:") if digest else None


def _pull_reason(have: str | None, pin: str | None, registry: str | None) -> str | None:
    """Why `model` must be pulled (None: what the host has is what it must have). `have`: the digest the
    host lists it with; `registry`: the digest its source serves now (None: not asked, or unreachable)."""
    if have is None:
        return "missing"
    if pin:
        return None if have == _hex(pin) else f"it is sha256:{have}, pinned to {pin}"
    if registry and registry != have:
        return f"it is sha256:{have[:12]}, its source now serves sha256:{registry[:12]}"
    return None


def _verified_pin(model: str, pin: str | None, manifest: str) -> list[str]:
    """After a pull: the manifest on disk must have the pinned digest, else fail naming both."""
    if not pin:
        return []
    listing = f"{_hex(pin)}  {manifest}"  # sha256sum's format: two spaces
    check = f"echo {shlex.quote(listing)} | sha256sum -c --quiet >/dev/null 2>&1"
    return [f"{check} || {{ {fail_command(f'{model} was pulled but is not the pinned {pin}')}; }}"]


@operation()
def pulled_model(
    model: str,
    api: str,
    insecure: bool = False,
    pin: str | None = None,
    refresh: bool = False,
    source_manifest_url: str | None = None,
    manifest_file: str = "",
    stall_seconds: int = 600,
) -> Generator[Any, None, None]:
    """
    Pull `model` from the registry the host can reach, showing progress, unless the host has it as it must.

    + model: the model name as /api/tags lists it (settings.listed_name)
    + api: base URL of the local API
    + insecure: the registry serves plain http
    + pin: the manifest digest it must have (sha256:...); a present model with another digest is pulled again
    + refresh: pull a present, unpinned model again when its source serves another digest (else warn)
    + source_manifest_url: where the source serves the model's manifest (None: do not ask)
    + manifest_file: the model's manifest in the models directory, checked against the pin after a pull
    + stall_seconds: the pull fails when its bytes done stop growing this long (models_pull_stall_timeout)
    """
    models = host.get_fact(OllamaModels, api=api)
    if models is None:
        yield _api_down(api)
        return
    have = models.get(model)
    asked = source_manifest_url is not None and have is not None and not pin
    serving = host.get_fact(ManifestDigest, url=source_manifest_url) if asked else None
    reason = _pull_reason(have, pin, serving)
    if reason is None:
        host.noop(f"model {model} is present" + (f" at {pin}" if pin else ""))
        return
    if have is not None and not pin and not refresh:
        logger.warning(
            f"{host.print_prefix}model {model}: {reason}; set models_refresh to update it, or pin it"
        )
        host.noop(f"model {model} is present (not refreshed)")
        return
    yield shown_command(pull_command(api, model, insecure, stall_seconds))
    yield from _verified_pin(model, pin, manifest_file)


def renamed_command(api: str, source: str, destination: str) -> str:
    """Copy `source` to `destination` (the manifest only: blobs are shared), then delete `source`."""
    copy = shlex.quote(json.dumps({"source": source, "destination": destination}))
    delete = shlex.quote(json.dumps({"model": source}))
    return (
        f"curl -fsS {shlex.quote(api + '/api/copy')} -d {copy} && "
        f"curl -fsS -X DELETE {shlex.quote(api + '/api/delete')} -d {delete}"
    )


@operation()
def seed_models_ready() -> Generator[str, None, None]:
    """
    A barrier with nothing to do: the seed's model operations come before it, the pulls from the seed after.
    """
    host.noop("ordering only")
    yield from ()


@operation()
def seeded_model(
    model: str,
    source: str,
    seed_manifest_url: str,
    api: str,
    pin: str | None = None,
    manifest_file: str = "",
    stall_seconds: int = 600,
) -> Generator[Any, None, None]:
    """
    Pull `model` from the fleet's seed over the LAN, showing progress, and list it under its own name;
    again whenever the seed's copy differs from the host's (the seed refreshed it).

    + model: the model name as /api/tags lists it (settings.listed_name)
    + source: the same model at the seed (host:port/namespace/model:tag), served over plain http
    + seed_manifest_url: where the seed serves its manifest
    + api: base URL of the local API
    + pin, manifest_file, stall_seconds: as for pulled_model
    """
    models = host.get_fact(OllamaModels, api=api)
    if models is None:
        yield _api_down(api)
        return
    seed_has = host.get_fact(ManifestDigest, url=seed_manifest_url)
    if seed_has is None:
        yield fail_command(
            f"the seed does not serve {model} at {seed_manifest_url}: deploy the seed first (is it up, and "
            "this host in its models_lan_subnets?)"
        )
        return
    if models.get(model) == seed_has:
        host.noop(f"model {model} is present, as at the seed")
        return
    failed = fail_command(
        f"pulling {model} from the seed as {source} failed; the lines above say why (a blob whose sha256 "
        "does not match is named there)"
    )
    pull = f"{pull_command(api, source, insecure=True, stall_seconds=stall_seconds)} || {{ {failed}; }}"
    yield shown_command(pull)
    yield renamed_command(api, source, model)
    yield from _verified_pin(model, pin, manifest_file)


@operation()
def unlisted_models_removed(
    keep: list[str], api: str, records_dir: str = RECORDS_DIR
) -> Generator[str, None, None]:
    """
    Delete every model not in `keep` (and its record).

    + keep: tagged names to keep
    + api: base URL of the local API
    + records_dir: where the definition digests are kept
    """
    models = host.get_fact(OllamaModels, api=api)
    if models is None:
        yield _api_down(api)
        return
    doomed = sorted(set(models) - set(keep))
    if not doomed:
        host.noop("no unlisted models")
        return
    for name in doomed:
        body = shlex.quote(json.dumps({"model": name}))
        record = shlex.quote(posixpath.join(records_dir, f"{record_name(name)}.sha256"))
        yield f"curl -fsS -X DELETE {shlex.quote(api + '/api/delete')} -d {body} && rm -f {record}"
