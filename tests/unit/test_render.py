"""Rendering: reviewed expected files, escaping rules, and the nginx site run by a real nginx.

The nginx tests start nginx from a temporary prefix on loopback ports in front of a fake Ollama (a small
HTTP server on loopback that records what reaches it), then talk to it over TLS with a certificate from
the fleet CA. They need the nginx binary (Debian: nginx-light) but no lab host.
"""

from __future__ import annotations

import contextlib
import json
import math
import re
import shutil
import socket
import ssl
import subprocess
import threading
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path, PurePosixPath
from typing import Any

import httpx
import pytest

from ollama_fleet import render
from ollama_fleet.pki import FleetCA
from ollama_fleet.settings import CustomModel, FleetSettings, settings_for_host

pytestmark = pytest.mark.unit

EXPECTED = Path(__file__).parent / "expected"
ALICE_KEY = "sk-alice.0123456789+abcdef"
CI_KEY = "ci-bot_ABCDEFGHIJKLMNOP/=="
ENVIRON = {"OLLAMA_FLEET_API_KEY_ALICE": ALICE_KEY, "OLLAMA_FLEET_API_KEY_CI_BOT": CI_KEY}
ORIGINS = ["https://app.example.com", "https://*.example.org"]
NJS_MODULE = "/usr/lib/nginx/modules/ngx_http_js_module.so"  # Debian's libnginx-mod-http-js


def fleet_settings(tmp_path: Path, **data: Any) -> FleetSettings:
    base: dict[str, Any] = {
        "nginx_server_names": ["ollama1.lan", "10.0.0.11"],
        "firewall_client_subnets": ["10.0.0.0/24"],
        "firewall_admin_subnets": ["10.0.9.0/24"],
        "auth_key_names": ["alice", "ci-bot"],
        "auth_key_policies": {"ci-bot": {"scope": "admin", "rate": "120r/m", "burst": 20, "concurrency": 4}},
        "auth_secrets_file": str(tmp_path / "no-secrets.json"),
        "ollama_origins": ORIGINS,
        "ollama_env": {
            "OLLAMA_KEEP_ALIVE": "30m",
            "OLLAMA_NUM_PARALLEL": "2",
            "HTTPS_PROXY": 'http://p:3128/"x"',
        },
    }
    return settings_for_host("ollama1", {**base, **data}, ENVIRON)


# --- reviewed expected files ---


@pytest.mark.parametrize(
    ("expected", "make"),
    [
        ("nginx-site.conf", render.render_nginx_site),
        ("ollama-override.conf", render.render_dropin),
        ("ollama.service", render.render_unit),
    ],
)
def test_rendered_file_matches_reviewed_expected(tmp_path: Path, expected: str, make: Any) -> None:
    assert make(fleet_settings(tmp_path)) == (EXPECTED / expected).read_text()


def test_api_keys_name_each_key_and_match_it_exactly(tmp_path: Path) -> None:
    text = render.render_api_keys(fleet_settings(tmp_path))
    assert text == (EXPECTED / "api-keys.conf").read_text()
    assert "# key: alice\n" in text and "# key: ci-bot\n" in text


def test_modelfile_from_gguf_path_with_system_and_sorted_parameters(tmp_path: Path) -> None:
    custom = CustomModel(
        name="vehicle-assistant",
        base="tiny",
        system='You answer questions about "vehicles".\nBe brief.',
        parameters={"temperature": 0.2, "stop": "<|end|>", "num_ctx": 2048},
    )
    text = render.render_modelfile(
        fleet_settings(tmp_path), custom, base_ref="/var/lib/ollama-fleet/tiny.gguf"
    )
    assert text == (EXPECTED / "Modelfile").read_text()


def test_modelfile_defaults_to_the_base_name(tmp_path: Path) -> None:
    custom = CustomModel(name="helper", base="llama3.2:1b")
    text = render.render_modelfile(fleet_settings(tmp_path), custom)
    assert text.splitlines()[1:] == ["FROM llama3.2:1b"]


@pytest.mark.parametrize("base_ref", ["", "/srv/tiny.gguf\nSYSTEM evil"])
def test_modelfile_refuses_a_base_that_is_not_one_line(tmp_path: Path, base_ref: str) -> None:
    custom = CustomModel(name="m", base="tiny")
    with pytest.raises(ValueError, match="must be one non-empty line"):
        render.render_modelfile(fleet_settings(tmp_path), custom, base_ref=base_ref)


@pytest.mark.parametrize(
    ("value", "written"),
    [("0.2", "0.2"), ("<|end|>", "<|end|>"), (" x", '" x"'), ('"q', '""""q"""'), ("a b", "a b")],
)
def test_modelfile_parameter_quoting(value: str, written: str) -> None:
    assert render.modelfile_value(value) == written


def test_user_template_dir_overrides_builtin_by_file_name(tmp_path: Path) -> None:
    (tmp_path / "ollama-override.conf.j2").write_text("[Service]\n# custom for {{ s.host }}\n")
    s = fleet_settings(tmp_path, nginx_template_dirs=[str(tmp_path)])
    assert render.render_dropin(s) == "[Service]\n# custom for ollama1\n"
    assert render.render_unit(s) == (EXPECTED / "ollama.service").read_text()  # others still built in


def test_tls_paths_follow_remote_dir(tmp_path: Path) -> None:
    paths = render.tls_paths(fleet_settings(tmp_path, tls_remote_dir="/srv/tls"))
    assert (paths.cert, paths.key, paths.ca) == (
        PurePosixPath("/srv/tls/fullchain.pem"),
        PurePosixPath("/srv/tls/privkey.pem"),
        PurePosixPath("/srv/tls/ca.pem"),
    )


# --- escaping helpers ---


@pytest.mark.parametrize(
    ("text", "quoted"),
    [("a=b", '"a=b"'), ('say "x"', '"say \\"x\\""'), ("100%", '"100%%"'), ("C:\\d", '"C:\\\\d"')],
)
def test_systemd_quote(text: str, quoted: str) -> None:
    assert render.systemd_quote(text) == quoted


@pytest.mark.parametrize("bad", ["a\nb", "a\rb", "a\x00b"])
def test_quoting_refuses_control_characters(bad: str) -> None:
    with pytest.raises(ValueError, match="control character"):
        render.systemd_quote(bad)
    with pytest.raises(ValueError, match="control character"):
        render.nginx_quote(bad)


