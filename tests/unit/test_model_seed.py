"""The fleet's model seed (models_seed_host): settings checked per host and across the fleet, and the seed's
LAN registry, rendered into the site and served by real nginx the way Ollama's pull asks for a model."""

from __future__ import annotations

import base64
import hashlib
import http.server
import json
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from test_render import (
    ENVIRON,
    _free_port,
    _nginx_prefix,
    fleet_settings,
    logged_lines,
    nginx_config_test,
    running_nginx,
)

from ollama_fleet import render
from ollama_fleet.deploys.firewall import guarded_ports, wanted_rules
from ollama_fleet.deploys.fleet import seed_problems
from ollama_fleet.deploys.pins import pin_problems
from ollama_fleet.operations.models import ManifestDigest, _pull_reason
from ollama_fleet.pki import FleetCA
from ollama_fleet.settings import SettingsError, settings_for_host
from ollama_fleet.settings.rules import model_reference

pytestmark = pytest.mark.unit

UPSTREAM = "10.213.0.1:8080/library/tiny:latest"
SEED = {"models_seed_host": "ollama1", "models_lan_subnets": ["10.0.0.0/24"], "models_pull": [UPSTREAM]}


def test_model_references_fill_in_ollamas_defaults() -> None:
    tiny = model_reference(UPSTREAM)
    assert (tiny.registry, tiny.repository, tiny.tag) == ("10.213.0.1:8080", "library/tiny", "latest")
    assert tiny.manifest_path == "manifests/10.213.0.1:8080/library/tiny/latest"
    assert model_reference("llama3.2:1b").manifest_path == "manifests/registry.ollama.ai/library/llama3.2/1b"
    assert model_reference("me/x").at("seed:11435") == "seed:11435/me/x:latest"


def test_the_seed_needs_lan_subnets_and_one_name_per_model(tmp_path: Path) -> None:
    with pytest.raises(SettingsError, match="models_lan_subnets is empty"):
        fleet_settings(tmp_path, models_seed_host="ollama1", models_pull=["tiny"])
    with pytest.raises(SettingsError, match="one name on the seed's LAN registry"):
        fleet_settings(tmp_path, **{**SEED, "models_pull": [UPSTREAM, "tiny"]})
    with pytest.raises(SettingsError, match="ports clash"):
        fleet_settings(tmp_path, **SEED, models_lan_port=443)
    other = fleet_settings(tmp_path, models_seed_host="ollama2", models_pull=["tiny"])
    assert other.fetches_from_seed and not other.is_model_seed


def test_hosts_that_fetch_need_the_seed_in_the_inventory_pulling_their_models(tmp_path: Path) -> None:
    def host(name: str, **data: Any) -> Any:
        base = {
            "firewall_client_subnets": ["10.0.0.0/24"],
            "firewall_admin_subnets": ["10.0.9.0/24"],
            "auth_key_names": ["alice"],
            "auth_secrets_file": str(tmp_path / "none.json"),
            "models_seed_host": "seed",
            "models_lan_subnets": ["10.0.0.0/24"],
        }
        return settings_for_host(name, {**base, **data}, ENVIRON)

    fleet = {"seed": host("seed", models_pull=["tiny"]), "gpu": host("gpu", models_pull=["tiny", "phi"])}
    (problem,) = seed_problems(fleet)
    assert "host 'gpu'" in problem and "['phi'] are not pulled by the seed 'seed'" in problem
    (missing,) = seed_problems({"gpu": fleet["gpu"]})
    assert "models_seed_host 'seed' is not a host of this inventory" in missing
    assert seed_problems({**fleet, "gpu": host("gpu", models_pull=["tiny"])}) == []


