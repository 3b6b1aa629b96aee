"""The official `openai` package against every lab host, configured as a user would: base_url, api_key, CA."""

from __future__ import annotations

import socket
import ssl
import time
from collections.abc import Iterator

import httpx
import openai
import pytest
from verify_fleet import DeployedFleet, deploy_fleet

from ollama_fleet.lab.inventory import LAB_KEY_POLICIES
from ollama_fleet.lab.state import LabState

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def fleet(lab: LabState) -> DeployedFleet:
    return deploy_fleet(lab)


def client_for(fleet: DeployedFleet, host: str, key: str) -> openai.OpenAI:
    verify = ssl.create_default_context(cafile=str(fleet.ca_file))
    http_client = httpx.Client(verify=verify, trust_env=False, timeout=60)
    return openai.OpenAI(
        base_url=f"https://{fleet.address(host)}/v1", api_key=key, http_client=http_client, max_retries=0
    )


@pytest.fixture(params=[0, 1, 2], ids=["host-1", "host-2", "host-3"])
def client(request: pytest.FixtureRequest, fleet: DeployedFleet) -> Iterator[openai.OpenAI]:
    host = fleet.hosts[request.param]
    with client_for(fleet, host, fleet.keys["ci"]) as api:
        yield api


def test_models_list(client: openai.OpenAI, fleet: DeployedFleet) -> None:
    assert fleet.model in [model.id for model in client.models.list()]


def test_chat_completion(client: openai.OpenAI, fleet: DeployedFleet) -> None:
    reply = client.chat.completions.create(
        model=fleet.model, messages=[{"role": "user", "content": "Hello, fleet."}], max_tokens=8
    )
    assert reply.choices[0].message.role == "assistant"
    assert reply.choices[0].message.content
    assert reply.usage is not None and reply.usage.completion_tokens == 8


def test_streaming_chat_completion(client: openai.OpenAI, fleet: DeployedFleet) -> None:
    started = time.perf_counter()
    arrivals, text = [], []
    stream = client.chat.completions.create(
        model=fleet.model, messages=[{"role": "user", "content": "Hello, fleet."}], max_tokens=32, stream=True
    )
    for chunk in stream:  # the client ends the loop at `data: [DONE]`
        if chunk.choices and chunk.choices[0].delta.content:
            arrivals.append(time.perf_counter() - started)
            text.append(chunk.choices[0].delta.content)
    assert len(arrivals) >= 16
    assert "".join(text).strip()
    assert arrivals[0] < arrivals[-1]
    print(
        f"first chunk {arrivals[0] * 1000:.0f} ms, last {arrivals[-1] * 1000:.0f} ms, {len(arrivals)} chunks"
    )


def test_a_wrong_key_is_an_authentication_error(fleet: DeployedFleet) -> None:
    for host in fleet.hosts:
        with (
            client_for(fleet, host, "not-a-fleet-key-0123456789") as api,
            pytest.raises(openai.AuthenticationError) as raised,
        ):
            api.models.list()
        assert raised.value.status_code == 401
        assert raised.value.code == "invalid_api_key"


def test_every_configured_key_works(fleet: DeployedFleet) -> None:
    """A rate-limited key may already have spent its rate on earlier checks: then the client must get a
    RateLimitError carrying the proxy's JSON message, never another error."""
    for host in fleet.hosts:
        for name, key in fleet.keys.items():
            with client_for(fleet, host, key) as api:
                try:
                    assert fleet.model in [model.id for model in api.models.list()]
                except openai.RateLimitError as limited:
                    assert "rate" in LAB_KEY_POLICIES.get(name, {}), f"{name} is not rate-limited: {limited}"
                    assert "Too many requests for this key" in str(limited)


def test_an_ipv6_client_chats_over_tls_and_ollamas_port_stays_closed(fleet: DeployedFleet) -> None:
    """The controller sits in the lab's IPv6 client subnet (fd0a:d5:...::1 on the hosts' bridge)."""
    for host in fleet.hosts:
        address = fleet.address6(host)
        verify = ssl.create_default_context(cafile=str(fleet.ca_file))
        http_client = httpx.Client(verify=verify, trust_env=False, timeout=60)
        with openai.OpenAI(
            base_url=f"https://[{address}]/v1",
            api_key=fleet.keys["ci"],
            http_client=http_client,
            max_retries=0,
        ) as api:
            reply = api.chat.completions.create(
                model=fleet.model, messages=[{"role": "user", "content": "hi"}], max_tokens=4
            )
        assert reply.choices[0].message.role == "assistant"
        with pytest.raises(TimeoutError):  # dropped by ufw's IPv6 rules, not refused
            socket.create_connection((address, 11434), timeout=3).close()
