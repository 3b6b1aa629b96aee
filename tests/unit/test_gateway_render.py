"""The gateway: its plan from the fleet's settings, and its nginx server run by a real nginx on loopback.

The fleet here is four "hosts" inside one test nginx: each a TLS server on its own loopback address with a
certificate from the fleet CA naming only that host, proxying to a fake Ollama that records which host a
request came through; one of them answers 503 to everything. The gateway server is the one the deploy
renders into a gateway host's site, with its listen addresses moved to loopback.
"""

from __future__ import annotations

import contextlib
import json
import re
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

import httpx
import pytest
from test_render import (
    ALICE_KEY,
    CI_KEY,
    ENVIRON,
    NJS_MODULE,
    FakeOllama,
    _bearer,
    _binary,
    _fake_ollama,
    _free_port,
    _strict_context,
    _wait_listening,
    logged_lines,
)

from ollama_fleet import render
from ollama_fleet.deploys.fleet import gateway_problems
from ollama_fleet.gateway import (
    GatewayError,
    GatewayPlan,
    gateway_plan,
    member_confs,
    with_gateway_group,
)
from ollama_fleet.operations.nginx import drain_problem
from ollama_fleet.pki import FleetCA, host_sans
from ollama_fleet.settings import FleetSettings, SettingsError, settings_for_host

pytestmark = pytest.mark.unit

KIOSK_KEY = "kiosk-Key_0123456789abcdefXYZ"
# host -> (loopback address, models_pull)
HOSTS = {
    "alpha": ("127.0.0.2", ["tiny", "small"]),
    "beta": ("127.0.0.3", ["tiny", "library/big:latest", "small"]),
    "busy": ("127.0.0.5", ["big", "only-busy"]),  # answers 503 to everything
}


def host_settings(name: str, tmp: Path, **data: Any) -> FleetSettings:
    base: dict[str, Any] = {
        "nginx_server_names": [name],
        "firewall_enabled": False,
        "auth_key_names": ["alice", "ci-bot", "kiosk"],
        "auth_key_policies": {"ci-bot": {"scope": "admin"}, "kiosk": {"models": ["tiny"]}},
        "auth_secrets_file": str(tmp / "no-secrets.json"),
        "tls_remote_dir": str(tmp / "tls"),
    }
    environ = {**ENVIRON, "OLLAMA_FLEET_API_KEY_KIOSK": KIOSK_KEY}
    return settings_for_host(name, {**base, **data}, environ)


def fleet_of(tmp: Path, port: int, **gateway_data: Any) -> dict[str, FleetSettings]:
    fleet = {
        name: host_settings(name, tmp, nginx_https_port=port, models_pull=models)
        for name, (_, models) in HOSTS.items()
    }
    fleet["gw"] = host_settings("gw", tmp, gateway_enabled=True, nginx_https_port=port, **gateway_data)
    return fleet


def addresses(gw: str = "127.0.0.6") -> dict[str, str]:
    return {**{name: ip for name, (ip, _) in HOSTS.items()}, "gw": gw}


# --- the plan ---


def test_models_go_to_pools_of_the_hosts_serving_them(tmp_path: Path) -> None:
    plan = gateway_plan(fleet_of(tmp_path, 443), addresses())
    assert plan.models == ("big:latest", "only-busy:latest", "small:latest", "tiny:latest")
    assert [m.name for m in plan.any_pool.members] == ["alpha", "beta", "busy", "gw"]
    assert [m.name for m in plan.pool_of("tiny:latest").members] == ["alpha", "beta"]
    assert [m.name for m in plan.pool_of("small:latest").members] == ["alpha", "beta"]
    # One pool per model, even on the same hosts: nginx caps a host per pool, Ollama per model.
    assert plan.pool_of("small:latest") != plan.pool_of("tiny:latest")
    assert [pool.models for pool in plan.pools[1:]] == [(m,) for m in plan.models]
    assert [m.name for m in plan.pool_of("big:latest").members] == ["beta", "busy"]
    assert [m.name for m in plan.pool_of("only-busy:latest").members] == ["busy"]
    assert {m.peer for m in plan.members} == {
        "127.0.0.2:443",
        "127.0.0.3:443",
        "127.0.0.5:443",
        "127.0.0.6:443",
    }


