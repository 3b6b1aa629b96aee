"""The path differential: request paths spelled to make nginx's reading (its normalized $uri, which the scope
map classifies with render.ROUTES) and Ollama's (Go's net/http ServeMux, registry.Local, then gin, each as
v0.24.0 runs them: path_router/) disagree. Each is sent, raw, through the rendered site in a real nginx (the
real njs module too) to a Go server routing as Ollama does; whatever reaches one of its handlers must be a
route the key's scope allows, and never a refused one. Used by test_path_differential.py (a fixed seed, a
budget under a minute) and benchmarks/path_differential.py (a longer run that prints the counts)."""

from __future__ import annotations

import http.client
import json
import os
import shutil
import ssl
import subprocess
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from hypothesis import HealthCheck, given, seed, settings
from hypothesis import strategies as st

from ollama_fleet.lab.artifacts import go_binary
from ollama_fleet.render import ROUTES, RouteClass

ROUTER_SOURCE = Path(__file__).parent / "path_router"
OLLAMA_MODULE = "github.com/ollama/ollama@v0.24.0"
PARAMS = {":digest": "sha256-" + "0" * 64, ":model": "tiny", ":encodedKey": "c3NoLWVkMjU1MTk"}
METHODS = ["GET", "POST", "HEAD", "DELETE"]
CLASS_OF = {f"{method} {path}": scope for method, path, scope in ROUTES}
MAY_REACH: dict[str, set[RouteClass]] = {"inference": {"inference"}, "admin": {"inference", "admin"}}
"""The classes of Ollama route a key of each scope may reach (refused: none, whatever the key)."""

# Spellings that make two readers of a path disagree: each stands for the same path to some of them.
SEGMENT_NOISE = ["", ".", "..", "%2e", "%2E", "%2e%2e", ".%2e", "%252e", "%c0%ae", "x", "X", "..;", ";x"]
SEPARATORS = ["/", "//", "/./", "%2f", "%2F", "\\", "%5c", "/%2e/", "/x/../", "%252f"]
SUFFIXES = ["", "/", ".", "%20", "%09", ";", ";x", "?x=1", "?", "%3f", "#x", "%23", "/.", "/..", "%00", "~"]
EXTRA = ["/debug/pprof/", "/api", "/v1", "/api/blobs", "/health"]  # not routes: prefixes, another mux's
TEMPLATES = [path for _, path, _ in ROUTES] + EXTRA


@st.composite
def requests(draw: st.DrawFn) -> tuple[str, str]:
    """(method, raw path): a route of Ollama's (its parameters filled; mostly with its own method) or a prefix
    of one, spelled another way in up to four places: a percent-encoded character (either case of hex), a
    doubled or encoded separator, a dot segment (plain, encoded, overlong UTF-8), a changed case, another
    route's path in front, a suffix, a prefix."""
    method, template = draw(st.sampled_from([(m, p) for m, p, _ in ROUTES] + [("GET", p) for p in EXTRA]))
    if draw(st.integers(0, 3)) == 0:
        method = draw(st.sampled_from(METHODS))
    segments = [PARAMS.get(part, part) for part in template.split("/")[1:]]
    separators = ["/"] * len(segments)
    suffix = prefix = ""
    for kind in draw(st.lists(st.integers(0, 7), max_size=4)):
        if kind == 0:  # another route's path in front, undone by dot segments (or not)
            detour = [PARAMS.get(part, part) for part in draw(st.sampled_from(TEMPLATES)).split("/")[1:]]
            undo = [".."] * draw(st.integers(0, len(detour) + 1))
            segments = [*detour, *undo, *segments]
            separators = ["/"] * (len(detour) + len(undo)) + separators
        elif kind == 1:  # a segment of noise
            at = draw(st.integers(0, len(segments)))
            segments.insert(at, draw(st.sampled_from(SEGMENT_NOISE)))
            separators.insert(at, "/")
        elif kind == 2 and separators:  # a separator spelled otherwise
            separators[draw(st.integers(0, len(separators) - 1))] = draw(st.sampled_from(SEPARATORS))
        elif kind in (3, 4, 5) and any(segments):  # a character spelled otherwise
            index = draw(st.sampled_from([i for i, segment in enumerate(segments) if segment]))
            segment = segments[index]
            at = draw(st.integers(0, len(segment) - 1))
            char = segment[at]
            spelled = {3: f"%{ord(char):02x}", 4: f"%{ord(char):02X}", 5: char.swapcase()}[kind]
            segments[index] = segment[:at] + spelled + segment[at + 1 :]
        elif kind == 6:
            suffix = draw(st.sampled_from(SUFFIXES))
        elif kind == 7:
            prefix = draw(st.sampled_from(["/", "/./", "/../", "/%2e%2e/"]))
    text = "".join(sep + seg for sep, seg in zip(separators, segments, strict=True)) or "/"
    return method, (prefix + text.lstrip("/") if prefix else text) + suffix


