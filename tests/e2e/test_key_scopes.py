"""Key scopes and limits on the lab's real nginx and Ollama: what an inference key, the admin key and a
rate-limited key each get, as a client sees it."""

from __future__ import annotations

import ssl
from collections.abc import Iterator

import httpx
import pytest
from verify_fleet import DeployedFleet, deploy_fleet

from ollama_fleet.lab.state import LabState

pytestmark = pytest.mark.e2e

ADMIN_PATHS = [
    ("POST", "/api/pull", {"model": "nothing-to-pull"}),
    ("DELETE", "/api/delete", {"model": "nothing-to-delete"}),
    ("POST", "/api/create", {"model": "nothing-to-create"}),
    ("POST", "/api/push", {"model": "nothing-to-push"}),
    ("POST", "/api/copy", {"source": "tiny", "destination": "copied-by-scope-test"}),
    ("POST", "/api/blobs/sha256:" + "0" * 64, None),
]


@pytest.fixture(scope="module")
def fleet(lab: LabState) -> DeployedFleet:
    return deploy_fleet(lab)


@pytest.fixture(scope="module")
def api(fleet: DeployedFleet) -> Iterator[httpx.Client]:
    context = ssl.create_default_context(cafile=str(fleet.ca_file))
    base = f"https://{fleet.address(fleet.hosts[0])}"
    with httpx.Client(base_url=base, verify=context, trust_env=False, timeout=60) as client:
        yield client


def _as(fleet: DeployedFleet, name: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {fleet.keys[name]}"}


@pytest.mark.parametrize(("method", "path", "body"), ADMIN_PATHS, ids=[p for _, p, _ in ADMIN_PATHS])
def test_the_inference_key_gets_403_on_admin_paths(
    api: httpx.Client, fleet: DeployedFleet, method: str, path: str, body: object
) -> None:
    response = api.request(method, path, json=body, headers=_as(fleet, "ci"))
    assert response.status_code == 403, response.text
    error = response.json()["error"]
    assert error["code"] == "insufficient_scope"
    assert "'ci' has the 'inference' scope" in error["message"]


def test_the_inference_key_chats(api: httpx.Client, fleet: DeployedFleet) -> None:
    reply = api.post(
        "/v1/chat/completions",
        json={"model": fleet.model, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4},
        headers=_as(fleet, "ci"),
    )
    assert reply.status_code == 200, reply.text
    assert reply.json()["choices"][0]["message"]["role"] == "assistant"


def test_the_admin_key_reaches_ollama_on_admin_paths(api: httpx.Client, fleet: DeployedFleet) -> None:
    copied = api.post(
        "/api/copy", json={"source": fleet.model, "destination": "scope-test-copy"}, headers=_as(fleet, "ops")
    )
    assert copied.status_code == 200, copied.text
    deleted = api.request(
        "DELETE", "/api/delete", json={"model": "scope-test-copy"}, headers=_as(fleet, "ops")
    )
    assert deleted.status_code == 200, deleted.text


def test_a_key_over_its_rate_gets_429_json_and_the_others_still_work(
    api: httpx.Client, fleet: DeployedFleet
) -> None:
    answers = [api.get("/v1/models", headers=_as(fleet, "webapp")) for _ in range(4)]  # its rate: 2r/m
    limited = [r for r in answers if r.status_code == 429]
    assert limited, [r.status_code for r in answers]
    assert limited[0].headers["content-type"] == "application/json"
    assert limited[0].json()["error"]["code"] == "rate_limit_exceeded"
    assert api.get("/v1/models", headers=_as(fleet, "ci")).status_code == 200


def test_the_access_log_names_keys_never_their_values(fleet: DeployedFleet) -> None:
    log = fleet.ssh_ok(fleet.hosts[0], "cat /var/log/nginx/ollama-fleet.access.log")
    assert " - key=ci [" in log and " - key=webapp [" in log
    assert not any(key in log for key in fleet.keys.values())


def test_a_key_with_a_model_list_chats_with_its_model_only(api: httpx.Client, fleet: DeployedFleet) -> None:
    """kiosk may use tiny only (njs reads the body's model on the host's real nginx)."""
    messages = [{"role": "user", "content": "hi"}]
    allowed = api.post(
        "/v1/chat/completions",
        json={"model": "tiny", "messages": messages, "max_tokens": 4},
        headers=_as(fleet, "kiosk"),
    )
    assert allowed.status_code == 200, allowed.text
    assert allowed.json()["choices"][0]["message"]["role"] == "assistant"
    refused = api.post(
        "/v1/chat/completions",
        json={"model": "vehicle-assistant", "messages": messages, "max_tokens": 4},
        headers=_as(fleet, "kiosk"),
    )
    assert refused.status_code == 403, refused.text
    assert refused.json()["error"]["code"] == "model_not_allowed"
    assert "may use: tiny:latest" in refused.json()["error"]["message"]
    other = api.post(
        "/v1/chat/completions",
        json={"model": "vehicle-assistant", "messages": messages, "max_tokens": 4},
        headers=_as(fleet, "ci"),
    )
    assert other.status_code == 200, other.text


def test_a_stream_through_the_model_check_arrives_chunk_by_chunk(
    api: httpx.Client, fleet: DeployedFleet
) -> None:
    body = {
        "model": "tiny",
        "messages": [{"role": "user", "content": "hi"}],
        "max_tokens": 16,
        "stream": True,
    }
    with api.stream("POST", "/v1/chat/completions", json=body, headers=_as(fleet, "kiosk")) as response:
        assert response.status_code == 200
        events = [line for line in response.iter_lines() if line.startswith("data: ")]
    assert events[-1] == "data: [DONE]" and len(events) > 2