def test_each_host_is_capped_at_its_num_parallel_and_a_drained_one_is_down(tmp_path: Path) -> None:
    fleet = fleet_of(tmp_path, 443)
    fleet["alpha"] = host_settings("alpha", tmp_path, models_pull=["tiny"], gateway_drain=True)
    fleet["beta"] = host_settings(
        "beta", tmp_path, models_pull=["tiny"], ollama_env={"OLLAMA_NUM_PARALLEL": 4}
    )
    members = {m.name: m for m in gateway_plan(fleet, addresses()).members}
    assert (members["alpha"].down, members["alpha"].max_conns) == (True, 1)
    assert (members["beta"].down, members["beta"].max_conns) == (False, 4)
    uncapped = host_settings("beta", tmp_path, gateway_cap_at_num_parallel=False)
    fleet["beta"] = uncapped
    assert {m.name: m for m in gateway_plan(fleet, addresses()).members}["beta"].max_conns == 0


def test_a_host_without_an_ip_is_named(tmp_path: Path) -> None:
    with pytest.raises(GatewayError, match="host 'beta': the gateway needs its IP address"):
        gateway_plan(fleet_of(tmp_path, 443), {**addresses(), "beta": "beta.lan"})


def test_the_gateway_group_turns_the_gateway_on_unless_the_data_says() -> None:
    # group_data/all.py gives every host gateway_enabled = None
    def decided(data: dict[str, Any], groups: list[str]) -> bool:
        return bool(with_gateway_group(data, groups)["gateway_enabled"])

    assert decided({"gateway_enabled": None}, ["all", "gateway"]) is True
    assert decided({}, ["all", "gateway"]) is True
    assert decided({"gateway_enabled": False}, ["gateway"]) is False
    assert decided({"gateway_enabled": None}, ["all"]) is False
    # The `monitoring` group decides monitoring_enabled the same way.
    assert with_gateway_group({}, ["monitoring"])["monitoring_enabled"] is True
    assert with_gateway_group({}, ["gateway"])["monitoring_enabled"] is False
    assert with_gateway_group({"monitoring_enabled": False}, ["monitoring"])["monitoring_enabled"] is False


def test_gateway_settings_are_checked(tmp_path: Path) -> None:
    with pytest.raises(SettingsError, match=r"nginx_https_port and gateway_port"):
        host_settings("gw", tmp_path, gateway_enabled=True, gateway_port=443)
    with pytest.raises(SettingsError, match="gateway_read_timeout"):
        host_settings("gw", tmp_path, gateway_enabled=True, gateway_read_timeout=30)
    with pytest.raises(SettingsError, match="did you mean gateway_port"):
        host_settings("gw", tmp_path, gateway_prot=9443)


def test_every_host_must_come_from_the_gateways_ca(tmp_path: Path) -> None:
    fleet = fleet_of(tmp_path, 443)
    fleet["beta"] = host_settings("beta", tmp_path, tls_ca_dir=str(tmp_path / "other-pki"))
    (problem,) = gateway_problems(fleet)
    assert problem.startswith("host 'beta': the gateway 'gw' checks its certificate against the fleet CA")
    assert "tls_ca_dir '.fleet/pki'" in problem
    assert gateway_problems(fleet_of(tmp_path, 443)) == []


def test_the_certificate_names_the_gateway_names(tmp_path: Path) -> None:
    s = host_settings("gw", tmp_path, gateway_enabled=True, gateway_server_names=["llm.lan"])
    assert host_sans(s, ["10.0.0.5"]) == ["gw", "llm.lan", "10.0.0.5"]
    assert host_sans(host_settings("gw", tmp_path, gateway_server_names=["llm.lan"]), []) == ["gw"]


def test_a_gateway_site_needs_the_plan(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="gateway"):
        render.render_nginx_site(host_settings("gw", tmp_path, gateway_enabled=True))


def test_the_model_lists_are_the_union(tmp_path: Path) -> None:
    plan = gateway_plan(fleet_of(tmp_path, 443), addresses())
    site = render.render_nginx_site(fleet_of(tmp_path, 443)["gw"], gateway=plan)
    assert '"tiny:latest" @ollama_fleet_gw_' in site
    assert "    include /etc/nginx/ollama-fleet/gateway-members/alpha.conf;\n" in site
    assert '"~(^|, | : )127[.]0[.]0[.]2:443$" "alpha";' in site
    members = member_confs(plan, fleet_of(tmp_path, 443)["gw"].gateway)
    alpha = members["/etc/nginx/ollama-fleet/gateway-members/alpha.conf"]
    assert alpha.endswith("\nserver 127.0.0.2:443 max_conns=1 max_fails=2 fail_timeout=30s;\n")
    drained = gateway_plan(fleet_of(tmp_path, 443), addresses(), drained=["alpha"])
    assert member_confs(drained, fleet_of(tmp_path, 443)["gw"].gateway)[
        "/etc/nginx/ollama-fleet/gateway-members/alpha.conf"
    ].endswith("\nserver 127.0.0.2:443 max_conns=1 max_fails=2 fail_timeout=30s down;\n")


