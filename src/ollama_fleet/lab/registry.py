"""A static Ollama registry for the lab mirror's `/v2/`: the tiny GGUF as `<mirror host>/library/tiny:latest`.

What Ollama v0.24's pull client (server/images.go PullModel, server/download.go) asks of a registry, over
http only when /api/pull gets `"insecure": true`:
  GET  /v2/<namespace>/<model>/manifests/<tag>   Docker schema 2 manifest: config + layers by sha256 digest
  HEAD /v2/<namespace>/<model>/blobs/<digest>    Content-Length sizes the download parts (>= 100 MB each)
  GET  the same blob URL, without Range          status 200 or 307, and a Location header: the direct URL
  GET  the direct URL with Range: bytes=a-b      once per part; it reads exactly the part's length
then it checks each blob's sha256 and writes the manifest to manifests/<host>/<namespace>/<model>/<tag>.

`library/stalls:latest` is a model whose registry stops sending mid-blob: the mirror sends the first half of
its model layer, then holds every connection for it open and silent (the way a stuck CDN does), so a pull of
it never ends by itself (Ollama retries a stalled part forever).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

from gguf import GGUFReader, LlamaFileType

from ollama_fleet.lab import mirror
from ollama_fleet.localfiles import exclusive_lock, sha256_of

MANIFEST_MEDIA_TYPE = "application/vnd.docker.distribution.manifest.v2+json"
CONFIG_MEDIA_TYPE = "application/vnd.docker.container.image.v1+json"
MODEL_MEDIA_TYPE = "application/vnd.ollama.image.model"
REPOSITORY = "library/tiny"
TAG = "latest"
STALLING_REPOSITORY = "library/stalls"
STALLING_BLOB_SIZE = 4 * 1048576


@dataclass(frozen=True)
class Blob:
    media_type: str
    digest: str  # sha256:<hex>
    size: int

    def descriptor(self) -> dict[str, object]:
        return {"mediaType": self.media_type, "digest": self.digest, "size": self.size}


@dataclass(frozen=True)
class GgufDetails:
    """What `ollama create` records about a GGUF in the config blob (shown by /api/tags and /api/show)."""

    family: str
    parameter_size: str
    file_type: str


def blob_of(data: bytes, media_type: str) -> Blob:
    return Blob(media_type, f"sha256:{hashlib.sha256(data).hexdigest()}", len(data))


def human_number(count: int) -> str:
    """A parameter count written like Ollama's format.HumanNumber (113344 -> 113K, 1_230_000 -> 1.23M)."""
    for scale, suffix, decimals in ((10**9, "B", 1), (10**6, "M", 2), (10**3, "K", 0)):
        if count >= scale:
            number = count / scale
            if suffix != "K" and number == int(number):
                return f"{int(number)}{suffix}"
            return f"{number:.{decimals}f}{suffix}"
    return str(count)


def _json(value: object) -> bytes:
    """Compact JSON with a final newline, as Go's json.Encoder writes it."""
    return json.dumps(value, separators=(",", ":")).encode() + b"\n"


def config_blob(details: GgufDetails, layers: list[Blob]) -> bytes:
    """The config blob, field for field Ollama's model.ConfigV2."""
    return _json(
        {
            "model_format": "gguf",
            "model_family": details.family,
            "model_families": [details.family],
            "model_type": details.parameter_size,
            "file_type": details.file_type,
            "architecture": "amd64",
            "os": "linux",
            "rootfs": {"type": "layers", "diff_ids": [layer.digest for layer in layers]},
        }
    )


def manifest(config: Blob, layers: list[Blob]) -> bytes:
    return _json(
        {
            "schemaVersion": 2,
            "mediaType": MANIFEST_MEDIA_TYPE,
            "config": config.descriptor(),
            "layers": [layer.descriptor() for layer in layers],
        }
    )


def blob_path(digest: str, repository: str = REPOSITORY) -> str:
    """A blob's path under /v2/."""
    return f"{repository}/blobs/{digest}"


def registry_files(
    model: Blob, details: GgufDetails, repository: str = REPOSITORY, tag: str = TAG
) -> dict[str, bytes]:
    """Path under /v2/ -> content of the config blob and the manifest (the model blob is the GGUF itself)."""
    config_data = config_blob(details, [model])
    config = blob_of(config_data, CONFIG_MEDIA_TYPE)
    return {
        blob_path(config.digest, repository): config_data,
        f"{repository}/manifests/{tag}": manifest(config, [model]),
    }


def stalling_blob() -> bytes:
    """The model layer of library/stalls: bytes of its own (no other model shares its digest)."""
    line = b"ollama-fleet lab: the registry stops sending this blob halfway\n"
    return (line * (STALLING_BLOB_SIZE // len(line) + 1))[:STALLING_BLOB_SIZE]


def stalling_files(details: GgufDetails) -> dict[str, bytes]:
    """Path under /v2/ -> content of library/stalls:latest, its model blob included, with the marker that
    makes the mirror stop sending that blob halfway (mirror.STALL_SUFFIX)."""
    data = stalling_blob()
    model = blob_of(data, MODEL_MEDIA_TYPE)
    layer = blob_path(model.digest, STALLING_REPOSITORY)
    return {
        **registry_files(model, details, repository=STALLING_REPOSITORY),
        layer: data,
        layer + mirror.STALL_SUFFIX: str(len(data) // 2).encode(),
    }


def gguf_details(gguf: Path) -> GgufDetails:
    reader = GGUFReader(gguf)

    def scalar(key: str) -> object:
        return reader.fields[key].contents()

    file_type = LlamaFileType(int(str(scalar("general.file_type"))))
    parameters = sum(int(tensor.n_elements) for tensor in reader.tensors)
    return GgufDetails(
        family=str(scalar("general.architecture")),
        parameter_size=human_number(parameters),
        file_type=file_type.name.removeprefix("ALL_").removeprefix("MOSTLY_"),
    )


def registry_dir() -> Path:
    """What the mirror serves under /v2/."""
    return mirror.routes()["/v2/"]


def _is_current(root: Path, files: dict[str, bytes], model: Blob) -> bool:
    model_blob = root / blob_path(model.digest)
    if not model_blob.is_file() or model_blob.stat().st_size != model.size:
        return False
    return all((root / path).is_file() and (root / path).read_bytes() == data for path, data in files.items())


def ensure_registry(gguf: Path) -> Path:
    """Keep registry_dir() serving `library/tiny:latest` made of exactly this GGUF (and library/stalls);
    return the directory."""
    model = Blob(MODEL_MEDIA_TYPE, f"sha256:{sha256_of(gguf)}", gguf.stat().st_size)
    details = gguf_details(gguf)
    files = {**registry_files(model, details), **stalling_files(details)}
    final = registry_dir()
    if _is_current(final, files, model):
        return final
    with exclusive_lock(final.with_name(".registry.lock")):
        if _is_current(final, files, model):
            return final
        building = final.with_name(f".build-registry-{os.getpid()}")
        shutil.rmtree(building, ignore_errors=True)
        for path, data in files.items():
            (building / path).parent.mkdir(parents=True, exist_ok=True)
            (building / path).write_bytes(data)
        shutil.copyfile(gguf, building / blob_path(model.digest))  # the blobs directory exists: config
        shutil.rmtree(final, ignore_errors=True)
        building.rename(final)
    return final
