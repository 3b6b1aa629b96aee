"""The body differential: request bodies generated to make JavaScript's JSON.parse (the njs check) and Go's
encoding/json (Ollama) disagree, each sent through the real njs module in a real nginx and read by a Go
program with Ollama's request shapes (body_reader/). Used by test_body_differential.py (a fixed seed, a
budget under a minute) and benchmarks/body_differential.py (a longer run that prints the counts)."""

from __future__ import annotations

import base64
import json
import os
import subprocess
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hypothesis import HealthCheck, given, seed, settings
from hypothesis import strategies as st

from ollama_fleet.lab.artifacts import go_binary

READER_SOURCE = Path(__file__).parent / "body_reader"
ROUTES = ["/api/chat", "/api/generate", "/api/embed", "/api/show", "/v1/chat/completions", "/v1/messages"]
ALLOWED = ("tiny", "library/vehicle-assistant:latest")
"""The allow-list of the key the differential sends with (another key has none)."""

MODEL_NAMES = [
    "tiny",
    "tiny:latest",
    "library/tiny",
    "registry.ollama.ai/library/tiny:latest",
    "vehicle-assistant",
    "llama3.2:1b",
    "big",
    "x:cloud",
    "tiny:cloud",
    "tiny:latest-cloud",
    "gpt-oss:20b-CLOUD",
    "tiny: cloud ",
    "tiny:local",
    " tiny",
    "tiny ",
    "TINY",
    "tiny\u0000",
    "",
]
KEY_SPELLINGS = [
    "model",
    "name",
    "Model",
    "MODEL",
    "mOdEl",
    "Name",
    "NAME",
    "model ",
    " model",
    "models",
    "mode",
    "messages",
    "prompt",
    "stream",
    "options",
    "input",
    "max_tokens",
    "\u017fystem",  # Go folds U+017F to s: "system"
    "\u212aeep_alive",  # and U+212A to k
    "m\u00f6del",
]
WHITESPACE = ["", " ", "\n", "\t", "\r\n", "  "]
NOT_JSON_SPACE = ["\u00a0", "\f", "\u2028", "\ufeff"]


def _escaped(text: str, how: int) -> str:
    """`text` as a JSON string literal: plain (0), every letter \\u-escaped (1), one character escaped (2),
    '/' escaped (3), surrogate escapes for non-BMP (4)."""
    if how == 1:
        inner = "".join(f"\\u{ord(c):04x}" if c.isalpha() and ord(c) < 0x10000 else _plain(c) for c in text)
    elif how == 2 and text and ord(text[0]) < 0x10000:
        inner = f"\\u{ord(text[0]):04x}" + "".join(_plain(c) for c in text[1:])
    elif how == 3:
        inner = "".join(_plain(c) for c in text).replace("/", "\\/")
    elif how == 4:
        inner = "".join(_surrogates(c) if ord(c) > 0xFFFF else _plain(c) for c in text)
    else:
        inner = "".join(_plain(c) for c in text)
    return f'"{inner}"'


def _surrogates(c: str) -> str:
    high, low = divmod(ord(c) - 0x10000, 0x400)
    return f"\\u{0xD800 + high:04x}\\u{0xDC00 + low:04x}"


def _plain(c: str) -> str:
    if c in '"\\':
        return "\\" + c
    if ord(c) < 0x20:
        return f"\\u{ord(c):04x}"
    return c


@st.composite
def json_values(draw: st.DrawFn, depth: int = 0) -> str:
    """A JSON value as text: model-ish strings, other scalars, and (shallow) nesting."""
    kind = draw(st.integers(0, 15 if depth < 2 else 12))
    if kind <= 9:
        text = draw(st.sampled_from(MODEL_NAMES) | st.text(max_size=12))
        if draw(st.integers(0, 60)) == 0:
            text = text + "a" * draw(st.integers(1000, 40000))  # very long values
        return _escaped(text, draw(st.integers(0, 4)))
    if kind == 10:
        return draw(st.sampled_from(["null", "true", "false", "0", "-1.5e3", "1E400", "[]", "{}"]))
    if kind == 11:
        return str(draw(st.integers(-(2**70), 2**70)))
    if kind == 12:
        return '"' + draw(st.sampled_from(["tiny", "big", "x:cloud"])) + '"'
    if kind in (13, 14):
        items = draw(st.lists(json_values(depth + 1), max_size=3))
        return "[" + ",".join(items) + "]"
    members = draw(st.lists(st.tuples(st.sampled_from(KEY_SPELLINGS), json_values(depth + 1)), max_size=3))
    return "{" + ",".join(f"{_escaped(k, 0)}:{v}" for k, v in members) + "}"


COMMON_KEYS = ["model", "model", "model", "name", "messages", "prompt", "stream", "options"]


@st.composite
def keys(draw: st.DrawFn) -> str:
    """Mostly the keys clients send; often enough a spelling Go folds, or any text."""
    kind = draw(st.integers(0, 11))
    if kind < 8:
        return draw(st.sampled_from(COMMON_KEYS))
    return draw(st.sampled_from(KEY_SPELLINGS) if kind < 11 else st.text(max_size=6))