# --- the gateway under a real nginx ---


@dataclass
class Gateway:
    url: str
    ollama: FakeOllama
    ca_file: Path
    prefix: Path

    def client(self, **kwargs: Any) -> httpx.Client:
        return httpx.Client(base_url=self.url, verify=_strict_context(self.ca_file), timeout=20, **kwargs)

    def hosts_seen(self, start: int = 0) -> list[str]:
        return [str(seen["headers"].get("X-Test-Host")) for seen in self.ollama.seen[start:]]


def _backends(
    tmp: Path,
    ca: FleetCA,
    port: int,
    ollama: FakeOllama,
    names: dict[str, str],
    loaded: dict[str, list[str]] | None = None,
) -> str:
    """One TLS server per host; `names`: the name each one's certificate carries. With `loaded` (host ->
    the models it has loaded), a host answers a gateway's first try for another model with 404, as a
    fleet host's nginx does (test_render tests that side)."""
    blocks = []
    for host, (ip, _) in HOSTS.items():
        cert, key = ca.issue(names.get(host, host), [names.get(host, host)])
        (tmp / f"{host}.crt").write_text(cert)
        (tmp / f"{host}.key").write_text(key)
        answer = (
            'return 503 \'{"error": "busy"}\';'
            if host == "busy"
            else f"proxy_pass http://127.0.0.1:{ollama.port}; proxy_buffering off; "
            f"proxy_set_header X-Test-Host {host};"
        )
        if loaded is not None and host in loaded:
            models = "|".join(loaded[host])
            answer = (
                f'if ($http_x_ollama_fleet_if_loaded ~ "^(?!(?:{models})$).") '
                '{ return 404 \'{"error": {"code": "model_not_loaded"}}\'; } ' + answer
            )
        blocks.append(
            f"server {{ listen {ip}:{port} ssl; ssl_certificate {tmp}/{host}.crt; "
            f"ssl_certificate_key {tmp}/{host}.key; access_log {tmp}/{host}.access.log; "
            f"location / {{ {answer} }} }}\n"
        )
    return "".join(blocks)


@contextlib.contextmanager
def running_gateway(
    tmp: Path,
    ca: FleetCA,
    names: dict[str, str] | None = None,
    drained: tuple[str, ...] = (),
    gw_address: str = "127.0.0.6",
    loaded: dict[str, list[str]] | None = None,
    **gw_data: Any,
) -> Iterator[Gateway]:
    """The gateway host's site (its own API on 127.0.0.1, its gateway) and the other hosts' servers."""
    ollama = _fake_ollama()
    port, gateway_port = _free_port(), _free_port()
    fleet = fleet_of(
        tmp,
        port,
        gateway_port=gateway_port,
        ollama_listen=f"127.0.0.1:{ollama.port}",
        gateway_server_names=["localhost"],
        **gw_data,
    )
    plan = gateway_plan(fleet, addresses(gw_address), drained)
    s = fleet["gw"]
    backends = _backends(tmp, ca, port, ollama, names or {}, loaded)
    conf = _gateway_prefix(tmp, s, ca, plan, backends)
    process = subprocess.Popen(
        [_binary("nginx"), "-p", str(tmp), "-c", str(conf)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT
    )
    try:
        _wait_listening(gateway_port, process, tmp / "error.log")
        yield Gateway(f"https://127.0.0.1:{gateway_port}", ollama, ca.directory / "ca.pem", tmp)
    finally:
        process.terminate()
        process.wait(timeout=10)
        ollama.server.shutdown()
        ollama.server.server_close()


def _gateway_prefix(tmp: Path, s: FleetSettings, ca: FleetCA, plan: GatewayPlan, backends: str) -> Path:
    tls = render.tls_paths(s)
    Path(tls.cert).parent.mkdir(parents=True, exist_ok=True)
    cert, key = ca.issue("localhost", ["localhost", "127.0.0.1"])
    Path(tls.cert).write_text(cert)
    Path(tls.key).write_text(key)
    Path(tls.ca).write_text(ca.cert_pem)
    keys = tmp / "api-keys.conf"
    keys.write_text(render.render_api_keys(s))
    js = render.builtin_templates_dir() / render.MODEL_ALLOW_LIST_JS
    members_dir = PurePosixPath(tmp / "members")
    site = render.render_nginx_site(
        s,
        api_keys_path=PurePosixPath(keys),
        allow_list_js_path=PurePosixPath(js),
        gateway=plan,
        gateway_members_dir=members_dir,
    )
    site = re.sub(r"^(\s*listen )(\d+)", r"\g<1>127.0.0.1:\2", site, flags=re.MULTILINE)
    site = site.replace("/var/log/nginx/", f"{tmp}/")
    (tmp / "site.conf").write_text(site)
    Path(members_dir).mkdir(exist_ok=True)
    for path, text in member_confs(plan, s.gateway, members_dir).items():
        Path(path).write_text(text)
    (tmp / "backends.conf").write_text(backends)
    temp_paths = "\n".join(
        f"    {kind}_temp_path {tmp / kind};" for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")
    )
    (tmp / "nginx.conf").write_text(
        f"load_module {NJS_MODULE};\ndaemon off;\nmaster_process off;\npid {tmp / 'nginx.pid'};\n"
        f"error_log {tmp / 'error.log'} info;\nevents {{ worker_connections 256; }}\n"
        f"http {{\n    access_log {tmp / 'access.log'};\n{temp_paths}\n"
        f"    include {tmp / 'site.conf'};\n    include {tmp / 'backends.conf'};\n}}\n"
    )
    return tmp / "nginx.conf"


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory, ca: FleetCA) -> Iterator[Gateway]:
    with running_gateway(tmp_path_factory.mktemp("gateway"), ca) as running:
        yield running


