"""The lab's static Ollama registry: its layout, and the HTTP answers Ollama's pull client relies on."""

from __future__ import annotations

import hashlib
import http.client
import json
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from ollama_fleet.lab import mirror, registry
from ollama_fleet.lab.mirror import UnsatisfiableRange, byte_span
from ollama_fleet.lab.registry import Blob, GgufDetails
from ollama_fleet.lab.tinymodel import write_tiny_gguf

pytestmark = pytest.mark.unit

MODEL = Blob(registry.MODEL_MEDIA_TYPE, "sha256:" + "ab" * 32, 462304)
DETAILS = GgufDetails(family="llama", parameter_size="113K", file_type="F32")


def test_layout_holds_the_manifest_and_the_config_blob_named_by_its_digest() -> None:
    files = registry.registry_files(MODEL, DETAILS)
    manifest = json.loads(files["library/tiny/manifests/latest"])
    config = manifest["config"]
    assert manifest["schemaVersion"] == 2
    assert manifest["mediaType"] == "application/vnd.docker.distribution.manifest.v2+json"
    assert manifest["layers"] == [
        {"mediaType": "application/vnd.ollama.image.model", "digest": MODEL.digest, "size": MODEL.size}
    ]
    config_data = files[f"library/tiny/blobs/{config['digest']}"]
    assert config["mediaType"] == "application/vnd.docker.container.image.v1+json"
    assert config["digest"] == "sha256:" + hashlib.sha256(config_data).hexdigest()
    assert config["size"] == len(config_data)
    assert sorted(files) == sorted(
        ["library/tiny/manifests/latest", f"library/tiny/blobs/{config['digest']}"]
    )


def test_config_blob_carries_what_ollama_create_records() -> None:
    config_path = next(p for p in registry.registry_files(MODEL, DETAILS) if "/blobs/" in p)
    config = json.loads(registry.registry_files(MODEL, DETAILS)[config_path])
    assert config == {
        "model_format": "gguf",
        "model_family": "llama",
        "model_families": ["llama"],
        "model_type": "113K",
        "file_type": "F32",
        "architecture": "amd64",
        "os": "linux",
        "rootfs": {"type": "layers", "diff_ids": [MODEL.digest]},
    }


def test_layout_is_deterministic_and_follows_the_model() -> None:
    assert registry.registry_files(MODEL, DETAILS) == registry.registry_files(MODEL, DETAILS)
    other = Blob(MODEL.media_type, "sha256:" + "cd" * 32, MODEL.size)
    assert registry.registry_files(other, DETAILS) != registry.registry_files(MODEL, DETAILS)
    custom = registry.registry_files(MODEL, DETAILS, repository="team/small", tag="v1")
    assert "team/small/manifests/v1" in custom


@pytest.mark.parametrize(
    ("count", "shown"),
    [(999, "999"), (113344, "113K"), (1_230_000, "1.23M"), (8_000_000, "8M"), (1_500_000_000, "1.5B")],
)
def test_parameter_sizes_read_like_ollamas(count: int, shown: str) -> None:
    assert registry.human_number(count) == shown


def test_details_come_from_the_gguf(tmp_path: Path) -> None:
    details = registry.gguf_details(write_tiny_gguf(tmp_path / "tiny.gguf"))
    assert details == GgufDetails(family="llama", parameter_size="113K", file_type="F32")


@pytest.mark.parametrize(
    ("header", "span"),
    [
        ("bytes=0-99", (0, 100)),
        ("bytes=10-19", (10, 20)),
        ("bytes=990-5000", (990, 1000)),  # a last byte past the end is clamped
        ("bytes=500-", (500, 1000)),
        ("bytes=-100", (900, 1000)),
        ("bytes=-5000", (0, 1000)),
        ("bytes=0-1,5-6", None),  # several ranges: the whole file
        ("items=0-1", None),
        ("bytes=a-b", None),
    ],
)
def test_byte_span(header: str, span: tuple[int, int] | None) -> None:
    assert byte_span(header, 1000) == span


@pytest.mark.parametrize("header", ["bytes=1000-", "bytes=1000-1001", "bytes=-0", "bytes=20-10"])
def test_byte_span_unsatisfiable(header: str) -> None:
    with pytest.raises(UnsatisfiableRange):
        byte_span(header, 1000)


@pytest.fixture
def served(tmp_path: Path) -> Iterator[tuple[int, bytes, str]]:
    """The mirror's handler on a loopback port, serving a registry made of a 300 kB stand-in GGUF."""
    data = bytes(range(256)) * 1200
    model = Blob(registry.MODEL_MEDIA_TYPE, "sha256:" + hashlib.sha256(data).hexdigest(), len(data))
    root = tmp_path / "registry"
    for path, content in {
        **registry.registry_files(model, DETAILS),
        registry.blob_path(model.digest): data,
    }.items():
        (root / path).parent.mkdir(parents=True, exist_ok=True)
        (root / path).write_bytes(content)
    handler = type("Handler", (mirror.MirrorHandler,), {"table": {"/v2/": root}})
    server = mirror.http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server.server_address[1], data, f"/v2/{registry.blob_path(model.digest)}"
    finally:
        server.shutdown()
        server.server_close()


