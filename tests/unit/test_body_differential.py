"""The body differential, in the unit tier: thousands of generated bodies (a fixed seed), each decided by
the real njs module in a real nginx and read by Go's encoding/json into Ollama's request shapes. Not one that
reaches Ollama may be read there as a model the key's allow-list does not hold, or as a cloud model."""

from __future__ import annotations

import json
from collections.abc import Iterator

import httpx
import pytest
from body_differential import ALLOWED, GoReader, GoReading, Tally, run_differential, violation
from test_render import ALICE_KEY, CI_KEY, Proxy, _bearer, running_nginx

from ollama_fleet.pki import FleetCA

pytestmark = pytest.mark.unit

EXAMPLES = 2000
"""Bodies per unit run: about 20 s here; benchmarks/body_differential.py runs more."""


@pytest.fixture(scope="module")
def go_reader(tmp_path_factory: pytest.TempPathFactory) -> Iterator[GoReader]:
    reader = GoReader(tmp_path_factory.mktemp("bodyreader"))
    yield reader
    reader.close()


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory, ca: FleetCA) -> Iterator[Proxy]:
    policies = {"auth_key_policies": {"alice": {"models": list(ALLOWED)}}}
    with running_nginx(tmp_path_factory.mktemp("nginx-differential"), ca, **policies) as running:
        running.upstream.first_chunk_read.set()  # a streamed answer never waits for the reader
        yield running


def send(
    client: httpx.Client, site: Proxy, route: str, body: bytes, key: str
) -> tuple[int, str | None, bytes | None]:
    """(status, error code, the body Ollama got or None when nothing reached it)."""
    before = len(site.upstream.seen)
    response = client.post(route, content=body, headers={**_bearer(key), "Content-Type": "application/json"})
    reached = site.upstream.seen[before]["body"] if len(site.upstream.seen) > before else None
    code = None
    if response.status_code >= 400:
        try:
            code = json.loads(response.content)["error"]["code"]
        except ValueError:
            code = f"not JSON: {response.content[:80]!r}"  # nginx's own page: the check itself failed
    return response.status_code, code, reached


def test_the_go_reader_reads_as_ollama_does(go_reader: GoReader) -> None:
    """The reader itself: Go's folding, last key winning, null keeping the value, trailing data ignored,
    invalid UTF-8 replaced, the cloud middleware's exact key."""
    assert go_reader.read("/api/chat", b'{"model":"tiny","Model":"big"}').model == "big"
    assert go_reader.read("/api/chat", b'{"model":"big","model":null}').model == "big"
    assert go_reader.read("/api/chat", '{"m\u212aodel":"big"}'.encode()).model == ""
    assert go_reader.read("/api/chat", '{"\u017fystem":1,"model":"big"}'.encode()).ok is True
    assert go_reader.read("/api/chat", b'{"model":"x:cloud"} junk') == GoReading(
        True, "x:cloud", True, True, False, "", False
    )
    assert go_reader.read("/api/show", b'{"model":"","name":"tiny"}').model == "tiny"
    assert go_reader.read("/api/chat", b'{"model":"ti\xffny"}').model == "ti\ufffdny"
    middleware = go_reader.read("/v1/chat/completions", b'{"model":"tiny","MODEL":"y:7b-cloud"}')
    assert (middleware.model, middleware.cloud, middleware.middleware_model) == ("y:7b-cloud", True, "tiny")


def test_no_generated_body_reaches_ollama_as_another_or_a_cloud_model(
    site: Proxy, go_reader: GoReader
) -> None:
    tally = Tally()
    with site.client(timeout=20) as client:

        def one(route: str, body: bytes, allow_listed: bool) -> None:
            status, code, reached = send(client, site, route, body, ALICE_KEY if allow_listed else CI_KEY)
            if reached is not None:
                assert reached == body  # what Ollama gets is what was decided on
            go = go_reader.read(route, body)
            why = violation(go, allow_listed) if reached is not None else None
            tally.add(route, body, status, code, reached is not None, go, why)
            assert why is None, f"{route} {body[:300]!r} reached Ollama: {why}"

        run_differential(19, EXAMPLES, one)
    assert tally.cases == EXAMPLES
    # The generator reaches the cases that matter: bodies let through, and each kind of refusal.
    assert tally.reached > EXAMPLES // 10, tally
    assert {"400 ambiguous_request", "403 cloud_disabled", "403 model_not_allowed"} <= set(tally.refused), (
        tally
    )
    assert tally.parsers_disagree > 20, tally  # JSON.parse and Go read apart this often, and were refused