def test_only_the_seed_opens_its_lan_port_to_the_lan_subnets(tmp_path: Path) -> None:
    seed = fleet_settings(tmp_path, **SEED)
    other = fleet_settings(tmp_path, **{**SEED, "models_seed_host": "ollama2"})
    assert set(wanted_rules(seed)) - set(wanted_rules(other)) == {
        r for r in wanted_rules(seed) if r.port == 11435
    }
    assert [rule.port for rule in wanted_rules(seed) if rule.port == 11435] == [11435]
    assert guarded_ports(seed)[11435][0] == "models_lan_subnets" and 11435 not in guarded_ports(other)
    assert "listen 11435" in render.render_nginx_site(seed)
    assert "listen 11435" not in render.render_nginx_site(other)


def test_nginx_accepts_the_seed_site(tmp_path: Path, ca: FleetCA) -> None:
    s = fleet_settings(tmp_path, tls_remote_dir=str(tmp_path / "tls"), **SEED)
    result = nginx_config_test(_nginx_prefix(tmp_path, s, ca))
    assert result.returncode == 0, result.stderr
    assert "[warn]" not in result.stderr, result.stderr


def _store(models: Path, blob: bytes) -> str:
    """An Ollama store holding UPSTREAM: one blob and its manifest, as a pull writes them."""
    digest = "sha256:" + hashlib.sha256(blob).hexdigest()
    (models / "blobs").mkdir(parents=True)
    (models / "blobs" / digest.replace(":", "-")).write_bytes(blob)
    config = b'{"model_format":"gguf"}'
    config_digest = "sha256:" + hashlib.sha256(config).hexdigest()
    (models / "blobs" / config_digest.replace(":", "-")).write_bytes(config)
    manifest = models / model_reference(UPSTREAM).manifest_path
    manifest.parent.mkdir(parents=True)
    layers = [{"digest": digest, "size": len(blob)}]
    manifest.write_text(
        json.dumps({"schemaVersion": 2, "config": {"digest": config_digest}, "layers": layers})
    )
    return digest


def _kept_off_the_fleet(models: Path) -> str:
    """A model pulled on the seed that the fleet does not fan out (its system prompt, say): its manifest and
    blob in the store beside the fanned-out one's. Returns the blob's digest."""
    blob = b"You are the finance team's assistant. The merger closes on Friday."
    digest = "sha256:" + hashlib.sha256(blob).hexdigest()
    (models / "blobs" / digest.replace(":", "-")).write_bytes(blob)
    manifest = models / model_reference("private:latest").manifest_path
    manifest.parent.mkdir(parents=True)
    manifest.write_text(json.dumps({"schemaVersion": 2, "layers": [{"digest": digest, "size": len(blob)}]}))
    return digest


def test_the_seed_serves_manifests_and_blobs_as_ollamas_pull_asks(tmp_path: Path, ca: FleetCA) -> None:
    blob = bytes(range(256)) * 64
    digest = _store(tmp_path / "models", blob)
    port = _free_port()
    data = {**SEED, "models_lan_port": port, "ollama_models_dir": str(tmp_path / "models")}
    with running_nginx(tmp_path, ca, **data), httpx.Client(base_url=f"http://127.0.0.1:{port}") as seed:
        manifest = seed.get("/v2/library/tiny/manifests/latest")
        assert manifest.status_code == 200
        assert manifest.headers["content-type"] == "application/vnd.docker.distribution.manifest.v2+json"
        assert manifest.json()["layers"][0]["digest"] == digest
        url = f"/v2/library/tiny/blobs/{digest}"
        assert int(seed.head(url).headers["content-length"]) == len(blob)
        first = seed.get(url)  # Ollama asks without a range for the URL its parts come from
        assert first.status_code == 200 and first.headers["location"] == url
        part = seed.get(url, headers={"Range": "bytes=100-199"})
        assert part.status_code == 206 and part.content == blob[100:200]
        config = manifest.json()["config"]["digest"]
        assert seed.get(f"/v2/library/tiny/blobs/{config}").status_code == 200
        kept_off = _kept_off_the_fleet(tmp_path / "models")  # in the store, not fanned out
        for unknown in (
            "/v2/library/other/manifests/latest",
            f"/v2/library/tiny/blobs/sha256:{'0' * 64}",
            f"/v2/library/tiny/blobs/{kept_off}",  # its blob is on disk, but no fanned-out model names it
            f"/v2/library/private/blobs/{kept_off}",
            "/v2/library/tiny/manifests/../../../blobs",
            "/blobs/" + digest.replace(":", "-"),
            "/",
        ):
            assert seed.get(unknown).status_code == 404, unknown
        assert logged_lines(
            tmp_path / "ollama-fleet-models.access.log", "GET /v2/library/tiny/manifests/latest"
        )