def _request(
    port: int, method: str, path: str, headers: dict[str, str] | None = None
) -> http.client.HTTPResponse:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    connection.request(method, path, headers=headers or {})
    return connection.getresponse()


def test_blob_answers_head_with_its_length_and_get_with_its_own_location(
    served: tuple[int, bytes, str],
) -> None:
    port, data, path = served
    head = _request(port, "HEAD", path)
    assert (head.status, head.getheader("Content-Length")) == (200, str(len(data)))
    get = _request(port, "GET", path)
    assert get.status == 200
    assert get.getheader("Location") == path  # Ollama fails with "no Location header in response" otherwise
    assert get.read() == data


def test_ranged_get_answers_206_with_exactly_the_part(served: tuple[int, bytes, str]) -> None:
    port, data, path = served
    part = _request(port, "GET", path, {"Range": "bytes=1000-199999"})
    assert part.status == 206
    assert part.getheader("Content-Range") == f"bytes 1000-199999/{len(data)}"
    assert part.read() == data[1000:200000]
    past = _request(port, "GET", path, {"Range": f"bytes={len(data)}-"})
    assert (past.status, past.getheader("Content-Range")) == (416, f"bytes */{len(data)}")
    conditional = _request(
        port, "GET", path, {"Range": "bytes=0-9", "If-Range": "Thu, 01 Jan 1970 00:00:00 GMT"}
    )
    assert conditional.status == 200
    assert conditional.read() == data


def test_manifest_and_missing_blobs(served: tuple[int, bytes, str]) -> None:
    port, _, _ = served
    manifest = _request(port, "GET", "/v2/library/tiny/manifests/latest")
    assert manifest.status == 200
    assert json.loads(manifest.read())["schemaVersion"] == 2
    missing = _request(port, "GET", "/v2/library/tiny/blobs/sha256:" + "00" * 32)
    assert (missing.status, missing.getheader("Location")) == (404, None)


def test_ensure_registry_builds_once_and_rebuilds_for_another_model(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("OLLAMA_FLEET_CACHE", str(tmp_path / "cache"))
    gguf = write_tiny_gguf(tmp_path / "tiny.gguf")
    root = registry.ensure_registry(gguf)
    assert root == tmp_path / "cache" / "artifacts" / "registry" == mirror.routes()["/v2/"]
    manifest_file = root / "library/tiny/manifests/latest"
    layer = json.loads(manifest_file.read_text())["layers"][0]
    assert (root / registry.blob_path(layer["digest"])).read_bytes() == gguf.read_bytes()
    built = manifest_file.stat().st_mtime_ns
    assert registry.ensure_registry(gguf) == root
    assert manifest_file.stat().st_mtime_ns == built  # current: left alone

    other = write_tiny_gguf(tmp_path / "other.gguf", seed=1)
    registry.ensure_registry(other)
    new_layer = json.loads(manifest_file.read_text())["layers"][0]
    assert new_layer["digest"] != layer["digest"]
    assert not (root / registry.blob_path(layer["digest"])).exists()  # the old model's blob is gone


def test_a_stalling_blob_is_sent_halfway_then_the_connection_goes_silent(tmp_path: Path) -> None:
    root = tmp_path / "registry"
    files = registry.stalling_files(DETAILS)
    for path, content in files.items():
        (root / path).parent.mkdir(parents=True, exist_ok=True)
        (root / path).write_bytes(content)
    manifest = json.loads(files["library/stalls/manifests/latest"])
    layer = manifest["layers"][0]
    assert layer["digest"] == "sha256:" + hashlib.sha256(registry.stalling_blob()).hexdigest()
    half = layer["size"] // 2
    handler = type("Handler", (mirror.MirrorHandler,), {"table": {"/v2/": root}})
    server = mirror.http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    path = f"/v2/{registry.blob_path(layer['digest'], registry.STALLING_REPOSITORY)}"
    try:
        head = _request(server.server_address[1], "HEAD", path)
        assert head.getheader("Content-Length") == str(layer["size"])  # the size Ollama plans its parts by
        for start, sent in ((0, half), (half - 1000, 1000), (half + 5, 0)):  # a retry resumes: no more
            connection = http.client.HTTPConnection("127.0.0.1", server.server_address[1], timeout=1.5)
            connection.request("GET", path, headers={"Range": f"bytes={start}-{layer['size'] - 1}"})
            answer = connection.getresponse()
            assert answer.status == 206
            got = b""
            with pytest.raises(TimeoutError):
                while chunk := answer.read1(65536):
                    got += chunk
            assert got == registry.stalling_blob()[start : start + sent]
            connection.close()
        whole = _request(server.server_address[1], "GET", "/v2/library/stalls/manifests/latest")
        assert whole.status == 200 and json.loads(whole.read()) == manifest  # only the marked blob stalls
    finally:
        server.shutdown()
        server.server_close()