@st.composite
def bodies(draw: st.DrawFn) -> bytes:
    """A request body: mostly a JSON object with duplicated, case-folded and escaped keys, odd values and
    whitespace; sometimes with a BOM, trailing data, invalid UTF-8 or a top-level non-object."""
    members = draw(st.lists(st.tuples(keys(), st.integers(0, 4), json_values()), min_size=0, max_size=6))
    space = draw(st.sampled_from(WHITESPACE if draw(st.integers(0, 30)) else NOT_JSON_SPACE))
    text = "{" + space + ("," + space).join(f"{_escaped(k, how)}{space}:{space}{v}" for k, how, v in members)
    text += space + "}"
    mutation = draw(st.integers(0, 40))
    if mutation == 0:
        text = "\ufeff" + text
    elif mutation == 1:
        text += draw(st.sampled_from([" x", " {}", '{"model":"big"}', "\u0000", "]"]))
    elif mutation == 2:
        text = draw(st.sampled_from(["[", '"'])) + text + draw(st.sampled_from(["]", '"']))
    elif mutation == 3:
        text = draw(json_values())
    raw = text.encode("utf-8", "surrogatepass")
    if mutation == 4 and raw:
        at = draw(st.integers(0, len(raw) - 1))
        raw = raw[:at] + draw(st.sampled_from([b"\xff", b"\xc3", b"\xed\xa0\x80", b"\xc0\xaf"])) + raw[at:]
    return raw


@dataclass(frozen=True)
class GoReading:
    ok: bool  # Ollama decodes the body (else it answers 400 itself)
    model: str
    named: bool  # not blank: Ollama answers 400 "model is required" to a blank one
    cloud: bool
    middleware_ok: bool
    middleware_model: str
    middleware_cloud: bool


class GoReader:
    """The Go program, built once (offline: the standard library only) and kept running."""

    def __init__(self, build_dir: Path) -> None:
        binary = build_dir / "bodyreader"
        env = {**os.environ, "GOTOOLCHAIN": "local", "GOPROXY": "off", "GOFLAGS": "", "CGO_ENABLED": "0"}
        subprocess.run(
            [go_binary(), "build", "-o", str(binary), "."],
            cwd=READER_SOURCE,
            env=env,
            check=True,
            capture_output=True,
        )
        self.process = subprocess.Popen(
            [str(binary)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, bufsize=1
        )

    def read(self, route: str, body: bytes) -> GoReading:
        assert self.process.stdin and self.process.stdout
        self.process.stdin.write(f"{route} {base64.b64encode(body).decode()}\n")
        self.process.stdin.flush()
        return GoReading(**json.loads(self.process.stdout.readline()))

    def close(self) -> None:
        if self.process.stdin:
            self.process.stdin.close()
        self.process.wait(timeout=10)


def js_listed_name(name: str) -> str:
    """The allow-list's normalization (listedName in the njs module), applied to what Go read."""
    last = name.split("/")[-1]
    tagged = name if ":" in last else name + ":latest"
    parts = tagged.split("://", 1)[-1].split("/")
    if len(parts) == 3 and parts[0].lower() == "registry.ollama.ai":
        parts = parts[1:]
    if len(parts) == 2 and parts[0].lower() == "library":
        parts = parts[1:]
    return "/".join(parts)


ALLOWED_LISTED = {js_listed_name(name) for name in ALLOWED}


def violation(go: GoReading, allow_listed: bool) -> str | None:
    """Why a request that reached Ollama should not have (None: Ollama refuses it itself, or it is fine)."""
    if go.middleware_ok and go.middleware_cloud:
        return f"Ollama's cloud middleware sends {go.middleware_model!r} to ollama.com"
    if not go.ok or not go.named:
        return None
    if go.cloud:
        return f"Ollama's handler sends {go.model!r} to ollama.com"
    if allow_listed and js_listed_name(go.model) not in ALLOWED_LISTED:
        return f"Ollama uses {go.model!r}, which the key's allow-list does not hold"
    return None


@dataclass
class Tally:
    """Counts of one run: cases, what the proxy did, and where Go and JavaScript read apart."""

    cases: int = 0
    reached: int = 0
    refused: dict[str, int] = field(default_factory=dict)
    parsers_disagree: int = 0  # JSON.parse (as Python's json, which reads alike) vs Go: another model
    violations: list[str] = field(default_factory=list)

    def add(
        self,
        route: str,
        body: bytes,
        status: int,
        code: str | None,
        reached: bool,
        go: GoReading,
        why: str | None,
    ) -> None:
        self.cases += 1
        self.reached += reached
        if not reached:
            self.refused[f"{status} {code}"] = self.refused.get(f"{status} {code}", 0) + 1
        if go.ok and js_model(body) not in (None, go.model):
            self.parsers_disagree += 1
        if why:
            self.violations.append(f"{route} {body[:200]!r}: {why}")


def js_model(body: bytes) -> str | None:
    """The model JSON.parse reads (`body.model || body.name`), None when it reads none."""
    try:
        value: Any = json.loads(body.decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        return None
    if not isinstance(value, dict):
        return None
    model = value.get("model") or value.get("name")
    return model if isinstance(model, str) else None


def run_differential(seed_value: int, examples: int, case: Callable[[str, bytes, bool], None]) -> None:
    """`case(route, body, allow_listed)` on `examples` generated requests, the same ones for one seed."""

    @seed(seed_value)
    @settings(max_examples=examples, deadline=None, database=None, suppress_health_check=list(HealthCheck))
    @given(route=st.sampled_from(ROUTES), body=bodies(), allow_listed=st.booleans())
    def one(route: str, body: bytes, allow_listed: bool) -> None:
        case(route, body, allow_listed)

    one()
