"""The path differential (issue 19): request paths spelled so that nginx's scope decision (on its normalized
$uri) and Ollama's router (Go's ServeMux, registry.Local, gin) could read them apart, sent raw through the
rendered site in a real nginx to a Go server routing as Ollama v0.24.0 does. Not one may reach an Ollama
handler the key's scope does not allow (an admin route with an inference key; a refused route with any)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from path_differential import (
    EXAMPLES,
    MAY_REACH,
    PathRouter,
    Sender,
    Tally,
    hand_picked,
    run_differential,
)
from test_render import ALICE_KEY, CI_KEY, Proxy, _free_port, running_nginx

from ollama_fleet.lab.paths import repo_root
from ollama_fleet.pki import FleetCA

pytestmark = pytest.mark.unit

KEYS = {"inference": ALICE_KEY, "admin": CI_KEY}  # alice: inference, no allow-list; ci-bot: admin, no limits
GENERATED = 1000  # with the hand-picked ones: about 15 s on an idle 2-core machine


@pytest.fixture(scope="module")
def router(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PathRouter]:
    running = PathRouter(tmp_path_factory.mktemp("path-router"), _free_port())
    yield running
    running.close()


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory, ca: FleetCA, router: PathRouter) -> Iterator[Proxy]:
    data = {"ollama_listen": router.address, "auth_key_policies": {"ci-bot": {"scope": "admin"}}}
    with running_nginx(tmp_path_factory.mktemp("nginx-paths"), ca, **data) as running:
        yield running


@pytest.fixture
def sender(site: Proxy) -> Iterator[Sender]:
    client = Sender(site.https, site.ca_file)
    yield client
    client.close()


def test_the_router_routes_as_ollama_does(sender: Sender) -> None:
    """Controls: the table's routes reach their handler through nginx with an admin key (inference ones with
    any key); Go's ServeMux redirects a path with dot segments; gin answers 404 to what it does not route."""
    assert sender.send("POST", "/api/pull", KEYS["admin"]).route == "POST /api/pull"  # registry.Local's
    assert (
        sender.send("POST", "/api/blobs/sha256-" + "0" * 64, KEYS["admin"]).route == "POST /api/blobs/:digest"
    )
    assert sender.send("GET", "/v1/models/tiny", KEYS["inference"]).route == "GET /v1/models/:model"
    assert sender.send("POST", "/api/chat", KEYS["inference"]).route == "POST /api/chat"
    assert sender.send("POST", "/api/pull", KEYS["inference"]).status == 403  # nginx: the admin scope
    assert sender.send("POST", "/api/me", KEYS["admin"]).status == 403  # refused for every key
    # The spelling nginx normalizes to /api/pull is refused to an inference key before Ollama sees it.
    assert sender.send("POST", "/api/chat/../pull", KEYS["inference"]).status == 403
    assert sender.send("POST", "/api/%70ull", KEYS["admin"]).route == "POST /api/pull"  # both decode %70


def test_no_path_reaches_an_ollama_route_its_key_may_not_use(sender: Sender) -> None:
    tally = Tally()
    run_differential(19, GENERATED, lambda m, p, scope: sender.send(m, p, KEYS[scope]), tally)
    assert tally.cases == len(EXAMPLES) * 4 * len(MAY_REACH) + GENERATED
    assert not tally.violations, "\n".join(tally.violations[:20])
    # The run meant something: many spellings reached Ollama's handlers, admin ones among them.
    assert sum(tally.reached.values()) > 150, tally.reached
    assert tally.reached["POST /api/pull"] > 0 and tally.reached["POST /api/chat"] > 0, tally.reached


def test_it_catches_a_scope_decided_on_the_raw_path(tmp_path: Path, ca: FleetCA, router: PathRouter) -> None:
    """The differential's power: the site with its scope map read from the raw $request_uri and a deny-list
    default (what a "simpler" proxy does) lets percent-encoded admin paths through to Ollama's handlers, and
    the hand-picked paths alone show it."""
    site_template = (repo_root() / "templates" / "nginx-site.conf.j2").read_text()
    scope_map = "map $uri $ollama_fleet_path_scope {\n    default refused;"
    assert scope_map in site_template
    (tmp_path / "templates").mkdir()
    (tmp_path / "templates" / "nginx-site.conf.j2").write_text(
        site_template.replace(
            scope_map, "map $request_uri $ollama_fleet_path_scope {\n    default inference;"
        )
    )
    data = {
        "ollama_listen": router.address,
        "auth_key_policies": {"ci-bot": {"scope": "admin"}},
        "nginx_template_dirs": [str(tmp_path / "templates")],
    }
    tally = Tally()
    with running_nginx(tmp_path / "nginx", ca, **data) as weak:
        sender = Sender(weak.https, weak.ca_file)
        for method, path, scope in hand_picked():
            tally.add(method, path, scope, sender.send(method, path, KEYS[scope]))
        sender.close()
    assert any("POST '/%61pi/pull' with a key of scope 'inference'" in v for v in tally.violations), tally