def _chat(model: str, **extra: Any) -> dict[str, Any]:
    return {"model": model, "messages": [{"role": "user", "content": "hi"}], **extra}


def test_nginx_accepts_the_gateway_site_and_rejects_a_broken_one(tmp_path: Path, ca: FleetCA) -> None:
    fleet = fleet_of(tmp_path, 443)
    conf = _gateway_prefix(tmp_path, fleet["gw"], ca, gateway_plan(fleet, addresses()), "")
    ok = subprocess.run([_binary("nginx"), "-t", "-p", str(tmp_path), "-c", str(conf)], capture_output=True)
    assert ok.returncode == 0, ok.stderr.decode()
    assert b"[warn]" not in ok.stderr, ok.stderr.decode()
    site = tmp_path / "site.conf"
    site.write_text(site.read_text().replace("least_conn;", "least_conns;", 1))
    broken = subprocess.run(
        [_binary("nginx"), "-t", "-p", str(tmp_path), "-c", str(conf)], capture_output=True
    )
    assert broken.returncode != 0


def test_nginx_accepts_a_gateway_over_two_hundred_hosts(tmp_path: Path, ca: FleetCA) -> None:
    # Each pool's shared zone grows with its members: a fixed 64k held 60 hosts (nginx: "no memory in
    # upstream zone").
    fleet = {
        f"h{i}": host_settings(f"h{i}", tmp_path, models_pull=["tiny"] if i % 2 else ["small"])
        for i in range(200)
    }
    fleet["gw"] = host_settings("gw", tmp_path, gateway_enabled=True)
    hosts = {name: f"10.100.{i // 250}.{i % 250 + 1}" for i, name in enumerate(fleet)}
    conf = _gateway_prefix(tmp_path, fleet["gw"], ca, gateway_plan(fleet, hosts), "")
    done = subprocess.run([_binary("nginx"), "-t", "-p", str(tmp_path), "-c", str(conf)], capture_output=True)
    assert done.returncode == 0, done.stderr.decode()[-2000:]


