"""A fake fleet host for the verify tests: nginx + Ollama as a client sees them, on 127.0.0.1 only.

It serves Ollama's routes (/, /api/version, /api/tags, /v1/models, /v1/chat/completions with SSE), answers
CORS preflights and checks Bearer keys like the fleet's nginx site, over TLS with a certificate from a fleet
CA. Each attribute is a knob that turns one fault on, so a test can prove which check catches it.
"""

from __future__ import annotations

import json
import socket
import ssl
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from ollama_fleet.pki import FleetCA

UNAUTHORIZED = {"error": {"message": "Missing or invalid API key.", "type": "invalid_request_error"}}


@dataclass
class Behaviour:
    keys: set[str] = field(default_factory=set)  # accepted keys; empty: no key check at all
    models: list[str] = field(default_factory=lambda: ["tiny:latest"])
    version: str = "0.24.0"
    origins: list[str] = field(default_factory=lambda: ["https://app.example.com"])
    root_status: int = 200  # 403: Ollama refusing the Host header; 502: Ollama down
    stream_chunks: int = 64
    stream_gap: float = 0.002  # seconds between chunks; 0 with buffered=True: one burst at the end
    buffered: bool = False
    keyless_allowed: bool = False  # nginx not enforcing keys
    cors_echo_any: bool = False  # nginx echoing every Origin
    admin_keys: set[str] = field(default_factory=set)  # keys with the admin scope; the others: inference
    scopes_enforced: bool = True  # False: nginx letting inference keys reach admin paths
    tokens_seen: list[str] = field(default_factory=list)
    vram_share: float = 0.0  # /api/ps: the share of each loaded model in VRAM (0: a CPU host; 1: all on GPU)
    chat_seconds: float = 0.0  # how long a non-streamed completion takes
    loaded: list[str] | None = None  # /api/ps: the loaded models (None: every model)
    generated: list[str] = field(default_factory=list)  # the model of each completion asked, in order
    shown: list[str] = field(default_factory=list)  # the model of each /api/show asked
    generating: int = 0  # completions in flight now
    most_generating: int = 0  # the most completions ever in flight at once


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _Server

    def log_message(self, format: str, *args: Any) -> None:
        pass

    @property
    def b(self) -> Behaviour:
        return self.server.behaviour

    def _send(
        self, status: int, body: bytes = b"", content_type: str = "application/json", **headers: str
    ) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        for name, value in headers.items():
            self.send_header(name.replace("_", "-"), value)
        self.end_headers()
        self.wfile.write(body)

    def _json(self, status: int, payload: object) -> None:
        self._send(status, json.dumps(payload).encode())

    def _authorized(self) -> bool:
        if not self.b.keys or self.b.keyless_allowed:
            return True
        header = self.headers.get("Authorization", "")
        self.b.tokens_seen.append(header)
        return header.startswith("Bearer ") and header.removeprefix("Bearer ") in self.b.keys

    def do_OPTIONS(self) -> None:
        origin = self.headers.get("Origin", "")
        if self.b.cors_echo_any or origin in self.b.origins:
            self._send(
                204,
                Access_Control_Allow_Origin=origin,
                Access_Control_Allow_Methods="GET, POST, OPTIONS",
                Access_Control_Allow_Headers=self.headers.get("Access-Control-Request-Headers", ""),
            )
        else:
            self._json(403, {"error": {"message": "Origin not allowed"}})

    def do_GET(self) -> None:
        if self.path in ("/", "/health"):
            if self.path == "/" and not self._authorized():
                return self._json(401, UNAUTHORIZED)
            if self.b.root_status != 200:
                return self._send(self.b.root_status, b"", "text/plain")
            return self._send(200, b"Ollama is running", "text/plain; charset=utf-8")
        if not self._authorized():
            return self._json(401, UNAUTHORIZED)
        if self.b.root_status != 200:
            return self._send(self.b.root_status, b"")
        if self.path == "/api/version":
            return self._json(200, {"version": self.b.version})
        if self.path == "/api/ps":
            size = 2_000_000_000
            names = self.b.models if self.b.loaded is None else self.b.loaded
            loaded = [{"name": m, "size": size, "size_vram": int(size * self.b.vram_share)} for m in names]
            return self._json(200, {"models": loaded})
        if self.path == "/api/tags":
            return self._json(200, {"models": [{"name": m, "model": m} for m in self.b.models]})
        if self.path == "/v1/models":
            return self._json(
                200, {"object": "list", "data": [{"id": m, "object": "model"} for m in self.b.models]}
            )
        self._json(404, {"error": "not found"})

    def do_POST(self) -> None:
        request = json.loads(self.rfile.read(int(self.headers.get("Content-Length", "0"))) or b"{}")
        if not self._authorized():
            return self._json(401, UNAUTHORIZED)
        if self.path == "/api/copy":
            key = self.headers.get("Authorization", "").removeprefix("Bearer ")
            if self.b.scopes_enforced and key not in self.b.admin_keys:
                return self._json(403, {"error": {"code": "insufficient_scope", "type": "permission_error"}})
            return self._json(400, {"error": "source and destination are required"})
        if self.path == "/api/show":
            return self._show(str(request.get("model")))
        if self.path != "/v1/chat/completions":
            return self._json(404, {"error": "not found"})
        if request.get("model") not in self.b.models:
            return self._json(404, {"error": {"message": f"model '{request.get('model')}' not found"}})
        with self.server.lock:
            self.b.generated.append(str(request.get("model")))
            self.b.generating += 1
            self.b.most_generating = max(self.b.most_generating, self.b.generating)
        try:
            self._complete(request)
        finally:
            with self.server.lock:
                self.b.generating -= 1

    def _show(self, model: str) -> None:
        self.b.shown.append(model)
        if model not in self.b.models:
            return self._json(404, {"error": f"model '{model}' not found"})
        self._json(200, {"modelfile": f"FROM {model}", "details": {"format": "gguf", "family": "llama"}})

    def _complete(self, request: dict[str, Any]) -> None:
        if not request.get("stream"):
            time.sleep(self.b.chat_seconds)
            reply = {"choices": [{"index": 0, "message": {"role": "assistant", "content": "hello fleet"}}]}
            return self._json(200, reply)
        self._stream(min(int(request.get("max_tokens") or 8), self.b.stream_chunks))

    def _stream(self, count: int) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        events = [_event(f" word{i}") for i in range(count)] + [b"data: [DONE]\n\n"]
        if self.b.buffered:  # what a buffering proxy does: hold everything, release it at the end
            time.sleep(self.b.stream_gap * count)
            self._chunk(b"".join(events))
        else:
            for event in events:
                self._chunk(event)
                time.sleep(self.b.stream_gap)
        self.wfile.write(b"0\r\n\r\n")
        self.wfile.flush()

    def _chunk(self, data: bytes) -> None:
        self.wfile.write(b"%x\r\n%s\r\n" % (len(data), data))
        self.wfile.flush()