EXAMPLES = [
    # Hand-picked: each once fooled some proxy in front of some router.
    "/api/blobs/..%2Fchat",
    "/api/blobs/..%2F..%2Fapi%2Fpull",
    "/v1/models/..%2F..%2Fapi%2Fpull",
    "/v1/models/tiny%2F..%2F..%2F..%2Fapi%2Fpull",
    "/api//pull",
    "//api/pull",
    "/api/./pull",
    "/api/chat/../pull",
    "/api/chat/..%2fpull",
    "/api/chat/%2e%2e/pull",
    "/api/chat/%2e%2e%2fpull",
    "/API/PULL",
    "/api/Pull",
    "/%61pi/pull",
    "/api/pu%6Cl",
    "/api/pull/",
    "/api/pull;x",
    "/api/pull%3Bx",
    "/api/pull%00",
    "/api/pull%20",
    "/api/pull.",
    "/api/pull?x=/api/chat",
    "/api/chat?/../pull",
    "/api/chat#/../pull",
    "/api/chat\\..\\pull",
    "/api/chat/%5c..%5cpull",
    "/api/chat/%252e%252e/pull",
    "/api/chat/%c0%ae%c0%ae/pull",
    "/v1/chat/completions/../../../api/delete",
    "/api/delete/",
    "/api/experimental/web_search/..%2F..%2Fchat",
    "/api/tags/../me",
    "/api/user/keys/x",
    "/debug/pprof/",
]


def route_class(route: str) -> RouteClass | None:
    """The class render.ROUTES gives the route a Go handler named (None: not one of the table's)."""
    return CLASS_OF.get(route)


@dataclass(frozen=True)
class Outcome:
    status: int
    route: str | None  # the Ollama handler the request reached (X-Ollama-Route), or None


class PathRouter:
    """The Go router (path_router/), built once with the module versions the pinned Ollama uses (its go.mod
    and go.sum, from the Go module cache: offline), serving on loopback."""

    def __init__(self, build_dir: Path, port: int) -> None:
        source = build_dir / "pathrouter-src"
        source.mkdir()
        ollama = Path(go_env("GOMODCACHE")) / OLLAMA_MODULE
        (source / "go.mod").write_text(
            (ollama / "go.mod").read_text().replace("module github.com/ollama/ollama", "module pathrouter", 1)
        )
        shutil.copyfile(ollama / "go.sum", source / "go.sum")
        shutil.copyfile(ROUTER_SOURCE / "main.go", source / "main.go")
        binary = build_dir / "pathrouter"
        subprocess.run(
            [go_binary(), "build", "-o", str(binary), "."],
            cwd=source,
            env=_offline_go_env(),
            check=True,
            capture_output=True,
        )
        routes = build_dir / "routes.json"
        routes.write_text(json.dumps([[method, path] for method, path, _ in ROUTES]))
        self.address = f"127.0.0.1:{port}"
        self.process = subprocess.Popen([str(binary), str(routes), self.address], stderr=subprocess.PIPE)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                http.client.HTTPConnection(self.address, timeout=1).request("GET", "/")
                return
            except OSError:
                time.sleep(0.05)
        raise RuntimeError("the Go path router did not start listening within 10 s")

    def close(self) -> None:
        self.process.terminate()
        self.process.wait(timeout=10)