# --- pinned digests ---

PIN = "sha256:" + "ab" * 32


def test_a_pin_is_part_of_the_entry_but_not_of_the_name(tmp_path: Path) -> None:
    s = fleet_settings(tmp_path, models_pull=[f"llama3.2:1b@{PIN}", "phi"])
    assert s.models.names()[:2] == ["llama3.2:1b", "phi:latest"]
    assert s.models.pin("llama3.2:1b") == PIN and s.models.pin("phi") is None
    assert model_reference(f"llama3.2:1b@{PIN}").manifest_url() == (
        "https://registry.ollama.ai/v2/library/llama3.2/manifests/1b"
    )
    with pytest.raises(SettingsError, match=r"name@sha256:<64 lowercase hex>"):
        fleet_settings(tmp_path, models_pull=["llama3.2:1b@sha256:ABC"])


def test_the_pull_decision_follows_pin_and_source() -> None:
    have, other = "ab" * 32, "cd" * 32
    assert _pull_reason(None, None, None) == "missing"
    assert _pull_reason(have, PIN, None) is None
    assert _pull_reason(other, PIN, None) == f"it is sha256:{other}, pinned to {PIN}"
    assert _pull_reason(have, None, None) is None  # the source was not asked or did not answer
    assert _pull_reason(have, None, have) is None
    assert (
        _pull_reason(have, None, other)
        == f"it is sha256:{have[:12]}, its source now serves sha256:{other[:12]}"
    )


def test_the_manifest_digest_fact_hashes_the_exact_bytes() -> None:
    body = b'{"schemaVersion":2}\n'
    fact = ManifestDigest()
    assert fact.process([f"manifest {base64.b64encode(body).decode()}"]) == hashlib.sha256(body).hexdigest()
    assert fact.process(["unreachable"]) is None
    assert fact.process(["manifest"]) is None  # curl failed inside the pipe: no body


@pytest.fixture
def registry() -> Iterator[str]:
    """A loopback registry serving one manifest at /v2/library/tiny/manifests/latest."""

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            if self.path != "/v2/library/tiny/manifests/latest":
                self.send_error(404)
                return
            self.send_response(200)
            self.send_header("Content-Length", str(len(MANIFEST)))
            self.end_headers()
            self.wfile.write(MANIFEST)

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


MANIFEST = b'{"schemaVersion":2,"layers":[]}'
SERVED = "sha256:" + hashlib.sha256(MANIFEST).hexdigest()


def test_pins_are_checked_at_the_registry_before_any_host_changes(tmp_path: Path, registry: str) -> None:
    def pulling(*entries: str) -> dict[str, Any]:
        data = {"models_pull": list(entries), "models_insecure_registries": [registry]}
        return {"ollama1": fleet_settings(tmp_path, **data)}

    assert pin_problems(pulling(f"{registry}/library/tiny:latest@{SERVED}")) == []
    assert pin_problems(pulling(f"{registry}/library/tiny:latest")) == []  # unpinned: not asked
    (moved,) = pin_problems(pulling(f"{registry}/library/tiny:latest@{PIN}"))
    assert f"now serves {SERVED}, not the pinned {PIN}" in moved and "hosts ollama1" in moved
    (gone,) = pin_problems(pulling(f"{registry}/library/gone:latest@{PIN}"))
    assert "no longer serves the model pinned" in gone and "answers 404" in gone
    closed = f"127.0.0.1:{_free_port()}"
    data = {"models_pull": [f"{closed}/library/tiny:latest@{PIN}"], "models_insecure_registries": [closed]}
    (unreachable,) = pin_problems({"ollama1": fleet_settings(tmp_path, **data)})
    assert "unreachable from the controller" in unreachable