def _event(text: str) -> bytes:
    chunk = {"object": "chat.completion.chunk", "choices": [{"index": 0, "delta": {"content": text}}]}
    return b"data: " + json.dumps(chunk).encode() + b"\n\n"


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    behaviour: Behaviour
    lock = threading.Lock()


class _Server6(_Server):
    address_family = socket.AF_INET6


@dataclass
class FakeHost:
    port: int
    behaviour: Behaviour
    ca_dir: Path


@contextmanager
def fake_host(
    ca_dir: Path,
    behaviour: Behaviour | None = None,
    sans: tuple[str, ...] = ("127.0.0.1",),
    tls: bool = True,
    ipv6: bool = False,
) -> Iterator[FakeHost]:
    """Serve a fake host on 127.0.0.1 (and on ::1, same port, with ipv6) until the block ends: over TLS with
    a certificate from the fleet CA in ca_dir, or (tls=False) plain HTTP like Ollama itself."""
    ca = FleetCA.load_or_create(ca_dir)
    cert_pem, key_pem = ca.issue("fake-host", list(sans))
    material = ca_dir / "fake-host"
    material.mkdir(exist_ok=True)
    (material / "cert.pem").write_text(cert_pem)
    (material / "key.pem").write_text(key_pem)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(material / "cert.pem", material / "key.pem")
    servers = [_Server(("127.0.0.1", 0), _Handler)]
    if ipv6:
        servers.append(_Server6(("::1", servers[0].server_address[1]), _Handler))
    for server in servers:
        server.behaviour = behaviour or servers[0].behaviour
        if tls:
            server.socket = context.wrap_socket(server.socket, server_side=True)
        threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield FakeHost(port=servers[0].server_address[1], behaviour=servers[0].behaviour, ca_dir=ca_dir)
    finally:
        for server in servers:
            server.shutdown()
            server.server_close()