@pytest.mark.parametrize(
    ("origin", "allowed", "refused"),
    [
        (
            "https://App.Example.com",
            ["https://app.example.com"],
            ["https://appXexample.com", "https://App.Example.com"],
        ),
        (
            "https://*.example.org",
            ["https://a.example.org", "https://a.b.example.org"],
            ["https://example.org.evil"],
        ),
        ("http://localhost:*", ["http://localhost:3000"], ["https://localhost:3000", "http://localhostevil"]),
        ("*", ["https://anything.test"], []),
    ],
)
def test_origin_regex_matches_like_ollama_or_narrower(
    origin: str, allowed: list[str], refused: list[str]
) -> None:
    pattern = render.origin_regex(origin)
    assert pattern.startswith("~")
    for candidate in allowed:
        assert re.search(pattern[1:], candidate), candidate
    for candidate in refused:
        assert not re.search(pattern[1:], candidate), candidate


def test_api_key_error_never_shows_the_key() -> None:
    with pytest.raises(ValueError) as caught:
        render.bearer_regex("bob", 'zq9"xv')
    assert "zq9" not in str(caught.value) and "'bob'" in str(caught.value)


def test_https_redirect_keeps_a_non_default_port() -> None:
    assert render.https_redirect(443) == "https://$host$request_uri"
    assert render.https_redirect(8443) == "https://$host:8443$request_uri"