def _dump(tmp: Path) -> str:
    """`nginx -T` of the test gateway: its configuration as nginx reads it."""
    argv = [_binary("nginx"), "-T", "-p", str(tmp), "-c", str(tmp / "nginx.conf")]
    done = subprocess.run(argv, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_a_host_the_rollout_drains_gets_nothing_and_the_read_back_says_so(
    tmp_path: Path, ca: FleetCA
) -> None:
    with running_gateway(tmp_path, ca, drained=("alpha",)) as drained, drained.client() as client:
        for _ in range(6):
            response = client.post("/v1/chat/completions", json=_chat("tiny"), headers=_bearer(ALICE_KEY))
            assert response.status_code == 200, response.text
        assert set(drained.hosts_seen(0)) == {"beta"}  # tiny is on alpha and beta: all of it went to beta
    assert (tmp_path / "members" / "alpha.conf").read_text().rstrip().endswith(" down;")
    assert not (tmp_path / "members" / "beta.conf").read_text().rstrip().endswith(" down;")
    alpha_line = (tmp_path / "members" / "alpha.conf").read_text().split("server ")[1]
    peers = {"alpha": alpha_line.split()[0]}
    assert drain_problem(_dump(tmp_path), peers) is None


def test_the_read_back_sees_an_override_that_keeps_a_drained_host_in_rotation(
    tmp_path: Path, ca: FleetCA
) -> None:
    # An operator's copy of the gateway template that writes the server lines itself (as ollama-fleet's own
    # did before the members' include): a drain writes the members' files, nginx never reads them.
    shipped = (render.builtin_templates_dir() / "nginx-gateway.conf.j2").read_text()
    own_lines = "    server {{ m.peer }} max_fails={{ g.max_fails }} fail_timeout={{ g.fail_timeout }}s;\n"
    override = re.sub(r"    include \{\{ gateway_member_conf\(m\) \}\};\n", own_lines, shipped)
    assert override != shipped
    templates = tmp_path / "templates"
    templates.mkdir()
    (templates / "nginx-gateway.conf.j2").write_text(override)
    with running_gateway(tmp_path, ca, drained=("alpha",), nginx_template_dirs=[str(templates)]) as gateway:
        with gateway.client() as client:
            for _ in range(6):
                client.post("/v1/chat/completions", json=_chat("tiny"), headers=_bearer(ALICE_KEY))
        assert "alpha" in gateway.hosts_seen(0)  # the drain did not take
    alpha_line = (tmp_path / "members" / "alpha.conf").read_text().split("server ")[1]
    problem = drain_problem(_dump(tmp_path), {"alpha": alpha_line.split()[0]})
    assert problem is not None
    assert problem.startswith(
        "the gateway still sends requests to alpha in upstream ollama_fleet_gw_all ("
        f"{tmp_path / 'site.conf'}), upstream ollama_fleet_gw_"
    ), problem
    assert "must include each member's server line" in problem


def test_the_gateway_needs_a_key(gateway: Gateway) -> None:
    with gateway.client() as client:
        response = client.post("/v1/chat/completions", json=_chat("tiny"))
    assert response.status_code == 401
    assert response.json()["error"]["code"] == "invalid_api_key"


@pytest.mark.parametrize("model", ["tiny", "tiny:latest", "library/tiny", "registry.ollama.ai/library/tiny"])
def test_a_model_goes_only_to_hosts_serving_it(gateway: Gateway, model: str) -> None:
    start = len(gateway.ollama.seen)
    with gateway.client() as client:
        for _ in range(6):
            response = client.post("/v1/chat/completions", json=_chat(model), headers=_bearer(ALICE_KEY))
            assert response.status_code == 200, response.text
    seen = gateway.hosts_seen(start)
    assert set(seen) == {"alpha", "beta"}, seen  # balanced over both, never elsewhere
    assert json.loads(gateway.ollama.seen[-1]["body"]) == _chat(model)  # the body arrives as sent


def test_a_host_answering_503_is_skipped_for_the_next(gateway: Gateway) -> None:
    start = len(gateway.ollama.seen)
    with gateway.client() as client:
        for _ in range(4):
            response = client.post("/api/chat", json=_chat("big"), headers=_bearer(ALICE_KEY))
            assert response.status_code == 200, response.text
    assert set(gateway.hosts_seen(start)) == {"beta"}
    lines = logged_lines(gateway.prefix / "ollama-fleet-gateway.access.log", 'model="big:latest"')
    assert any(
        re.search(r'upstream="127\.0\.0\.5:\d+, 127\.0\.0\.3:\d+" upstream_status="503, 200"', line)
        for line in lines
    ), lines


def test_with_every_host_of_a_model_failing_the_client_gets_its_answer(gateway: Gateway) -> None:
    """No other host to try: the host's own 503 reaches the client as it answered."""
    with gateway.client() as client:
        response = client.post("/api/generate", json={"model": "only-busy"}, headers=_bearer(ALICE_KEY))
    assert response.status_code == 503


def test_a_model_no_host_serves_is_an_openai_404_naming_it(gateway: Gateway) -> None:
    start = len(gateway.ollama.seen)
    with gateway.client() as client:
        response = client.post("/v1/chat/completions", json=_chat("nope:7b"), headers=_bearer(ALICE_KEY))
    assert response.status_code == 404
    error = response.json()["error"]
    assert error["code"] == "model_not_found" and "'nope:7b'" in error["message"]
    assert error["type"] == "invalid_request_error" and error["param"] == "model"
    assert len(gateway.ollama.seen) == start


def test_the_model_lists_are_every_hosts_models(gateway: Gateway) -> None:
    with gateway.client() as client:
        listed = client.get("/v1/models", headers=_bearer(ALICE_KEY)).json()
        tags = client.get("/api/tags", headers=_bearer(ALICE_KEY)).json()
    every = ["big:latest", "only-busy:latest", "small:latest", "tiny:latest"]
    assert [m["id"] for m in listed["data"]] == every
    assert listed["object"] == "list" and listed["data"][0]["object"] == "model"
    assert [m["name"] for m in tags["models"]] == every


def test_a_request_naming_no_model_goes_to_any_host(gateway: Gateway) -> None:
    with gateway.client() as client:
        response = client.get("/api/version", headers=_bearer(ALICE_KEY))
        health = client.get("/health")
    assert response.status_code == 200, response.text
    assert health.status_code == 200, health.text


def test_admin_paths_are_not_on_the_gateway(gateway: Gateway) -> None:
    start = len(gateway.ollama.seen)
    with gateway.client() as client:
        inference = client.post("/api/pull", json={"model": "tiny"}, headers=_bearer(ALICE_KEY))
        admin = client.post("/api/pull", json={"model": "tiny"}, headers=_bearer(CI_KEY))
    assert inference.status_code == 403 and inference.json()["error"]["code"] == "insufficient_scope"
    assert admin.status_code == 403 and admin.json()["error"]["code"] == "not_on_gateway"
    assert len(gateway.ollama.seen) == start


def test_a_key_allow_list_holds_on_the_gateway(gateway: Gateway) -> None:
    with gateway.client() as client:
        allowed = client.post("/v1/chat/completions", json=_chat("tiny"), headers=_bearer(KIOSK_KEY))
        refused = client.post("/v1/chat/completions", json=_chat("big"), headers=_bearer(KIOSK_KEY))
    assert allowed.status_code == 200, allowed.text
    assert refused.status_code == 403 and refused.json()["error"]["code"] == "model_not_allowed"


def test_a_stream_through_the_gateway_is_not_buffered(gateway: Gateway) -> None:
    with (
        gateway.client() as client,
        client.stream(
            "POST", "/v1/chat/completions", json=_chat("tiny", stream=True), headers=_bearer(ALICE_KEY)
        ) as response,
    ):
        lines = response.iter_lines()
        first = next(line for line in lines if line)
        gateway.ollama.first_chunk_read.set()
        rest = [line for line in lines if line]
    gateway.ollama.first_chunk_read.clear()
    assert first.startswith("data: {")
    assert rest == ["data: [DONE]"]
    assert gateway.ollama.streamed_before_finish[-1] is True


def test_each_host_takes_its_num_parallel_and_then_the_client_hears_to_retry(gateway: Gateway) -> None:
    """tiny's two hosts run OLLAMA_NUM_PARALLEL=1 (unset): with a stream held open on each, a third
    request finds no host free and gets 503 with Retry-After, without reaching any host. Ollama's limit is
    per model, and so is the gateway's: the same hosts still take a request for small."""
    body = _chat("tiny", stream=True)
    with gateway.client() as one, gateway.client() as two, gateway.client() as three:
        with (
            one.stream("POST", "/v1/chat/completions", json=body, headers=_bearer(ALICE_KEY)) as first,
            two.stream("POST", "/v1/chat/completions", json=body, headers=_bearer(ALICE_KEY)) as second,
        ):
            # The line iterators stay referenced: a dropped one closes its connection.
            first_lines, second_lines = first.iter_lines(), second.iter_lines()
            assert next(line for line in first_lines if line).startswith("data: {")
            assert next(line for line in second_lines if line).startswith("data: {")
            start = len(gateway.ollama.seen)
            busy = three.post("/v1/chat/completions", json=_chat("tiny"), headers=_bearer(ALICE_KEY))
            other_model = three.post("/v1/chat/completions", json=_chat("small"), headers=_bearer(ALICE_KEY))
            gateway.ollama.first_chunk_read.set()
        gateway.ollama.first_chunk_read.clear()
    assert busy.status_code == 503, busy.text
    assert busy.headers["retry-after"] == "1"
    assert busy.json()["error"]["code"] == "no_host_available"
    assert other_model.status_code == 200, other_model.text
    assert gateway.hosts_seen(start) in (["alpha"], ["beta"])  # small only: tiny's third never left
    with gateway.client() as client:  # both free again
        assert client.post("/api/chat", json=_chat("tiny"), headers=_bearer(ALICE_KEY)).status_code == 200


def test_a_request_the_gateway_sends_its_own_host_counts_once_against_the_keys_limits(
    tmp_path: Path, ca: FleetCA
) -> None:
    """The gateway host serves `own` too: the gateway dials its own API (on its own address), and both
    servers count the key in the same zones. alice may have one request in flight and three in a minute
    (one and a burst of two): each of three through the gateway is counted there, not again by the API it
    was sent to (counted twice, the first would take the concurrency and the second the burst). Her
    request straight to that API, from another address, counts: it is the fourth, refused."""
    with running_gateway(
        tmp_path,
        ca,
        gw_address="127.0.0.1",  # where the test runs the gateway host's own API
        nginx_server_names=["localhost"],  # the name its certificate carries here
        models_pull=["own"],
        auth_key_policies={"alice": {"concurrency": 1, "rate": "1r/m", "burst": 2}},
    ) as gateway:
        with gateway.client() as client:
            for _ in range(3):
                response = client.post("/api/chat", json=_chat("own"), headers=_bearer(ALICE_KEY))
                assert response.status_code == 200, response.text
        lines = logged_lines(tmp_path / "ollama-fleet.access.log", "POST /api/chat")
        assert len(lines) == 3 and all(line.startswith("127.0.0.1 - key=alice") for line in lines), lines
        api_port = re.search(
            r"listen 127\.0\.0\.1:(\d+) ssl default_server;", (tmp_path / "site.conf").read_text()
        )
        assert api_port is not None
        elsewhere = httpx.HTTPTransport(verify=_strict_context(gateway.ca_file), local_address="127.0.0.7")
        with httpx.Client(transport=elsewhere, timeout=20) as direct:
            url = f"https://localhost:{api_port[1]}/api/chat"
            refused = direct.post(url, json=_chat("own"), headers=_bearer(ALICE_KEY))
    assert refused.status_code == 429, refused.text
    # Three counted before it (a fourth would be excess 4): nginx's bucket leaks 1/60 a second at 1r/m, so
    # on a loaded machine the excess shows a little under 3.
    excess = re.search(
        r"limiting requests, excess: ([\d.]+) .* client: 127\.0\.0\.7", (tmp_path / "error.log").read_text()
    )
    assert excess is not None and 2.9 < float(excess[1]) <= 3.0, excess


def test_a_host_whose_certificate_does_not_name_it_gets_nothing(tmp_path: Path, ca: FleetCA) -> None:
    """alpha's certificate names another host: the gateway refuses it and uses beta only."""
    with running_gateway(tmp_path, ca, names={"alpha": "impostor"}) as gateway, gateway.client() as client:
        for _ in range(4):
            response = client.post("/v1/chat/completions", json=_chat("tiny"), headers=_bearer(ALICE_KEY))
            assert response.status_code == 200, response.text
        assert set(gateway.hosts_seen()) == {"beta"}
        assert 'upstream SSL certificate does not match "alpha"' in (tmp_path / "error.log").read_text()


def test_a_model_goes_first_to_a_host_that_has_it_loaded(tmp_path: Path, ca: FleetCA) -> None:
    """beta has tiny loaded, alpha nothing: every tiny request ends on beta (alpha, when least_conn picks it
    first, answers 404 and beta is tried next). small is loaded nowhere: both answer the first try with 404,
    and the second goes to any host (least_conn)."""
    with running_gateway(tmp_path, ca, loaded={"alpha": [], "beta": ["tiny:latest"]}) as gateway:
        with gateway.client() as client:
            for model in ("tiny", "small"):
                start = len(gateway.ollama.seen)
                for _ in range(6):
                    response = client.post("/api/chat", json=_chat(model), headers=_bearer(ALICE_KEY))
                    assert response.status_code == 200, response.text
                seen = gateway.hosts_seen(start)
                assert len(seen) == 6 and (model == "small" or set(seen) == {"beta"}), (model, seen)
        log = gateway.prefix / "ollama-fleet-gateway.access.log"
        tiny = logged_lines(log, 'model="tiny:latest"')
        small = logged_lines(log, 'model="small:latest"')
    assert len(tiny) == 6 and all(" 200 " in line for line in tiny), tiny
    assert any('upstream_status="404, 200"' in line for line in tiny), tiny  # alpha first, then beta
    assert all('upstream_status="404, 404 : 200"' in line for line in small), small  # both, then any


def test_with_the_loaded_host_busy_the_next_request_goes_to_one_without_it(
    tmp_path: Path, ca: FleetCA
) -> None:
    """beta (tiny loaded) holds a stream at its OLLAMA_NUM_PARALLEL (1): the next tiny request is not kept
    waiting for it but served by alpha, which has to load tiny."""
    with running_gateway(tmp_path, ca, loaded={"alpha": [], "beta": ["tiny:latest"]}) as gateway:
        body = _chat("tiny", stream=True)
        with (
            gateway.client() as one,
            gateway.client() as two,
            one.stream("POST", "/v1/chat/completions", json=body, headers=_bearer(ALICE_KEY)) as held,
        ):
            held_lines = held.iter_lines()  # stays referenced: a dropped iterator closes its connection
            assert next(line for line in held_lines if line).startswith("data: {")
            start = len(gateway.ollama.seen)
            response = two.post("/api/chat", json=_chat("tiny"), headers=_bearer(ALICE_KEY))
            gateway.ollama.first_chunk_read.set()
        gateway.ollama.first_chunk_read.clear()
        assert gateway.hosts_seen(0)[0] == "beta"  # the stream
    assert response.status_code == 200, response.text
    assert gateway.hosts_seen(start) == ["alpha"]


def test_a_model_on_one_host_gets_no_first_try(tmp_path: Path) -> None:
    """Declining a first try only helps where another host could take it."""
    fleet = fleet_of(tmp_path, 443)
    plan = gateway_plan(fleet, addresses())
    site = render.render_nginx_site(fleet["gw"], gateway=plan)
    single, shared = plan.pool_of("only-busy:latest").name, plan.pool_of("tiny:latest").name
    assert f"location @{single}_any" not in site and f"location @{shared}_any" in site
    assert site.count("_any {") == len(plan.pools) - 2  # the all-hosts pool and only-busy's have none


@pytest.mark.parametrize("prefer_loaded", [True, False], ids=["prefer-loaded", "any-host"])
def test_a_clients_first_try_header_never_passes_the_gateway(
    tmp_path: Path, ca: FleetCA, prefer_loaded: bool
) -> None:
    """The header is the fleet's own: a client's is replaced by the gateway's (a first try) or dropped."""
    forged = {"X-Ollama-Fleet-If-Loaded": "steered"}
    with (
        running_gateway(tmp_path, ca, gateway_prefer_loaded=prefer_loaded) as gateway,
        gateway.client() as client,
    ):
        for _ in range(4):
            chat = client.post("/api/chat", json=_chat("tiny"), headers={**_bearer(ALICE_KEY), **forged})
            assert chat.status_code == 200, chat.text
        assert client.get("/api/version", headers={**_bearer(ALICE_KEY), **forged}).status_code == 200
        sent = {seen["headers"].get("X-Ollama-Fleet-If-Loaded") for seen in gateway.ollama.seen}
    # A first try carries the gateway's own value; /api/version and second tries carry none.
    assert sent == ({None, "tiny:latest"} if prefer_loaded else {None})


@pytest.mark.parametrize(
    "body",
    [
        b'{"model": "tiny", "Model": "big"}',
        b'{"model": "big", "model": null, "name": "tiny"}',
        b'{"model": "tiny:cloud"}',
        b'{"model": "ti\xffny"}',
    ],
    ids=["folded-key", "null-after-model", "cloud", "invalid-utf-8"],
)
def test_the_gateway_routes_only_on_the_model_ollama_reads(gateway: Gateway, body: bytes) -> None:
    start = len(gateway.ollama.seen)
    with gateway.client() as client:
        response = client.post("/v1/chat/completions", content=body, headers=_bearer(KIOSK_KEY))
    assert response.status_code in (400, 403), response.text
    assert response.json()["error"]["code"] in ("ambiguous_request", "cloud_disabled")
    assert len(gateway.ollama.seen) == start