def go_env(name: str) -> str:
    return subprocess.run(
        [go_binary(), "env", name], env=_offline_go_env(), check=True, capture_output=True, text=True
    ).stdout.strip()


def _offline_go_env() -> dict[str, str]:
    # -mod=mod: the requirements the router does not import are never fetched (GOPROXY=off).
    return {
        **os.environ,
        "GOTOOLCHAIN": "local",
        "GOPROXY": "off",
        "GOSUMDB": "off",
        "GOFLAGS": "-mod=mod",
        "CGO_ENABLED": "0",
    }


class Sender:
    """Raw requests to nginx over one TLS connection at a time: the path goes out exactly as written (an
    HTTP library would normalize dot segments before sending)."""

    def __init__(self, https_url: str, ca_file: Path) -> None:
        self.host, port = https_url.removeprefix("https://").rsplit(":", 1)
        self.port = int(port)
        self.context = ssl.create_default_context(cafile=str(ca_file))
        self.context.check_hostname = False  # the site's certificate names ollama1.lan, not 127.0.0.1
        self.connection: http.client.HTTPSConnection | None = None

    def send(self, method: str, path: str, key: str) -> Outcome:
        body = b'{"model": "tiny", "messages": [], "prompt": "hi"}' if method in ("POST", "DELETE") else None
        headers = {"Authorization": f"Bearer {key}", "Content-Type": "application/json"}
        for attempt in (1, 2):
            if self.connection is None:
                self.connection = http.client.HTTPSConnection(
                    self.host, self.port, context=self.context, timeout=20
                )
            try:
                self.connection.putrequest(method, path, skip_accept_encoding=True)
                for name, value in headers.items():
                    self.connection.putheader(name, value)
                self.connection.putheader("Content-Length", str(len(body or b"")))
                self.connection.endheaders(body)
                response = self.connection.getresponse()
                response.read()
                outcome = Outcome(response.status, response.getheader("X-Ollama-Route"))
                if response.getheader("Connection", "").lower() == "close":
                    self.close()
                return outcome
            except (http.client.HTTPException, OSError):
                self.close()  # nginx closes after a 400; try once more on a fresh connection
                if attempt == 2:
                    raise
        raise AssertionError("unreachable")

    def close(self) -> None:
        if self.connection is not None:
            self.connection.close()
            self.connection = None


@dataclass
class Tally:
    cases: int = 0
    reached: Counter[str] = field(default_factory=Counter)  # route -> count
    statuses: Counter[int] = field(default_factory=Counter)
    violations: list[str] = field(default_factory=list)

    def add(self, method: str, path: str, scope: str, outcome: Outcome) -> None:
        self.cases += 1
        self.statuses[outcome.status] += 1
        if outcome.route is None:
            return
        self.reached[outcome.route] += 1
        reached_class = route_class(outcome.route)
        if reached_class not in MAY_REACH[scope]:
            self.violations.append(
                f"{method} {path!r} with a key of scope {scope!r} reached Ollama's {outcome.route} "
                f"({reached_class or 'not in the route table'})"
            )


def hand_picked() -> Iterator[tuple[str, str, str]]:
    """(method, path, key scope): every hand-picked path with every method and scope."""
    for path in EXAMPLES:
        for method in METHODS:
            for scope in MAY_REACH:
                yield method, path, scope


def cases(seed_value: int, examples: int) -> Iterator[tuple[str, str, str]]:
    """(method, path, key scope): the hand-picked paths with every method and scope, then `examples`
    generated ones (the same for one seed)."""
    yield from hand_picked()
    if examples == 0:
        return
    drawn: list[tuple[str, str, str]] = []

    @seed(seed_value)
    @settings(max_examples=examples, deadline=None, database=None, suppress_health_check=list(HealthCheck))
    @given(request=requests(), scope=st.sampled_from(sorted(MAY_REACH)))
    def one(request: tuple[str, str], scope: str) -> None:
        drawn.append((*request, scope))

    one()
    yield from drawn


def run_differential(
    seed_value: int, examples: int, send: Callable[[str, str, str], Outcome], tally: Tally
) -> None:
    for method, path, scope in cases(seed_value, examples):
        tally.add(method, path, scope, send(method, path, scope))