def test_hosts_cannot_pin_other_than_their_seed(tmp_path: Path) -> None:
    base = {"models_seed_host": "seed", "models_lan_subnets": ["10.0.0.0/24"]}
    seed = settings_for_host(
        "seed", {**_host_data(tmp_path), **base, "models_pull": [f"tiny@{PIN}"]}, ENVIRON
    )
    other = "sha256:" + "cd" * 32
    gpu = settings_for_host(
        "gpu", {**_host_data(tmp_path), **base, "models_pull": [f"tiny@{other}"]}, ENVIRON
    )
    (problem,) = seed_problems({"seed": seed, "gpu": gpu})
    assert "pin another digest than the seed 'seed' has" in problem


def _host_data(tmp_path: Path) -> dict[str, Any]:
    return {
        "firewall_client_subnets": ["10.0.0.0/24"],
        "firewall_admin_subnets": ["10.0.9.0/24"],
        "auth_key_names": ["alice"],
        "auth_secrets_file": str(tmp_path / "none.json"),
    }


# --- models the seed creates (GGUF, Modelfile) fan out too ---


def test_models_the_seed_creates_are_served_under_local_namespaces(tmp_path: Path) -> None:
    gguf = tmp_path / "mine.gguf"
    gguf.write_bytes(b"GGUF")
    custom = {"name": "helper", "base": "mine"}
    s = fleet_settings(tmp_path, **SEED, models_gguf={"mine": str(gguf)}, models_custom=[custom])
    site = render.render_nginx_site(s)
    models_dir = s.ollama.models_dir
    for lan, store in [
        ("/v2/library/tiny/manifests/latest", "manifests/10.213.0.1:8080/library/tiny/latest"),
        ("/v2/local-library/mine/manifests/latest", "manifests/registry.ollama.ai/library/mine/latest"),
        ("/v2/local-library/helper/manifests/latest", "manifests/registry.ollama.ai/library/helper/latest"),
    ]:
        assert f"location = {lan} {{" in site
        assert f"alias {models_dir}/{store};" in site
    # A pulled model in a local- namespace would be served as a created one: refused.
    with pytest.raises(SettingsError, match="one name on the seed's LAN registry"):
        fleet_settings(
            tmp_path, **{**SEED, "models_pull": ["local-library/mine"]}, models_gguf={"mine": str(gguf)}
        )


def test_hosts_of_a_seed_define_created_models_like_the_seed(tmp_path: Path) -> None:
    gguf, other = tmp_path / "a.gguf", tmp_path / "b.gguf"
    gguf.write_bytes(b"GGUF")
    other.write_bytes(b"GGUF2")
    data = {**_host_data(tmp_path), "models_seed_host": "seed", "models_lan_subnets": ["10.0.0.0/24"]}
    seed = settings_for_host("seed", {**data, "models_gguf": {"mine": str(gguf)}}, ENVIRON)
    same = settings_for_host("gpu", {**data, "models_gguf": {"mine": str(gguf)}}, ENVIRON)
    assert seed_problems({"seed": seed, "gpu": same}) == []
    differs = settings_for_host("gpu", {**data, "models_gguf": {"mine": str(other)}}, ENVIRON)
    (problem,) = seed_problems({"seed": seed, "gpu": differs})
    assert "models ['mine'] are not made by the seed 'seed' from the same GGUF file" in problem