def assert_systemd_accepts_the_unit_with(tmp_path: Path, dropin: str) -> None:
    """systemd-analyze verify parses the unit plus the drop-in's lines and reports no unknown key."""
    s = fleet_settings(tmp_path)
    unit = render.render_unit(s).replace(f"ExecStart={render.OLLAMA_BIN}", "ExecStart=/bin/true")
    path = tmp_path / "ollama.service"
    path.write_text(unit.replace("[Service]\n", "[Service]\n" + dropin.split("[Service]\n", 1)[1], 1))
    result = subprocess.run(
        [_binary("systemd-analyze"), "verify", "--man=no", str(path)], capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr
    assert "ollama.service" not in result.stderr, result.stderr  # warnings name the file


def test_systemd_accepts_the_rendered_unit(tmp_path: Path) -> None:
    assert_systemd_accepts_the_unit_with(tmp_path, render.render_dropin(fleet_settings(tmp_path)))


# --- the site under a real nginx ---


@dataclass
class FakeOllama:
    """Records every request that reaches 'Ollama' and answers like it for the paths the tests use."""

    server: ThreadingHTTPServer
    seen: list[dict[str, Any]] = field(default_factory=list)
    first_chunk_read: threading.Event = field(default_factory=threading.Event)
    streamed_before_finish: list[bool] = field(default_factory=list)
    loaded: list[str] = field(default_factory=list)  # what /api/ps lists

    @property
    def port(self) -> int:
        return int(self.server.server_address[1])


def _fake_ollama() -> FakeOllama:
    fake: FakeOllama

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, format: str, *args: Any) -> None:  # keep pytest output clean
            pass

        def _answer(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(length) if length else b""
            fake.seen.append(
                {"method": self.command, "path": self.path, "headers": dict(self.headers), "body": body}
            )
            if self.path == "/v1/chat/completions" and b'"stream"' in body:
                return self._stream()
            answer: dict[str, Any] = {"path": self.path}
            if self.path == "/api/ps":
                answer["models"] = [{"name": name, "model": name} for name in fake.loaded]
            text = b"Ollama is running" if self.path == "/" else json.dumps(answer).encode()
            self.send_response(200)
            self.send_header("Content-Type", "text/plain; charset=utf-8")
            self.send_header("Content-Length", str(len(text)))
            self.end_headers()
            self.wfile.write(text)

        def _stream(self) -> None:
            """Send one SSE chunk, then wait until the client has read it: only unbuffered proxying lets
            the client see it before the response ends."""
            self.send_response(200)
            self.send_header("Content-Type", "text/event-stream")
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            self._chunk(b'data: {"choices": [{"delta": {"content": "hi"}}]}\n\n')
            fake.streamed_before_finish.append(fake.first_chunk_read.wait(timeout=5))
            self._chunk(b"data: [DONE]\n\n")
            self._chunk(b"")

        def _chunk(self, data: bytes) -> None:
            self.wfile.write(f"{len(data):x}\r\n".encode() + data + b"\r\n")
            self.wfile.flush()

        do_GET = do_POST = do_HEAD = do_OPTIONS = do_DELETE = _answer

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    fake = FakeOllama(server)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return fake


@dataclass
class Proxy:
    https: str
    http: str
    upstream: FakeOllama
    ca_file: Path
    prefix: Path  # nginx's -p directory: its config and logs

    def client(self, **kwargs: Any) -> httpx.Client:
        return httpx.Client(base_url=self.https, verify=_strict_context(self.ca_file), **kwargs)


def _strict_context(ca_file: Path) -> ssl.SSLContext:
    """Trust only the fleet CA, with the strict X.509 checks Python 3.13 turns on by default."""
    context = ssl.create_default_context(cafile=ca_file)
    context.verify_flags |= ssl.VERIFY_X509_STRICT
    return context


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _binary(name: str) -> str:
    found = shutil.which(name) or shutil.which(name, path="/usr/sbin:/usr/bin:/sbin:/bin")
    if not found:
        pytest.fail(f"{name} is not installed; on Debian: apt-get install nginx-light systemd (.ci/run does)")
    return found


def _nginx_prefix(tmp: Path, s: FleetSettings, ca: FleetCA, loaded_check: bool = False) -> Path:
    # A client of these tests on 127.0.0.1 plays the gateway: the first-try header is honoured from it.
    """A self-contained nginx prefix holding the rendered site, its keys include and a host certificate."""
    tls = render.tls_paths(s)
    Path(tls.cert).parent.mkdir(parents=True)
    cert_pem, key_pem = ca.issue("localhost", ["localhost", "127.0.0.1", "::1"])
    Path(tls.cert).write_text(cert_pem)
    Path(tls.key).write_text(key_pem)
    keys = tmp / "api-keys.conf"
    keys.write_text(render.render_api_keys(s))
    allow_list_js = render.builtin_templates_dir() / render.MODEL_ALLOW_LIST_JS
    site = render.render_nginx_site(
        s,
        api_keys_path=PurePosixPath(keys),
        allow_list_js_path=PurePosixPath(allow_list_js),
        loaded_cache_dir=PurePosixPath(tmp / "loaded-cache"),
        loaded_check=loaded_check,
        gateway_addresses=["127.0.0.1"],
    )
    # The lab and real hosts listen on every address; the test listens on loopback only.
    site = re.sub(r"^(\s*listen )(\d+)", r"\g<1>127.0.0.1:\2", site, flags=re.MULTILINE)
    site = site.replace("listen [::]:", "listen [::1]:")
    site = site.replace("/var/log/nginx/", f"{tmp}/")
    (tmp / "site.conf").write_text(site)
    temp_paths = "\n".join(
        f"    {kind}_temp_path {tmp / kind};" for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")
    )
    # Debian loads njs through modules-enabled; this self-contained config loads it itself.
    njs = f"load_module {NJS_MODULE};\n" if "js_import" in site else ""
    (tmp / "nginx.conf").write_text(
        njs + "daemon off;\n"
        f"master_process off;\npid {tmp / 'nginx.pid'};\nerror_log {tmp / 'error.log'} info;\n"
        f"events {{ worker_connections 64; }}\n"
        f"http {{\n    access_log {tmp / 'access.log'};\n{temp_paths}\n    include {tmp / 'site.conf'};\n}}\n"
    )
    return tmp / "nginx.conf"


def nginx_config_test(conf: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [_binary("nginx"), "-t", "-p", str(conf.parent), "-c", str(conf)], capture_output=True, text=True
    )


@contextlib.contextmanager
def running_nginx(tmp: Path, ca: FleetCA, loaded_check: bool = False, **data: Any) -> Iterator[Proxy]:
    """nginx serving the rendered site on loopback in front of a fake Ollama, for the `with` block."""
    upstream = _fake_ollama()
    https_port, http_port = _free_port(), _free_port()
    s = fleet_settings(
        tmp,
        **{
            "nginx_server_names": ["localhost"],
            "nginx_https_port": https_port,
            "nginx_http_port": http_port,
            "nginx_http_redirect": True,
            "ollama_listen": f"127.0.0.1:{upstream.port}",
            "tls_remote_dir": str(tmp / "tls"),
            "firewall_enabled": False,
            **data,
        },
    )
    conf = _nginx_prefix(tmp, s, ca, loaded_check)
    process = subprocess.Popen(
        [_binary("nginx"), "-p", str(tmp), "-c", str(conf)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT
    )
    try:
        _wait_listening(https_port, process, tmp / "error.log")
        yield Proxy(
            f"https://127.0.0.1:{https_port}",
            f"http://127.0.0.1:{http_port}",
            upstream,
            ca.directory / "ca.pem",
            tmp,
        )
    finally:
        process.terminate()
        process.wait(timeout=10)
        upstream.server.shutdown()
        upstream.server.server_close()


def _wait_listening(port: int, process: subprocess.Popen[bytes], error_log: Path) -> None:
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        if process.poll() is not None:
            pytest.fail(
                f"nginx exited: {error_log.read_text() if error_log.exists() else process.returncode}"
            )
        with socket.socket() as sock:
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    pytest.fail("nginx did not start listening within 10 s")


@pytest.fixture(scope="module")
def proxy(tmp_path_factory: pytest.TempPathFactory, ca: FleetCA) -> Iterator[Proxy]:
    with running_nginx(tmp_path_factory.mktemp("nginx"), ca) as running:
        yield running


def _bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


@pytest.mark.parametrize(
    "data",
    [
        {},
        {"auth_enabled": False},
        {"auth_health_open": False, "ollama_origins": []},
        {
            "ollama_origins": ["*"],
            "nginx_hsts_max_age": 0,
            "nginx_http_redirect": True,
            "nginx_https_port": 8443,
            "nginx_http_port": 8080,
        },
        {"firewall_client_subnets": ["10.0.0.0/24", "fd0a:d5::/64"], "nginx_http_redirect": True},
    ],
    ids=[
        "default",
        "auth-off",
        "health-closed-no-origins",
        "wildcard-no-hsts-redirect-ports",
        "ipv6-clients",
    ],
)
def test_nginx_accepts_the_rendered_site(tmp_path: Path, ca: FleetCA, data: dict[str, Any]) -> None:
    s = fleet_settings(tmp_path, tls_remote_dir=str(tmp_path / "tls"), **data)
    result = nginx_config_test(_nginx_prefix(tmp_path, s, ca))
    assert result.returncode == 0, result.stderr
    assert "[warn]" not in result.stderr, result.stderr


def test_nginx_accepts_the_site_inside_debians_own_nginx_conf(tmp_path: Path, ca: FleetCA) -> None:
    """On a host the site is included by Debian's nginx.conf, whose http block has TLS defaults of its own."""
    debian_conf = Path("/etc/nginx/nginx.conf")
    if not debian_conf.is_file():
        pytest.fail("/etc/nginx/nginx.conf is missing; on Debian: apt-get install nginx-light")
    s = fleet_settings(tmp_path, tls_remote_dir=str(tmp_path / "tls"))
    _nginx_prefix(tmp_path, s, ca)
    site = (
        tmp_path / "site-as-deployed.conf"
    )  # listening on all addresses, as on a host (nginx -t binds nothing)
    allow_list_js = PurePosixPath(render.builtin_templates_dir() / render.MODEL_ALLOW_LIST_JS)
    site.write_text(
        render.render_nginx_site(
            s, api_keys_path=PurePosixPath(tmp_path / "api-keys.conf"), allow_list_js_path=allow_list_js
        )
    )
    conf = debian_conf.read_text()
    assert "include /etc/nginx/sites-enabled/*;" in conf
    wrapped = tmp_path / "debian-nginx.conf"
    wrapped.write_text(conf.replace("include /etc/nginx/sites-enabled/*;", f"include {site};"))
    # modules-enabled names modules relative to nginx's prefix (on Debian /usr/share/nginx/modules, a link)
    (tmp_path / "modules").symlink_to("/usr/lib/nginx/modules")
    result = nginx_config_test(wrapped)
    assert result.returncode == 0, result.stderr
    assert "[warn]" not in result.stderr, result.stderr


def test_nginx_rejects_a_broken_site_so_the_config_test_means_something(tmp_path: Path, ca: FleetCA) -> None:
    conf = _nginx_prefix(tmp_path, fleet_settings(tmp_path, tls_remote_dir=str(tmp_path / "tls")), ca)
    site = tmp_path / "site.conf"
    site.write_text(site.read_text().replace("proxy_buffering off;", "proxy_buffering of;"))
    assert nginx_config_test(conf).returncode != 0


def test_request_without_key_gets_openai_style_401(proxy: Proxy) -> None:
    with proxy.client() as client:
        response = client.post("/v1/chat/completions", json={"model": "m"})
    assert response.status_code == 401
    assert response.headers["content-type"] == "application/json"
    assert response.headers["www-authenticate"].startswith("Bearer")
    assert response.json()["error"]["code"] == "invalid_api_key"
    assert response.json()["error"]["type"] == "invalid_request_error"
    assert "access-control-allow-origin" not in response.headers


@pytest.mark.parametrize(
    "authorization",
    [
        f"Bearer {ALICE_KEY.upper()}",
        f"Bearer {ALICE_KEY}x",
        f"Bearer x{ALICE_KEY}",
        "Bearer",
        ALICE_KEY,
        f"Basic {ALICE_KEY}",
        f"Bearer {ALICE_KEY.replace('.', 'X')}",
    ],
)
def test_wrong_keys_are_refused(proxy: Proxy, authorization: str) -> None:
    before = len(proxy.upstream.seen)
    with proxy.client() as client:
        assert client.get("/api/tags", headers={"Authorization": authorization}).status_code == 401
    assert len(proxy.upstream.seen) == before


@pytest.mark.parametrize("authorization", [f"Bearer {ALICE_KEY}", f"bearer {ALICE_KEY}", f"Bearer {CI_KEY}"])
def test_each_key_reaches_ollama_with_the_loopback_host_and_without_the_key(
    proxy: Proxy, authorization: str
) -> None:
    with proxy.client() as client:
        response = client.get("/api/tags?x=1", headers={"Authorization": authorization})
    assert response.status_code == 200, response.text
    seen = proxy.upstream.seen[-1]
    assert seen["path"] == "/api/tags?x=1"
    assert seen["headers"]["Host"] == f"localhost:{proxy.upstream.port}"
    assert seen["headers"]["X-Forwarded-Proto"] == "https"
    assert seen["headers"]["X-Forwarded-Host"] == "127.0.0.1"
    assert seen["headers"]["X-Real-IP"] == "127.0.0.1"
    assert "Authorization" not in seen["headers"]


def test_streamed_tokens_reach_the_client_before_the_response_ends(proxy: Proxy) -> None:
    with (
        proxy.client(timeout=20) as client,
        client.stream(
            "POST", "/v1/chat/completions", json={"stream": True}, headers=_bearer(ALICE_KEY)
        ) as response,
    ):
        lines = response.iter_lines()
        assert next(lines).startswith("data: {")
        proxy.upstream.first_chunk_read.set()
        rest = [line for line in lines if line]
    assert rest == ["data: [DONE]"]
    assert proxy.upstream.streamed_before_finish == [True]


def test_health_is_open_and_asks_ollama_root(proxy: Proxy) -> None:
    with proxy.client() as client:
        response = client.get("/health")
        assert client.post("/health").status_code == 403
    assert response.status_code == 200 and response.text == "Ollama is running"
    assert proxy.upstream.seen[-1]["path"] == "/"


@pytest.mark.parametrize("origin", ["https://app.example.com", "https://chat.example.org"])
def test_preflight_from_allowed_origin_is_answered_by_nginx(proxy: Proxy, origin: str) -> None:
    before = len(proxy.upstream.seen)
    asked = "authorization,content-type,x-stainless-lang,x-stainless-retry-count"
    with proxy.client() as client:
        response = client.options(
            "/v1/chat/completions",
            headers={
                "Origin": origin,
                "Access-Control-Request-Method": "POST",
                "Access-Control-Request-Headers": asked,
            },
        )
    assert response.status_code == 204
    assert response.headers["access-control-allow-origin"] == origin
    assert response.headers["access-control-allow-headers"] == asked
    assert "POST" in response.headers["access-control-allow-methods"]
    assert response.headers["access-control-max-age"] == "7200"
    assert len(proxy.upstream.seen) == before


@pytest.mark.parametrize(
    "origin", ["https://evil.test", "https://appXexample.com", "http://app.example.com", None]
)
def test_preflight_from_other_origin_is_refused(proxy: Proxy, origin: str | None) -> None:
    headers = {"Access-Control-Request-Method": "POST", **({"Origin": origin} if origin else {})}
    with proxy.client() as client:
        response = client.options("/v1/chat/completions", headers=headers)
    assert response.status_code == 403
    assert "access-control-allow-origin" not in response.headers


def test_401_carries_cors_header_for_allowed_origin_only(proxy: Proxy) -> None:
    with proxy.client() as client:
        allowed = client.get("/v1/models", headers={"Origin": "https://app.example.com"})
        other = client.get("/v1/models", headers={"Origin": "https://evil.test"})
    assert allowed.status_code == other.status_code == 401
    assert allowed.headers["access-control-allow-origin"] == "https://app.example.com"
    assert "access-control-allow-origin" not in other.headers


def test_plain_http_redirects_to_https_keeping_host_port_and_uri(proxy: Proxy) -> None:
    https_port = proxy.https.rsplit(":", 1)[1]
    response = httpx.get(f"{proxy.http}/v1/models?a=b", headers={"Host": "ollama1.lan"})
    assert response.status_code == 301
    assert response.headers["location"] == f"https://ollama1.lan:{https_port}/v1/models?a=b"


def _handshake(proxy: Proxy, context: ssl.SSLContext) -> str | None:
    port = int(proxy.https.rsplit(":", 1)[1])
    with (
        socket.create_connection(("127.0.0.1", port), timeout=5) as raw,
        context.wrap_socket(raw, server_hostname="127.0.0.1") as tls,
    ):
        return tls.version()


def _client_context(proxy: Proxy) -> ssl.SSLContext:
    context = _strict_context(proxy.ca_file)
    context.set_ciphers("ALL:@SECLEVEL=0")  # let the client offer what the server must refuse
    return context


def test_tls_13_and_12_with_aead_are_accepted(proxy: Proxy) -> None:
    assert _handshake(proxy, _client_context(proxy)) == "TLSv1.3"
    context = _client_context(proxy)
    context.maximum_version = ssl.TLSVersion.TLSv1_2
    context.set_ciphers("ECDHE-ECDSA-AES128-GCM-SHA256")
    assert _handshake(proxy, context) == "TLSv1.2"


def test_cbc_suites_are_refused(proxy: Proxy) -> None:
    """TLS 1.0/1.1 need no test of their own: Debian's OpenSSL refuses them whatever nginx is told, and every
    suite the site lists exists only in TLS 1.2+ (the expected file pins ssl_protocols too)."""
    context = _client_context(proxy)
    context.maximum_version = ssl.TLSVersion.TLSv1_2
    context.set_ciphers("ECDHE-ECDSA-AES128-SHA:ECDHE-ECDSA-AES256-SHA384:@SECLEVEL=0")
    with pytest.raises(ssl.SSLError, match=r"HANDSHAKE_FAILURE|handshake failure"):
        _handshake(proxy, context)


@pytest.mark.parametrize(
    ("data", "path", "headers", "status"),
    [
        ({"auth_enabled": False}, "/api/tags", {}, 200),
        ({"auth_health_open": False}, "/health", {}, 401),
        ({"auth_health_open": False}, "/health", {"Authorization": f"Bearer {ALICE_KEY}"}, 200),
    ],
    ids=["auth-off-needs-no-key", "closed-health-needs-key", "closed-health-with-key"],
)
def test_auth_settings_change_what_needs_a_key(
    tmp_path: Path, ca: FleetCA, data: Mapping[str, Any], path: str, headers: dict[str, str], status: int
) -> None:
    with running_nginx(tmp_path, ca, **data) as running, running.client() as client:
        assert client.get(path, headers=headers).status_code == status


# --- the systemd sandbox ---


def test_the_sandbox_writes_only_home_and_models_and_keeps_gpus_reachable(tmp_path: Path) -> None:
    text = render.render_hardening(fleet_settings(tmp_path))
    lines = text.splitlines()
    assert "ReadWritePaths=/usr/share/ollama /usr/share/ollama/.ollama/models" in lines
    for directive in (
        "ProtectSystem=strict",
        "ProtectHome=yes",
        "NoNewPrivileges=yes",
        "CapabilityBoundingSet=",
    ):
        assert directive in lines
    active = [line.split("=")[0] for line in lines if line and not line.startswith("#")]
    assert not {"PrivateDevices", "MemoryDenyWriteExecute", "DevicePolicy"} & set(active)


def test_models_in_a_home_directory_turn_protect_home_off(tmp_path: Path) -> None:
    s = fleet_settings(tmp_path, ollama_models_dir="/home/ai/models")
    assert "ProtectHome=no" in render.render_hardening(s).splitlines()


def test_the_sandbox_parses_in_systemd_analyze_verify(tmp_path: Path) -> None:
    assert_systemd_accepts_the_unit_with(tmp_path, render.render_hardening(fleet_settings(tmp_path)))


@pytest.mark.parametrize("key", ["ollama_user", "ollama_group"])
def test_running_ollama_as_root_is_refused(tmp_path: Path, key: str) -> None:
    from ollama_fleet.settings import SettingsError

    with pytest.raises(SettingsError, match=rf"{key}: root would give `ollama serve`"):
        fleet_settings(tmp_path, **{key: "root"})


# --- key scopes, limits and nginx's own errors, on real nginx ---

ADMIN_ONLY = [
    ("POST", "/api/pull"),
    ("DELETE", "/api/delete"),
    ("POST", "/api/create"),
    ("POST", "/api/push"),
    ("POST", "/api/copy"),
    ("POST", "/api/blobs/sha256:" + "0" * 64),
    ("HEAD", "/api/blobs/sha256:" + "0" * 64),
    ("POST", "/api//pull"),  # nginx merges slashes before it decides
    ("POST", "/v1/chat/completions/../../../api/pull"),
    ("POST", "/api/%70ull"),
    ("POST", "/API/PULL"),
]
REFUSED = [
    ("GET", "/api/some-endpoint-ollama-adds-later"),
    ("POST", "/api/experimental/web_search"),
    ("POST", "/api/me"),
    ("POST", "/v1/audio/transcriptions"),
    ("POST", "/api/experimental/../experimental/web_fetch"),
]
INFERENCE = [
    ("POST", "/v1/chat/completions"),
    ("POST", "/v1/completions"),
    ("POST", "/v1/embeddings"),
    ("GET", "/v1/models"),
    ("GET", "/v1/models/tiny:latest"),
    ("POST", "/api/chat"),
    ("POST", "/api/generate"),
    ("POST", "/api/embed"),
    ("GET", "/api/tags"),
    ("POST", "/api/show"),
    ("GET", "/api/version"),
    ("GET", "/api/ps"),
    ("GET", "/api/status"),
    ("POST", "/v1/responses"),
    ("POST", "/v1/messages"),
    ("POST", "/v1/images/generations"),
]


def _raw_request(proxy: Proxy, method: str, path: str, key: str) -> httpx.Response:
    """The path exactly as written (no client-side dot-segment or percent normalization)."""
    with proxy.client(timeout=10) as client:
        request = client.build_request(method, "/", headers=_bearer(key), content=b"{}")
        request.url = request.url.copy_with(raw_path=path.encode())
        return client.send(request)


@pytest.mark.parametrize(("method", "path"), ADMIN_ONLY)
def test_an_inference_key_gets_403_naming_its_scope_on_admin_paths(
    proxy: Proxy, method: str, path: str
) -> None:
    before = len(proxy.upstream.seen)
    response = _raw_request(proxy, method, path, ALICE_KEY)
    assert response.status_code == 403
    assert len(proxy.upstream.seen) == before
    if method != "HEAD":
        error = response.json()["error"]
        assert error["code"] == "insufficient_scope" and error["type"] == "permission_error"
        assert "'alice' has the 'inference' scope" in error["message"]


@pytest.mark.parametrize(("method", "path"), REFUSED)
@pytest.mark.parametrize("key", [ALICE_KEY, CI_KEY], ids=["inference", "admin"])
def test_routes_that_leave_the_lan_or_ollama_lacks_are_refused_for_every_key(
    proxy: Proxy, method: str, path: str, key: str
) -> None:
    before = len(proxy.upstream.seen)
    response = _raw_request(proxy, method, path, key)
    assert _error_code(response, 403) == "endpoint_refused"
    assert len(proxy.upstream.seen) == before


@pytest.mark.parametrize(("method", "path"), INFERENCE)
def test_an_inference_key_reaches_the_inference_api(proxy: Proxy, method: str, path: str) -> None:
    response = _raw_request(proxy, method, path, ALICE_KEY)
    assert response.status_code == 200, response.text
    assert proxy.upstream.seen[-1]["path"] == path


@pytest.mark.parametrize(("method", "path"), [("POST", "/api/pull"), ("DELETE", "/api/delete")])
def test_an_admin_key_gets_through_everywhere(proxy: Proxy, method: str, path: str) -> None:
    response = _raw_request(proxy, method, path, CI_KEY)
    assert response.status_code == 200, response.text
    assert proxy.upstream.seen[-1]["path"] == path and proxy.upstream.seen[-1]["method"] == method


def logged_lines(log: Path, marker: str, wait: float = 5.0) -> list[str]:
    """The log's lines holding marker: nginx writes a request's line after the client has its response."""
    deadline = time.monotonic() + wait
    while True:
        lines = [line for line in log.read_text().splitlines() if marker in line]
        if lines or time.monotonic() > deadline:
            return lines
        time.sleep(0.05)


def test_the_access_log_names_the_key_never_its_value(proxy: Proxy) -> None:
    _raw_request(proxy, "GET", "/api/version?from=log-test", ALICE_KEY)
    log = proxy.prefix / "ollama-fleet.access.log"
    lines = logged_lines(log, "from=log-test")
    assert lines and " - key=alice [" in lines[-1]
    assert ALICE_KEY not in log.read_text() and CI_KEY not in log.read_text()


LIMITS = {
    "auth_key_policies": {"alice": {"rate": "1r/m"}, "ci-bot": {"scope": "admin", "concurrency": 1}},
    "nginx_api_max_body_size": "1k",
}


@pytest.fixture(scope="module")
def limited(tmp_path_factory: pytest.TempPathFactory, ca: FleetCA) -> Iterator[Proxy]:
    with running_nginx(tmp_path_factory.mktemp("nginx-limits"), ca, **LIMITS) as running:
        yield running


def _error_code(response: httpx.Response, status: int) -> str:
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/json"
    return str(response.json()["error"]["code"])


def test_a_key_over_its_rate_gets_429_json_and_others_do_not(limited: Proxy) -> None:
    with limited.client() as client:
        assert client.get("/api/version", headers=_bearer(ALICE_KEY)).status_code == 200
        over = client.get("/api/version", headers=_bearer(ALICE_KEY))
        other = client.get("/api/version", headers=_bearer(CI_KEY))
    assert _error_code(over, 429) == "rate_limit_exceeded"
    assert other.status_code == 200


def test_a_key_over_its_concurrency_gets_429_while_its_stream_runs(limited: Proxy) -> None:
    with (
        limited.client(timeout=20) as client,
        client.stream("POST", "/v1/chat/completions", json={"stream": True}, headers=_bearer(CI_KEY)) as held,
    ):
        lines = held.iter_lines()  # kept: a dropped iterator would close the stream
        next(lines)  # in flight: Ollama (the fake) holds the rest until told
        second = client.post("/api/pull", json={}, headers=_bearer(CI_KEY))
        limited.upstream.first_chunk_read.set()
    assert _error_code(second, 429) == "rate_limit_exceeded"


def test_a_body_over_the_api_limit_gets_413_json(limited: Proxy) -> None:
    with limited.client() as client:
        response = client.post("/api/show", content=b"x" * 4096, headers=_bearer(CI_KEY))
    assert _error_code(response, 413) == "request_too_large"


def test_ollama_down_gets_502_json(tmp_path: Path, ca: FleetCA) -> None:
    with running_nginx(tmp_path, ca) as proxy:
        proxy.upstream.server.shutdown()
        proxy.upstream.server.server_close()
        with proxy.client() as client:
            response = client.get("/api/tags", headers=_bearer(ALICE_KEY))
    assert _error_code(response, 502) == "upstream_unavailable"


def test_plain_http_is_closed_by_default_and_hsts_is_on(tmp_path: Path) -> None:
    site = render.render_nginx_site(fleet_settings(tmp_path))
    assert not re.search(r"^\s*listen 80\b", site, re.M)
    assert 'add_header Strict-Transport-Security "max-age=31536000" always;' in site


def test_ipv6_client_subnets_make_nginx_listen_on_ipv6_too(tmp_path: Path, ca: FleetCA) -> None:
    v4_only = render.render_nginx_site(fleet_settings(tmp_path))
    assert "[::]" not in v4_only
    data = {"firewall_client_subnets": ["10.0.0.0/24", "fd0a:d5::/64"], "firewall_enabled": True}
    with running_nginx(tmp_path, ca, **data) as proxy:
        site = (proxy.prefix / "site.conf").read_text()
        assert "listen [::1]:" in site  # [::] in the deploy, narrowed to loopback here
        port = proxy.https.rsplit(":", 1)[1]
        with httpx.Client(base_url=f"https://[::1]:{port}", verify=_strict_context(proxy.ca_file)) as client:
            answer = client.get("/v1/models", headers=_bearer(ALICE_KEY))
    assert answer.status_code == 200, answer.text


ALLOW_LISTED = {"auth_key_policies": {"alice": {"models": ["tiny", "library/vehicle-assistant:latest"]}}}


@pytest.fixture(scope="module")
def allow_listed(tmp_path_factory: pytest.TempPathFactory, ca: FleetCA) -> Iterator[Proxy]:
    with running_nginx(tmp_path_factory.mktemp("nginx-models"), ca, **ALLOW_LISTED) as running:
        yield running


def _chat(
    client: httpx.Client, key: str, body: object, headers: dict[str, str] | None = None
) -> httpx.Response:
    content = body if isinstance(body, bytes) else json.dumps(body).encode()
    return client.post("/v1/chat/completions", content=content, headers={**_bearer(key), **(headers or {})})


@pytest.mark.parametrize(
    "model", ["tiny", "tiny:latest", "vehicle-assistant", "registry.ollama.ai/library/tiny"]
)
def test_a_key_with_a_model_list_reaches_its_models_with_the_body_intact(
    allow_listed: Proxy, model: str
) -> None:
    body = {"model": model, "messages": [{"role": "user", "content": "hi"}]}
    with allow_listed.client() as client:
        response = _chat(client, ALICE_KEY, body)
    assert response.status_code == 200, response.text
    seen = allow_listed.upstream.seen[-1]
    assert seen["path"] == "/v1/chat/completions" and json.loads(seen["body"]) == body
    assert seen["headers"]["Host"] == f"localhost:{allow_listed.upstream.port}"
    assert "Authorization" not in seen["headers"]


@pytest.mark.parametrize(
    ("body", "status", "code"),
    [
        ({"model": "llama3.2:1b"}, 403, "model_not_allowed"),
        ({"model": "tiny:other-tag"}, 403, "model_not_allowed"),
        ({"messages": []}, 400, "model_required"),
    ],
    ids=["other-model", "other-tag", "no-model"],
)
def test_a_key_with_a_model_list_is_refused_other_models_in_json(
    allow_listed: Proxy, body: object, status: int, code: str
) -> None:
    before = len(allow_listed.upstream.seen)
    with allow_listed.client() as client:
        response = _chat(client, ALICE_KEY, body)
    assert _error_code(response, status) == code
    assert "'alice'" in response.json()["error"]["message"]
    assert "tiny:latest, vehicle-assistant:latest" in response.json()["error"]["message"]
    assert len(allow_listed.upstream.seen) == before  # Ollama never saw it


CLOUD_NAMES = ["gpt-oss:20b-cloud", "tiny:cloud", "tiny: Cloud ", "registry.ollama.ai/library/x:7B-CLOUD"]


@pytest.mark.parametrize("model", CLOUD_NAMES)
@pytest.mark.parametrize("key", [CI_KEY, ALICE_KEY], ids=["any-model", "allow-listed"])
@pytest.mark.parametrize("path", ["/api/chat", "/v1/chat/completions", "/api/show", "/v1/messages"])
def test_a_cloud_model_is_refused_for_every_key_on_every_route(
    allow_listed: Proxy, model: str, key: str, path: str
) -> None:
    before = len(allow_listed.upstream.seen)
    with allow_listed.client() as client:
        response = client.post(path, json={"model": model, "messages": []}, headers=_bearer(key))
        retrieve = client.get(f"/v1/models/{model.strip()}", headers=_bearer(key))
    assert _error_code(response, 403) == "cloud_disabled"
    assert f"'{model}' would run on ollama.com" in response.json()["error"]["message"]
    # A name with a '/' is no single path segment: no route of Ollama's takes it.
    assert _error_code(retrieve, 403) == ("endpoint_refused" if "/" in model else "cloud_disabled")
    assert len(allow_listed.upstream.seen) == before


def test_with_ollama_cloud_on_a_cloud_model_reaches_ollama(tmp_path: Path, ca: FleetCA) -> None:
    with running_nginx(tmp_path, ca, ollama_cloud=True) as proxy, proxy.client() as client:
        response = _chat(client, CI_KEY, {"model": "gpt-oss:20b-cloud"})
    assert response.status_code == 200, response.text


# Bodies Go's encoding/json reads as naming another model than JSON.parse does (or may): refused for every
# key, before any decision.
AMBIGUOUS = {
    "folded-key-last": b'{"model": "tiny", "Model": "llama3.2:1b"}',
    "folded-key-escaped": b'{"model": "tiny", "\\u004dODEL": "llama3.2:1b"}',
    "null-after-model": b'{"model": "llama3.2:1b", "model": null, "name": "tiny"}',
    "folded-name": b'{"NAME": "llama3.2:1b", "name": "tiny"}',
    "model-not-a-string": b'{"model": ["tiny"]}',
    "invalid-utf-8": b'{"model": "tiny", "messages": [{"role": "user", "content": "\xff"}]}',
    "not-json": b"not json",
    "trailing-data": b'{"model": "tiny"} {"model": "llama3.2:1b"}',
    "not-an-object": b'[{"model": "tiny"}]',
}


@pytest.mark.parametrize("body", AMBIGUOUS.values(), ids=AMBIGUOUS.keys())
@pytest.mark.parametrize("key", [CI_KEY, ALICE_KEY], ids=["any-model", "allow-listed"])
def test_a_body_go_could_read_otherwise_is_refused_before_any_decision(
    allow_listed: Proxy, body: bytes, key: str
) -> None:
    before = len(allow_listed.upstream.seen)
    with allow_listed.client() as client:
        response = _chat(client, key, body)
    assert _error_code(response, 400) == "ambiguous_request"
    assert "Ollama could read it otherwise than this proxy" in response.json()["error"]["message"]
    assert len(allow_listed.upstream.seen) == before


def test_retrieving_a_model_keeps_the_allow_list(allow_listed: Proxy) -> None:
    with allow_listed.client() as client:
        allowed = client.get("/v1/models/tiny", headers=_bearer(ALICE_KEY))
        other = client.get("/v1/models/llama3.2:1b", headers=_bearer(ALICE_KEY))
    assert allowed.status_code == 200, allowed.text
    assert _error_code(other, 403) == "model_not_allowed"


def test_listing_needs_no_model_and_keys_without_a_list_are_not_checked(allow_listed: Proxy) -> None:
    with allow_listed.client() as client:
        assert client.get("/v1/models", headers=_bearer(ALICE_KEY)).status_code == 200
        assert _chat(client, CI_KEY, {"model": "llama3.2:1b"}).status_code == 200


def test_a_stream_through_the_model_check_is_not_buffered(allow_listed: Proxy) -> None:
    body = {"model": "tiny", "stream": True}
    with (
        allow_listed.client(timeout=20) as client,
        client.stream("POST", "/v1/chat/completions", json=body, headers=_bearer(ALICE_KEY)) as response,
    ):
        lines = response.iter_lines()
        assert next(lines).startswith("data: {")
        allow_listed.upstream.first_chunk_read.set()
        rest = [line for line in lines if line]
    assert rest == ["data: [DONE]"]
    assert allow_listed.upstream.streamed_before_finish[-1] is True


def test_the_model_check_is_left_out_only_with_cloud_on_and_no_key_with_a_list(tmp_path: Path) -> None:
    cloud_on = fleet_settings(tmp_path, ollama_cloud=True, metrics_enabled=False)
    site = render.render_nginx_site(cloud_on)
    assert "js_import" not in site and "418" not in site and "refuse_cloud" not in site
    assert not render.needs_njs(cloud_on)
    # The metrics read each answer's tokens with njs; no request is refused for its model.
    metered = render.render_nginx_site(fleet_settings(tmp_path, ollama_cloud=True))
    assert "js_body_filter" in metered and "refuse_cloud" not in metered
    assert render.needs_njs(fleet_settings(tmp_path, ollama_cloud=True, **ALLOW_LISTED))
    assert render.needs_njs(fleet_settings(tmp_path))  # cloud off: every request's model is read


# --- a fleet gateway's first try: only a host that has the model loaded takes it ---

IF_LOADED = "X-Ollama-Fleet-If-Loaded"
ON_TINYS_WEIGHTS = {
    "models_pull": ["tiny", "vehicle-assistant"],
    "models_custom": [
        {"name": "tiny-chat", "base": "tiny", "system": "Be brief."},  # runs on tiny's runner
        {"name": "tiny-1t", "base": "tiny", "parameters": {"num_thread": 1}},  # loads a runner of its own
    ],
}


def test_models_on_the_same_weights_are_runner_mates(tmp_path: Path) -> None:
    mates = fleet_settings(tmp_path, **ON_TINYS_WEIGHTS).models.runner_mates()
    assert mates == {
        "tiny:latest": ["tiny-chat:latest", "tiny:latest"],
        "tiny-chat:latest": ["tiny-chat:latest", "tiny:latest"],
    }


@pytest.fixture(scope="module")
def behind_gateway(tmp_path_factory: pytest.TempPathFactory, ca: FleetCA) -> Iterator[Proxy]:
    tmp = tmp_path_factory.mktemp("nginx-loaded")
    with running_nginx(tmp, ca, loaded_check=True, **ALLOW_LISTED, **ON_TINYS_WEIGHTS) as running:
        running.upstream.loaded.append("tiny:latest")
        yield running


@pytest.mark.parametrize("key", [CI_KEY, ALICE_KEY], ids=["any-model", "allow-listed"])
def test_a_gateways_first_try_is_taken_only_with_the_model_loaded(behind_gateway: Proxy, key: str) -> None:
    """Ollama's /api/ps lists tiny: a first try for tiny reaches Ollama; one for vehicle-assistant gets 404
    model_not_loaded without reaching it; a request without the header is served as always."""
    vehicle = {"model": "vehicle-assistant", "messages": []}
    before = len(behind_gateway.upstream.seen)
    with behind_gateway.client() as client:
        loaded = _chat(client, key, {"model": "tiny", "messages": []}, {IF_LOADED: "tiny:latest"})
        not_loaded = _chat(client, key, vehicle, {IF_LOADED: "vehicle-assistant:latest"})
        plain = _chat(client, key, vehicle)
    assert loaded.status_code == 200, loaded.text
    assert _error_code(not_loaded, 404) == "model_not_loaded"
    assert "'vehicle-assistant:latest' is not loaded on this host" in not_loaded.json()["error"]["message"]
    assert plain.status_code == 200, plain.text
    chats = [s for s in behind_gateway.upstream.seen[before:] if s["path"] != "/api/ps"]
    assert [s["path"] for s in chats] == ["/v1/chat/completions", "/v1/chat/completions"]
    assert json.loads(chats[0]["body"])["model"] == "tiny" and json.loads(chats[1]["body"]) == vehicle


def test_the_first_try_header_of_anyone_but_a_gateway_is_ignored_and_never_reaches_ollama(
    behind_gateway: Proxy,
) -> None:
    """From 127.0.0.2 (not a gateway's address) the header neither steers nor probes: vehicle-assistant,
    not loaded, is served as a plain request; from the gateway's address it is declined."""
    port = behind_gateway.https.rsplit(":", 1)[1]
    transport = httpx.HTTPTransport(verify=_strict_context(behind_gateway.ca_file), local_address="127.0.0.2")
    vehicle = {"model": "vehicle-assistant", "messages": []}
    with httpx.Client(base_url=f"https://127.0.0.1:{port}", transport=transport) as client:
        from_client = _chat(client, CI_KEY, vehicle, {IF_LOADED: "vehicle-assistant:latest"})
    with behind_gateway.client() as client:
        from_gateway = _chat(client, CI_KEY, vehicle, {IF_LOADED: "vehicle-assistant:latest"})
    assert from_client.status_code == 200, from_client.text
    assert IF_LOADED not in behind_gateway.upstream.seen[-1]["headers"]
    assert _error_code(from_gateway, 404) == "model_not_loaded"


def test_a_first_try_looks_at_api_ps_once_for_a_burst(tmp_path: Path, ca: FleetCA) -> None:
    """A burst of first tries costs Ollama one look at /api/ps; a model loaded since is seen 2 s later."""
    with running_nginx(tmp_path, ca, loaded_check=True) as proxy, proxy.client() as client:
        started = time.monotonic()
        burst = [_chat(client, CI_KEY, {"model": "tiny"}, {IF_LOADED: "tiny:latest"}) for _ in range(10)]
        looks = math.ceil(time.monotonic() - started) + 1  # the most a one-second cache can need
        asked = sum(s["path"] == "/api/ps" for s in proxy.upstream.seen)
        assert [_error_code(r, 404) for r in burst] == ["model_not_loaded"] * 10
        assert 1 <= asked <= min(looks, 9), asked
        look = next(s for s in proxy.upstream.seen if s["path"] == "/api/ps")
        assert look["method"] == "GET" and look["body"] == b""
        assert look["headers"]["Host"] == f"localhost:{proxy.upstream.port}"  # Ollama's own name
        assert "Authorization" not in look["headers"]  # the key stays at nginx
        proxy.upstream.loaded.append("tiny:latest")
        time.sleep(2.1)  # nginx keeps it to the end of the next whole second
        loaded = _chat(client, CI_KEY, {"model": "tiny"}, {IF_LOADED: "tiny:latest"})
    assert loaded.status_code == 200, loaded.text


def test_a_first_try_counts_a_model_on_the_same_weights_as_loaded(behind_gateway: Proxy) -> None:
    """/api/ps lists tiny only (Ollama names the runner after the model that loaded it): tiny-chat runs on
    it and is taken; tiny-1t would load a runner of its own and is declined."""
    with behind_gateway.client() as client:
        mate = _chat(client, CI_KEY, {"model": "tiny-chat"}, {IF_LOADED: "tiny-chat:latest"})
        own_runner = _chat(client, CI_KEY, {"model": "tiny-1t"}, {IF_LOADED: "tiny-1t:latest"})
    assert mate.status_code == 200, mate.text
    assert _error_code(own_runner, 404) == "model_not_loaded"


def test_a_first_try_keeps_the_allow_list_and_streams_unbuffered(behind_gateway: Proxy) -> None:
    with behind_gateway.client(timeout=20) as client:
        refused = _chat(client, ALICE_KEY, {"model": "llama3.2:1b"}, {IF_LOADED: "llama3.2:1b"})
        with client.stream(
            "POST",
            "/v1/chat/completions",
            json={"model": "tiny", "stream": True},
            headers={**_bearer(ALICE_KEY), IF_LOADED: "tiny:latest"},
        ) as response:
            lines = response.iter_lines()
            assert next(lines).startswith("data: {")
            behind_gateway.upstream.first_chunk_read.set()
            rest = [line for line in lines if line]
    behind_gateway.upstream.first_chunk_read.clear()
    assert _error_code(refused, 403) == "model_not_allowed"
    assert rest == ["data: [DONE]"]
    assert behind_gateway.upstream.streamed_before_finish[-1] is True


def test_a_first_try_goes_on_to_ollama_when_it_cannot_tell(tmp_path: Path, ca: FleetCA) -> None:
    """/api/ps unreadable (Ollama down): the request is not refused as not loaded; Ollama's own state
    answers it (here nginx's 502, which the gateway skips like any failing host)."""
    with running_nginx(tmp_path, ca, loaded_check=True) as proxy:
        proxy.upstream.server.shutdown()
        proxy.upstream.server.server_close()
        with proxy.client() as client:
            response = _chat(client, CI_KEY, {"model": "tiny"}, {IF_LOADED: "tiny:latest"})
    assert _error_code(response, 502) == "upstream_unavailable"


def test_the_loaded_check_is_there_only_for_a_gateways_hosts(tmp_path: Path) -> None:
    s = fleet_settings(tmp_path, ollama_cloud=True, metrics_enabled=False)
    assert "419" not in render.render_nginx_site(s) and not render.needs_njs(s)
    site = render.render_nginx_site(s, loaded_check=True, gateway_addresses=["10.0.0.5", "fd00:0::5"])
    assert "if ($ollama_fleet_if_loaded) {" in site and "js_content ollama_fleet_models.ifLoaded;" in site
    assert '"10.0.0.5" $http_x_ollama_fleet_if_loaded;' in site and '"fd00::5" $http_x' in site
    assert render.needs_njs(s, loaded_check=True)
