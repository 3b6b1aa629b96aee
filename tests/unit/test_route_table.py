"""The proxy's route table (render.ROUTES) against the router of the Ollama the lab builds: every route
classified, so a route a new Ollama adds is a failing test here, not a silent 403 or a silent pass."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

from ollama_fleet import render
from ollama_fleet.lab.artifacts import DEFAULT_VERSION, MODULE, go_binary

pytestmark = pytest.mark.unit

ROUTE_CALL = re.compile(r'\br\.(GET|POST|PUT|PATCH|DELETE|HEAD|OPTIONS|Any|Handle|Group)\("([^"]*)"')


def ollama_source(version: str = DEFAULT_VERSION) -> Path:
    """Ollama's source in the Go module cache, where the lab's build (bootstrap.sh) downloads it."""
    try:
        cache = subprocess.run(
            [go_binary(), "env", "GOMODCACHE"], capture_output=True, text=True, check=True
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError) as exc:
        pytest.fail(f"go is not usable ({exc}); bash bootstrap.sh --setup-only installs it")
    source = Path(cache) / f"{MODULE}@v{version}"
    if not (source / "server" / "routes.go").is_file():
        pytest.fail(f"{source} is missing; bash bootstrap.sh --setup-only downloads Ollama v{version}")
    return source


def router_routes(routes_go: str) -> list[tuple[str, str]]:
    """(method, path) of each route GenerateRoutes registers, in order."""
    start = routes_go.index("func (s *Server) GenerateRoutes(")
    end = routes_go.index("\n}\n", start)
    found = ROUTE_CALL.findall(routes_go[start:end])
    odd = [f"r.{method}({path!r})" for method, path in found if method in ("Any", "Handle", "Group")]
    assert not odd, f"GenerateRoutes registers routes this parser does not read: {odd}"
    return [(method, path) for method, path in found]


def unclassified(routes: list[tuple[str, str]]) -> list[str]:
    table = {(method, path) for method, path, _ in render.ROUTES}
    return [f"{method} {path}" for method, path in routes if (method, path) not in table]


@pytest.fixture(scope="module")
def routes_go() -> str:
    return (ollama_source() / "server" / "routes.go").read_text()


def test_every_route_of_the_pinned_ollama_has_a_class_and_the_table_no_other(routes_go: str) -> None:
    routes = router_routes(routes_go)
    assert len(routes) >= 30, routes  # the parser found the router, not a fragment of it
    assert unclassified(routes) == [], "classify these in render.ROUTES (inference, admin or refused)"
    table = [(method, path) for method, path, _ in render.ROUTES]
    assert sorted(table) == sorted(routes), "render.ROUTES lists a route Ollama's router does not have"


def test_a_route_added_to_the_router_without_a_class_fails(routes_go: str) -> None:
    added = routes_go.replace(
        'r.POST("/api/chat"', 'r.POST("/api/chat/v2", s.ChatHandler)\n\tr.POST("/api/chat"', 1
    )
    assert unclassified(router_routes(added)) == ["POST /api/chat/v2"]


def test_the_version_the_deploy_installs_is_the_one_whose_router_is_classified() -> None:
    from ollama_fleet.settings.sections import OllamaSettings

    assert OllamaSettings().version == DEFAULT_VERSION


def test_a_path_has_one_class_and_the_map_holds_every_path() -> None:
    scopes = dict(render.path_scopes())
    assert scopes["/v1/messages"] == scopes["/v1/responses"] == "inference"
    assert scopes["~^/v1/models/[^/]+$"] == "inference" and scopes["~^/api/blobs/[^/]+$"] == "admin"
    assert scopes["/api/experimental/web_search"] == "refused"
    with pytest.raises(ValueError, match="GET /api/x is inference but another method"):
        render.path_scopes((("POST", "/api/x", "admin"), ("GET", "/api/x", "inference")))
