"""The fleet gateway on the lab: lab-1 (also an Ollama host) is in the inventory group `gateway` and serves
one endpoint on port 8443 for the three hosts, whose model lists differ:

    lab-1: tiny, vehicle-assistant      lab-2: tiny, vehicle-assistant, gw-two      lab-3: tiny

The official `openai` client (base_url = the gateway, the lab's key and CA) gets an answer for every model,
streamed and not; each request reaches only hosts serving its model (each host's own nginx access log says
so); with Ollama stopped on one host and nginx on another it still answers; a drained host gets nothing.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import ssl
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
from verify_fleet import DeployedFleet, deploy_fleet, statuses

from ollama_fleet.gateway import LOADED_CACHE_VALID_S
from ollama_fleet.lab.inventory import VEHICLE_ASSISTANT
from ollama_fleet.lab.paths import repo_root
from ollama_fleet.lab.state import LabState
from ollama_fleet.render import builtin_templates_dir

pytestmark = pytest.mark.e2e

PORT = 8443
HOST_LOG = "/var/log/nginx/ollama-fleet.access.log"
GATEWAY_LOG = "/var/log/nginx/ollama-fleet-gateway.access.log"
MEMBERS = "/etc/nginx/ollama-fleet/gateway-members"
KEEPALIVE_TIMEOUT = 10  # gateway_keepalive_timeout's default
OLLAMA = "http://127.0.0.1:11434"  # on a lab host
DROP_443 = "INPUT -p tcp --dport 443 -j DROP -m comment --comment ollama-fleet-test-gateway-down"
PYINFRA = str(Path(sys.executable).parent / "pyinfra")
GW_TWO = {
    "name": "gw-two",
    "base": "tiny",
    "system": "Only lab-2 serves this.",
    "parameters": {"num_predict": 16},
}
MODELS = ["gw-two:latest", "tiny:latest", "vehicle-assistant:latest"]


@dataclass(frozen=True)
class Gateway:
    fleet: DeployedFleet
    inventory: Path
    host_index: int = 0  # the lab host serving this gateway

    @property
    def host(self) -> str:
        return self.fleet.hosts[self.host_index]

    @property
    def url(self) -> str:
        return f"https://{self.fleet.address(self.host)}:{PORT}"

    def deploy(self, inventory: Path | None = None, *extra: str) -> Any:
        return self.fleet.run(
            [PYINFRA, "-y", "--json", str(inventory or self.inventory), "deploys/ollama.py", *extra],
            timeout=900,
        )

    def openai(self, user_agent: str | None = None) -> openai.OpenAI:
        http_client = httpx.Client(
            verify=ssl.create_default_context(cafile=str(self.fleet.ca_file)), trust_env=False, timeout=120
        )
        headers = {"User-Agent": user_agent} if user_agent else None
        return openai.OpenAI(
            base_url=f"{self.url}/v1",
            api_key=self.fleet.keys["ci"],
            http_client=http_client,
            max_retries=0,
            default_headers=headers,
        )

    def hits(self, marker: str) -> dict[str, list[int]]:
        """host -> the statuses its own nginx logged for requests whose User-Agent holds `marker`, 404s
        included: a first try the host declined (the model not loaded there) still reached it."""
        found = {}
        for host in self.fleet.hosts:
            log = self.fleet.ssh_ok(host, f"grep -F {marker} {HOST_LOG} || true")
            found[host] = [int(line.split('"')[2].split()[0]) for line in log.splitlines() if line]
        return found

    def answers_every_model(self) -> None:
        """The openai client through this gateway lists every model, and each answers, whole and streamed."""
        with self.openai() as client:
            assert sorted(model.id for model in client.models.list()) == MODELS
            for model in MODELS:
                reply = client.chat.completions.create(
                    model=model, messages=[{"role": "user", "content": "Hello, gateway."}], max_tokens=8
                )
                assert reply.choices[0].message.content, model
                assert reply.usage is not None and reply.usage.completion_tokens == 8
                stream = client.chat.completions.create(
                    model=model, messages=[{"role": "user", "content": "Hi."}], max_tokens=16, stream=True
                )
                chunks = [
                    c.choices[0].delta.content for c in stream if c.choices and c.choices[0].delta.content
                ]
                assert len(chunks) >= 8, (model, chunks)

    def loaded(self, host: str) -> list[str]:
        """The models the host's Ollama has loaded (its /api/ps, read on the host)."""
        ps = json.loads(self.fleet.ssh_ok(host, f"curl -sf {OLLAMA}/api/ps"))
        return sorted(model["name"] for model in ps["models"])

    def unload(self, host: str, model: str) -> None:
        body = json.dumps({"model": model, "keep_alive": 0})
        self.fleet.ssh_ok(host, f"curl -sf {OLLAMA}/api/generate -d '{body}'")
        deadline = time.monotonic() + 30
        while f"{model}:latest" in self.loaded(host):
            assert time.monotonic() < deadline, f"{host} still has {model} loaded"
            time.sleep(0.5)


def write_inventory(
    fleet: DeployedFleet,
    path: Path,
    drained: str | None = None,
    gateways: tuple[str, ...] = (),
    gateway_only: str | None = None,
) -> Path:
    """The lab's inventory with lab-1 (or `gateways`) in the group `gateway` and the model lists above
    (none on a `gateway_only` host)."""
    two, three = fleet.hosts[1], fleet.hosts[2]
    path.write_text(
        Path(fleet.lab.inventory_path).read_text()
        + f"\n_GW_TWO = {GW_TWO!r}\n_VEHICLE = {VEHICLE_ASSISTANT!r}\n"
        + "def _models(name, data):\n"
        + f"    if name == {two!r}:\n"
        + "        data = {**data, 'models_custom': [_VEHICLE, _GW_TWO]}\n"
        + f"    if name == {three!r}:\n"
        + "        data = {**data, 'models_custom': []}\n"
        + f"    if name == {drained!r}:\n"
        + "        data = {**data, 'gateway_drain': True}\n"
        + f"    if name == {gateway_only!r}:\n"
        + "        data = {**data, 'gateway_only': True, 'models_gguf': {}, 'models_custom': []}\n"
        + "    return name, data\n"
        + "lab_rest = [_models(n, d) for n, d in lab_rest]\n"
        + "lab_hosts = lab_canary + lab_rest\n"
        + (f"gateway = {list(gateways)!r}\n" if gateways else "gateway = [lab_canary[0][0]]\n")
    )
    return path


def changed(stdout: str) -> dict[str, list[str]]:
    operations = json.loads(stdout)["results"]["operations"]
    return {op["name"]: op["success"] for op in operations if op["success"]}


@pytest.fixture(scope="module")
def gateway(lab: LabState, tmp_path_factory: pytest.TempPathFactory) -> Gateway:
    fleet = deploy_fleet(lab)
    inventory = write_inventory(fleet, tmp_path_factory.mktemp("gateway") / "fleet.py")
    gw = Gateway(fleet, inventory)
    done = gw.deploy()
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-4000:]
    return gw


@pytest.fixture
def marker() -> str:
    return f"ollama-fleet-e2e-gw-{secrets.token_hex(4)}"


def test_a_second_deploy_of_the_gateway_changes_nothing(gateway: Gateway) -> None:
    done = gateway.deploy()
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert changed(done.stdout) == {}


def infra_checks(gateway: Gateway) -> subprocess.CompletedProcess[str]:
    """tests/infra (pytest-testinfra) against the gateway fleet's inventory."""
    env = {**os.environ, "OLLAMA_FLEET_INVENTORY": str(gateway.inventory)}
    return subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests/infra",
         f"--ssh-config={gateway.fleet.lab.ssh_config_path}"],
        cwd=repo_root(), env=env, capture_output=True, text=True, timeout=600, check=False,
    )  # fmt: skip


def test_a_gateway_fleet_passes_the_testinfra_checks_and_a_hand_edit_fails_them(gateway: Gateway) -> None:
    done = infra_checks(gateway)
    assert done.returncode == 0, done.stdout[-6000:]
    assert f"{11 * len(gateway.fleet.hosts)} passed" in done.stdout
    # The checks can fail: a member's server line edited by hand on the gateway host is drift.
    three = gateway.fleet.hosts[2]
    member = f"{MEMBERS}/{three}.conf"
    saved = gateway.fleet.ssh_ok(gateway.host, f"cat {member}")
    try:
        gateway.fleet.ssh_ok(gateway.host, f"sed -i 's/;$/ down;/' {member}")
        drifted = infra_checks(gateway)
        assert drifted.returncode != 0 and "1 failed" in drifted.stdout, drifted.stdout[-6000:]
        assert "test_nginx_site_streams_to_loopback" in drifted.stdout
    finally:
        gateway.fleet.ssh_ok(gateway.host, f"cat > {member}", stdin=saved)


def test_the_openai_client_answers_for_every_model_through_the_gateway(gateway: Gateway) -> None:
    gateway.answers_every_model()


def test_a_model_no_host_serves_is_a_404_naming_it(gateway: Gateway) -> None:
    with gateway.openai() as client, pytest.raises(openai.NotFoundError) as raised:
        client.chat.completions.create(model="llama9:70b", messages=[{"role": "user", "content": "hi"}])
    assert raised.value.code == "model_not_found"
    assert "'llama9:70b'" in str(raised.value)


def _client(gateway: Gateway, base: str) -> httpx.Client:
    context = ssl.create_default_context(cafile=str(gateway.fleet.ca_file))
    return httpx.Client(base_url=base, verify=context, trust_env=False, timeout=120)


# Bodies a key allowed only tiny got vehicle-assistant's answers with before njs read them as Go does.
BYPASSES = {
    "folded-key": b'{"model": "tiny", "Model": "vehicle-assistant", "max_tokens": 4, "messages": []}',
    "null-after-model": b'{"model": "vehicle-assistant", "model": null, "name": "tiny", "messages": []}',
    "trailing-data": b'{"model": "vehicle-assistant", "messages": []} {"model": "tiny"}',
}


@pytest.mark.parametrize("path", ["/v1/chat/completions", "/api/chat"])
@pytest.mark.parametrize("body", BYPASSES.values(), ids=BYPASSES.keys())
def test_bodies_that_bypassed_the_allow_list_are_refused_at_the_gateway(
    gateway: Gateway, path: str, body: bytes
) -> None:
    headers = {"Authorization": f"Bearer {gateway.fleet.keys['kiosk']}", "Content-Type": "application/json"}
    with _client(gateway, gateway.url) as client:
        response = client.post(path, content=body, headers=headers)
    assert response.status_code == 400, response.text
    assert response.json()["error"]["code"] == "ambiguous_request"


@pytest.mark.parametrize(
    ("method", "path", "body"),
    [
        ("POST", "/api/chat", {"model": "gpt-oss:20b-cloud", "messages": []}),
        ("POST", "/v1/chat/completions", {"model": "tiny:cloud", "messages": []}),
        ("GET", "/v1/models/gpt-oss:20b-cloud", None),
    ],
    ids=["api-chat", "openai-chat", "retrieve"],
)
def test_a_cloud_model_is_refused_at_the_gateway(
    gateway: Gateway, method: str, path: str, body: object
) -> None:
    with _client(gateway, gateway.url) as client:
        response = client.request(
            method, path, json=body, headers={"Authorization": f"Bearer {gateway.fleet.keys['ci']}"}
        )
    assert response.status_code == 403, response.text
    assert response.json()["error"]["code"] == "cloud_disabled"


@pytest.mark.parametrize(
    ("path", "body"),
    [
        ("/v1/responses", {"model": "tiny", "input": "hi", "max_output_tokens": 4}),
        ("/v1/messages", {"model": "tiny", "max_tokens": 4, "messages": [{"role": "user", "content": "hi"}]}),
    ],
    ids=["openai-responses", "anthropic-messages"],
)
def test_the_responses_and_messages_apis_answer_through_the_gateway(
    gateway: Gateway, path: str, body: dict[str, object]
) -> None:
    with _client(gateway, gateway.url) as client:
        reply = client.post(
            path, json=body, headers={"Authorization": f"Bearer {gateway.fleet.keys['kiosk']}"}
        )
    assert reply.status_code == 200, reply.text
    assert reply.json()["model"] == "tiny"


def test_a_clients_first_try_header_steers_no_host(gateway: Gateway) -> None:
    """Sent straight to a host by a client (not a gateway), the fleet's header is ignored: gw-two, not
    loaded on lab-2, is served there instead of declined."""
    two = gateway.fleet.hosts[1]
    gateway.unload(two, "gw-two")
    headers = {
        "Authorization": f"Bearer {gateway.fleet.keys['ci']}",
        "X-Ollama-Fleet-If-Loaded": "gw-two:latest",
    }
    body = {"model": "gw-two", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4}
    with _client(gateway, f"https://{gateway.fleet.address(two)}") as client:
        reply = client.post("/v1/chat/completions", json=body, headers=headers)
    assert reply.status_code == 200, reply.text


def test_each_model_reaches_only_the_hosts_serving_it(gateway: Gateway, marker: str) -> None:
    one, two, three = gateway.fleet.hosts
    for model, times in (("tiny", 6), ("vehicle-assistant", 4), ("gw-two", 3)):
        with gateway.openai(f"{marker}-{model}") as client:
            for _ in range(times):
                client.chat.completions.create(
                    model=model, messages=[{"role": "user", "content": "hi"}], max_tokens=2
                )
    tiny, vehicle, only_two = (gateway.hits(f"{marker}-{m}") for m in ("tiny", "vehicle-assistant", "gw-two"))
    # On any of the three (a host without tiny loaded declines a first try: 404, and the next takes it).
    assert sum(s.count(200) for s in tiny.values()) == 6, tiny
    assert {c for s in tiny.values() for c in s} <= {200, 404}, tiny
    # lab-3 does not serve vehicle-assistant: not even a first try may reach it.
    assert vehicle[three] == [] and sum(s.count(200) for s in vehicle.values()) == 4, vehicle
    assert {c for s in vehicle.values() for c in s} <= {200, 404}, vehicle
    assert only_two == {one: [], two: [200, 200, 200], three: []}, only_two


def test_a_request_goes_to_a_host_that_has_its_model_loaded(gateway: Gateway, marker: str) -> None:
    """tiny unloaded everywhere, then loaded on lab-2 alone (one chat straight to it): six requests for tiny
    through the gateway all end on lab-2 (the others decline the first try at once), and neither other host
    loads it. Without the preference least_conn would have spread them, and each host would load tiny."""
    one, two, three = gateway.fleet.hosts
    for host in gateway.fleet.hosts:
        gateway.unload(host, "tiny")
    assert gateway.fleet.chat(two, "tiny").status_code == 200
    assert "tiny:latest" in gateway.loaded(two)
    # Every host's loaded check sees /api/ps as it is now: nginx keeps an answer LOADED_CACHE_VALID_S in
    # whole seconds (under LOADED_CACHE_VALID_S + 1 s), so a full second more is past the bound, not on it.
    time.sleep(LOADED_CACHE_VALID_S + 2)
    with gateway.openai(marker) as client:
        for _ in range(6):
            reply = client.chat.completions.create(
                model="tiny", messages=[{"role": "user", "content": "hi"}], max_tokens=2
            )
            assert reply.choices[0].message.content
    hits = gateway.hits(marker)
    assert hits[two] == [200] * 6, hits  # every request served by the warm host
    assert set(hits[one] + hits[three]) <= {404}, hits  # the cold ones only declined first tries
    assert "tiny:latest" not in gateway.loaded(one) + gateway.loaded(three)


def test_a_host_that_answers_nothing_costs_a_connect_timeout_then_is_marked_out(
    gateway: Gateway, marker: str
) -> None:
    """lab-3 drops every packet to its 443 (a host that is down): a request that picks it waits
    gateway_connect_timeout (5 s) and goes on; after gateway_max_fails (2) such tries it is left out."""
    three = gateway.fleet.hosts[2]
    time.sleep(KEEPALIVE_TIMEOUT + 1)  # the idle connections to lab-3 closed: each try is a new connection
    started = time.monotonic()
    try:
        gateway.fleet.ssh_ok(three, f"iptables -I {DROP_443}")
        with gateway.openai(marker) as client:
            for _ in range(8):
                reply = client.chat.completions.create(
                    model="tiny", messages=[{"role": "user", "content": "hi"}], max_tokens=2
                )
                assert reply.choices[0].message.content
    finally:
        gateway.fleet.ssh(three, f"iptables -D {DROP_443}")
    seconds = time.monotonic() - started
    log = gateway.fleet.ssh_ok(gateway.host, f"grep -F {marker} {GATEWAY_LOG}").splitlines()
    tried_three = [line for line in log if f"{gateway.fleet.address(three)}:443" in line]
    shown = "\n".join(log)
    assert len(log) == 8 and all('upstream_status="' in line for line in log), shown
    assert 1 <= len(tried_three) <= 2, shown  # then out for gateway_fail_timeout
    # lab-3's connect timed out, then another host served it (after any that declined: tiny not loaded)
    assert all(re.search(r'upstream_status="[^"]*504[^"]* 200"', line) for line in tried_three), shown
    assert seconds < 8 * 2 + 2 * 5 + 10, (seconds, shown)


def test_with_ollama_stopped_on_one_host_and_nginx_on_another_it_still_answers(
    gateway: Gateway, marker: str
) -> None:
    _, two, three = gateway.fleet.hosts
    three_peer = f"{gateway.fleet.address(three)}:443"
    try:
        gateway.fleet.ssh_ok(two, "systemctl stop ollama")
        with gateway.openai(f"{marker}-a") as client:
            for _ in range(6):
                reply = client.chat.completions.create(
                    model="tiny", messages=[{"role": "user", "content": "hi"}], max_tokens=2
                )
                assert reply.choices[0].message.content
        gateway.fleet.ssh_ok(three, "systemctl stop nginx")
        with gateway.openai(f"{marker}-b") as client:
            for _ in range(3):
                stream = client.chat.completions.create(
                    model="vehicle-assistant",
                    messages=[{"role": "user", "content": "hi"}],
                    max_tokens=4,
                    stream=True,
                )
                assert [c for c in stream if c.choices and c.choices[0].delta.content]
            # tiny until the gateway has tried lab-3: a test in which lab-3 was never tried would prove
            # nothing about it. least_conn takes each eligible host in turn, but an earlier test may have left
            # lab-3 marked out of tiny's pool for up to gateway_fail_timeout (30 s): wait that out, no longer.
            deadline, sent = time.monotonic() + 30 + 15, 0
            while True:
                reply = client.chat.completions.create(
                    model="tiny", messages=[{"role": "user", "content": "hi"}], max_tokens=2
                )
                assert reply.choices[0].message.content
                sent += 1
                tries = gateway.fleet.ssh_ok(gateway.host, f"grep -F {marker}-b {GATEWAY_LOG} || true")
                if three_peer in tries or time.monotonic() > deadline:
                    break
                time.sleep(1)
    finally:
        gateway.fleet.ssh(two, "systemctl start ollama")
        gateway.fleet.ssh(three, "systemctl start nginx")
    first = gateway.hits(f"{marker}-a")
    assert set(first[two]) <= {404, 502}, first  # lab-2's nginx answered 502 (no Ollama); the gateway went on
    log = gateway.fleet.ssh_ok(gateway.host, f"grep -F {marker}-a {GATEWAY_LOG}").splitlines()
    assert len(log) == 6 and all(" 200 " in line for line in log), log
    # lab-3's nginx was down, so its own log cannot tell: the gateway's log says what each try got. A
    # request that tried lab-3 had its connection refused there (502) and was served by another host.
    log_b = gateway.fleet.ssh_ok(gateway.host, f"grep -F {marker}-b {GATEWAY_LOG}").splitlines()
    assert len(log_b) == 3 + sent and all(" 200 " in line for line in log_b), log_b
    tried_three = 0
    for line in log_b:
        tried = re.search(r'upstream="([^"]*)" upstream_status="([^"]*)"', line)
        assert tried, line
        peers, codes = re.split(r", | : ", tried.group(1)), re.split(r", | : ", tried.group(2))
        assert codes[-1] == "200" and all(
            c == "502" for p, c in zip(peers, codes, strict=True) if p == three_peer
        ), line
        tried_three += peers.count(three_peer)
    assert tried_three, "\n".join(log_b)  # lab-3 was tried, refused, and each such request still served


def test_verify_checks_the_gateway(gateway: Gateway) -> None:
    done = gateway.fleet.run(
        [
            sys.executable,
            "-m",
            "ollama_fleet.cli",
            "verify",
            str(gateway.inventory),
            "--json",
            "--hosts",
            gateway.host,
        ]
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    checks = statuses(json.loads(done.stdout))[f"{gateway.host}/gateway"]
    assert checks == {name: "pass" for name in ("tls", "root", "auth", "models", "chat", "stream")}


def test_a_drained_host_gets_nothing_from_the_gateway(gateway: Gateway, marker: str, tmp_path: Path) -> None:
    three = gateway.fleet.hosts[2]
    drained = write_inventory(gateway.fleet, tmp_path / "fleet.py", drained=three)
    done = gateway.deploy(drained, "--limit", gateway.host)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    with gateway.openai(marker) as client:
        for _ in range(6):
            client.chat.completions.create(
                model="tiny", messages=[{"role": "user", "content": "hi"}], max_tokens=2
            )
    hits = gateway.hits(marker)
    # A drained host gets nothing, not even a first try to decline.
    assert hits[three] == [] and sum(s.count(200) for s in hits.values()) == 6, hits


OPERATOR_HEADER = "X-Operator-Gateway"


def operator_gateway_template(directory: Path) -> Path:
    """An operator's override of the gateway template (nginx_template_dirs): the shipped one with a header
    of the operator's and no comment beside the pools' members (what the old regex drain relied on)."""
    shipped = (builtin_templates_dir() / "nginx-gateway.conf.j2").read_text()
    own = re.sub(
        r"\n    # \{\{ m\.name \}\}: its server line.*?\n(?=    include)", "\n", shipped, flags=re.DOTALL
    )
    own = own.replace(
        "    server_tokens off;\n",
        f"    server_tokens off;\n    add_header {OPERATOR_HEADER} yes always;\n",
        1,
    )
    assert own.count("include {{ gateway_member_conf(m) }};") == 1 and OPERATOR_HEADER in own
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "nginx-gateway.conf.j2").write_text(own)
    return directory


@dataclass
class HeldRequest:
    """A gw-two chat through the gateway whose body the test sends in two parts: the gateway's worker has it
    in flight (reading the body, before it routes it) until `release` is set, however fast the hardware."""

    release: threading.Event = field(default_factory=threading.Event)
    sent_head: threading.Event = field(default_factory=threading.Event)
    status: int = 0
    done: bool = False
    error: str = ""
    ended: float = 0.0


def held_request(gateway: Gateway, held: HeldRequest) -> None:
    body = json.dumps({"model": "gw-two", "messages": [{"role": "user", "content": "hi"}], "stream": True})
    cut = len(body) // 2

    def parts() -> Any:
        yield body[:cut].encode()
        held.sent_head.set()
        held.release.wait(600)
        yield body[cut:].encode()

    headers = {"Authorization": f"Bearer {gateway.fleet.keys['ci']}", "Content-Type": "application/json"}
    try:
        with (
            httpx.Client(
                verify=ssl.create_default_context(cafile=str(gateway.fleet.ca_file)),
                trust_env=False,
                timeout=600,
            ) as client,
            client.stream("POST", f"{gateway.url}/api/chat", content=parts(), headers=headers) as response,
        ):
            held.status = response.status_code
            for line in response.iter_lines():
                held.done = held.done or bool(line and json.loads(line).get("done"))
    except httpx.HTTPError as exc:
        held.error = f"{type(exc).__name__}: {exc}"
    finally:
        held.ended = time.time()
        held.sent_head.set()


@dataclass
class Load:
    """Small completions through the gateway every 0.3 s, each marked with the phase it started in."""

    marker: str
    phase: str = "before"
    statuses: list[int] = field(default_factory=list)
    phases_seen: set[str] = field(default_factory=set)
    stop: threading.Event = field(default_factory=threading.Event)


def steady_small_completions(gateway: Gateway, load: Load) -> None:
    body = {"model": "tiny", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}
    with httpx.Client(
        verify=ssl.create_default_context(cafile=str(gateway.fleet.ca_file)), trust_env=False, timeout=120
    ) as client:
        while not load.stop.is_set():
            phase = load.phase
            headers = {
                "Authorization": f"Bearer {gateway.fleet.keys['ci']}",
                "User-Agent": f"{load.marker}-{phase}",
            }
            try:
                load.statuses.append(
                    client.post(f"{gateway.url}/v1/chat/completions", json=body, headers=headers).status_code
                )
                load.phases_seen.add(phase)
            except httpx.HTTPError:
                load.statuses.append(0)
            time.sleep(0.3)


def active_since(gateway: Gateway, host: str) -> int:
    """When the host's Ollama last (re)started, in Unix seconds."""
    out = gateway.fleet.ssh_ok(host, "systemctl show ollama -p ActiveEnterTimestamp --timestamp=unix")
    return int(out.strip().split("@")[1])


def old_worker_busy(gateway: Gateway) -> bool:
    """Whether the gateway host's nginx has a worker from before a reload still finishing a request."""
    return "shutting down" in gateway.fleet.ssh_ok(
        gateway.host, "ps -eo args | grep '[n]ginx: worker' || true"
    )


def test_a_rollout_with_an_operators_gateway_template_drains_for_real(
    gateway: Gateway, marker: str, tmp_path: Path
) -> None:
    """The gateway runs an operator's override of its template. A rollout that restarts every host's Ollama
    takes lab-2 (the only host of gw-two) first, alone: the drain waits for a gw-two request the gateway
    had in flight (held open by the test until the drain is seen waiting on it), which ends whole before
    lab-2 restarts; small completions through the gateway all the while all get 200, and none that started
    after the drain took effect reached lab-2 until lab-2 was deployed and verified."""
    one, two, _ = gateway.fleet.hosts
    inventory = write_inventory(gateway.fleet, tmp_path / "fleet.py")
    inventory.write_text(inventory.read_text() + f"victim = [{two!r}]\n")
    change = tmp_path / "group_data"
    change.mkdir()
    templates = operator_gateway_template(tmp_path / "templates")
    (change / "all.py").write_text(
        'ollama_env = {"OLLAMA_KEEP_ALIVE": "6m"}\n'  # restarts every Ollama
        f"nginx_template_dirs = [{str(templates)!r}]\n"
    )
    # The gateway serves from the operator's template before the rollout starts.
    with_template = gateway.fleet.run(
        [PYINFRA, "-y", "--group-data", str(change), str(inventory), "deploys/ollama.py", "--limit", one],
        timeout=900,
    )
    assert with_template.returncode == 0, with_template.stdout[-3000:] + with_template.stderr[-3000:]
    with gateway.openai() as client:
        reply = client.chat.completions.with_raw_response.create(
            model="tiny", messages=[{"role": "user", "content": "hi"}], max_tokens=2
        )
        assert reply.headers.get(OPERATOR_HEADER) == "yes"

    held, load = HeldRequest(), Load(marker)
    holder = threading.Thread(target=held_request, args=(gateway, held))
    loader = threading.Thread(target=steady_small_completions, args=(gateway, load))
    holder.start()
    assert held.sent_head.wait(60) and not held.error, held.error
    loader.start()
    argv = [
        sys.executable, "-m", "ollama_fleet.cli", "rollout", str(inventory),
        "--canary", "victim", "--batch", "100%", "--group-data", str(change),
        "--state", str(tmp_path / "rollout.json"), "--json",
    ]  # fmt: skip
    rollout = subprocess.Popen(
        argv, cwd=repo_root(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    assert rollout.stderr is not None and rollout.stdout is not None
    progress: list[str] = []
    try:
        for line in rollout.stderr:
            progress.append(line)
            if f"gateway: {two} out of rotation at {one}" in line:
                # The drain reloads the gateway; its old worker keeps the held request: wait for that state,
                # then let the request go on (routed by the old worker's configuration: to lab-2, whole).
                deadline = time.monotonic() + 120
                while not old_worker_busy(gateway):
                    assert time.monotonic() < deadline, "the drain never reloaded the gateway"
                    time.sleep(0.2)
                time.sleep(1)
                held.release.set()
            elif "requests in flight before the drain finished" in line and load.phase == "before":
                # Batch 1's drain (lab-2 out) took: every request from now on is served without lab-2,
                # until lab-2 is deployed and verified (batch 2's drain takes the other hosts out instead).
                load.phase = "drained"
            elif re.match(rf"\s*{re.escape(two)}: ok", line):
                load.phase = "after"
        stdout = rollout.stdout.read()
        code = rollout.wait(timeout=60)
    finally:
        if rollout.poll() is None:
            rollout.kill()
        held.release.set()
        load.stop.set()
        loader.join(timeout=150)
        holder.join(timeout=300)
    output = "".join(progress)
    try:
        assert code == 0, stdout[-3000:] + output[-5000:]
        waited = re.search(r"requests in flight before the drain finished after (\d+) s", output)
        assert waited and int(waited.group(1)) >= 1, output[-5000:]  # it waited for the held request
        assert held.status == 200 and held.done and not held.error, (held.status, held.error)
        assert active_since(gateway, two) >= int(held.ended) - 1  # lab-2 restarted after the request ended
        assert load.statuses and set(load.statuses) == {200}, load.statuses
        assert {"before", "drained", "after"} <= load.phases_seen, load.phases_seen
        # No request that started once the drain took effect reached lab-2 while it was deployed: its own
        # access log (it was up all along but for Ollama's restart) and the gateway's both say so.
        assert gateway.hits(f"{marker}-drained")[two] == [], gateway.hits(f"{marker}-drained")
        drained_log = gateway.fleet.ssh_ok(one, f"grep -F {marker}-drained {GATEWAY_LOG}").splitlines()
        to_two = [line for line in drained_log if f"{gateway.fleet.address(two)}:443" in line]
        assert drained_log and not to_two, to_two
        # Every host back in rotation.
        assert gateway.fleet.ssh_ok(one, f"grep -l ' down;' {MEMBERS}/*.conf || true").strip() == ""
    finally:
        restored = gateway.deploy()
        assert restored.returncode == 0, restored.stdout[-3000:] + restored.stderr[-3000:]


def test_a_drain_the_gateways_configuration_does_not_take_halts_the_rollout(
    gateway: Gateway, tmp_path: Path
) -> None:
    """An override of the gateway template that writes the members' server lines itself: the drain writes
    the members' files, nginx never reads them, and the read-back halts the rollout before lab-2 is touched,
    naming lab-2, the upstream and the fix."""
    one, two, _ = gateway.fleet.hosts
    inventory = write_inventory(gateway.fleet, tmp_path / "fleet.py")
    inventory.write_text(inventory.read_text() + f"victim = [{two!r}]\n")
    templates = tmp_path / "templates"
    templates.mkdir()
    shipped = (builtin_templates_dir() / "nginx-gateway.conf.j2").read_text()
    (templates / "nginx-gateway.conf.j2").write_text(
        shipped.replace("    include {{ gateway_member_conf(m) }};", "    server {{ m.peer }};")
    )
    change = tmp_path / "group_data"
    change.mkdir()
    (change / "all.py").write_text(f"nginx_template_dirs = [{str(templates)!r}]\n")
    try:
        deployed = gateway.fleet.run(
            [PYINFRA, "-y", "--group-data", str(change), str(inventory), "deploys/ollama.py", "--limit", one],
            timeout=900,
        )
        assert deployed.returncode == 0, deployed.stdout[-3000:] + deployed.stderr[-3000:]
        before = active_since(gateway, two)
        rolled = gateway.fleet.run(
            [
                sys.executable,
                "-m",
                "ollama_fleet.cli",
                "rollout",
                str(inventory),
                "--canary",
                "victim",
                "--group-data",
                str(change),
                "--state",
                str(tmp_path / "rollout.json"),
                "--json",
            ],
            timeout=900,
        )
        assert rolled.returncode == 1, rolled.stdout[-3000:] + rolled.stderr[-3000:]
        halt = json.loads(rolled.stdout)["halt_reason"]
        assert (
            f"gateway {one}: the gateway still sends requests to {two} in upstream ollama_fleet_gw_all"
            in halt
        )
        assert "must include each member's server line" in halt and "batch 1 not started" in halt, halt
        assert active_since(gateway, two) == before  # lab-2 untouched
    finally:
        restored = gateway.deploy()
        assert restored.returncode == 0, restored.stdout[-3000:] + restored.stderr[-3000:]


def test_a_second_gateway_serves_the_same_fleet_and_goes_when_the_group_drops_it(
    gateway: Gateway, tmp_path: Path
) -> None:
    three = gateway.fleet.hosts[2]
    both = write_inventory(gateway.fleet, tmp_path / "fleet.py", gateways=(gateway.host, three))
    try:
        done = gateway.deploy(both)
        assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
        second = Gateway(gateway.fleet, both, host_index=2)
        with second.openai() as client:
            assert sorted(m.id for m in client.models.list()) == MODELS
            for model in MODELS:  # lab-3 serves only tiny itself: the others are routed to lab-1 and lab-2
                reply = client.chat.completions.create(
                    model=model, messages=[{"role": "user", "content": "hi"}], max_tokens=2
                )
                assert reply.choices, model
    finally:
        restored = gateway.deploy()
        assert restored.returncode == 0, restored.stdout[-3000:] + restored.stderr[-3000:]
    assert gateway.fleet.ssh_ok(three, f"ss -Htln 'sport = :{PORT}'").strip() == ""  # nothing listens
    assert f"{PORT}/tcp" not in gateway.fleet.ssh_ok(three, "ufw status")  # and ufw no longer opens it


def test_a_gateway_only_host_serves_the_fleet_with_no_ollama_of_its_own(
    gateway: Gateway, tmp_path: Path
) -> None:
    """lab-3 as the fleet's one gateway and nothing else (gateway_only): its Ollama stopped and disabled,
    its own API port closed; the openai client through it answers every model of lab-1 and lab-2, streamed
    and not; every operation of a second deploy finds nothing to do; verify checks it as its gateway.
    Deployed as before, it serves again."""
    three = gateway.fleet.hosts[2]
    only = write_inventory(gateway.fleet, tmp_path / "fleet.py", gateways=(three,), gateway_only=three)
    try:
        done = gateway.deploy(only)
        assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
        assert gateway.fleet.ssh_ok(three, "systemctl is-active ollama || true").strip() == "inactive"
        assert gateway.fleet.ssh_ok(three, "systemctl is-enabled ollama || true").strip() == "disabled"
        assert gateway.fleet.ssh_ok(three, "ss -Htln 'sport = :443'").strip() == ""  # no API of its own
        assert not re.search(r"^443/tcp", gateway.fleet.ssh_ok(three, "ufw status"), re.MULTILINE)
        Gateway(gateway.fleet, only, host_index=2).answers_every_model()
        again = gateway.deploy(only, "--data", "deploy_fast_rerun=false")
        assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-3000:]
        assert changed(again.stdout) == {}
        verified = gateway.fleet.run(
            [sys.executable, "-m", "ollama_fleet.cli", "verify", str(only), "--json", "--quick"]
        )
        assert verified.returncode == 0, verified.stdout[-3000:] + verified.stderr[-3000:]
        checked = statuses(json.loads(verified.stdout))
        assert f"{three}/gateway" in checked and three not in checked, sorted(checked)
        assert set(checked[f"{three}/gateway"].values()) == {"pass"}, checked
    finally:
        restored = gateway.deploy()
        assert restored.returncode == 0, restored.stdout[-3000:] + restored.stderr[-3000:]
    assert gateway.fleet.ssh_ok(three, "systemctl is-active ollama").strip() == "active"
    assert gateway.fleet.ssh_ok(three, f"ss -Htln 'sport = :{PORT}'").strip() == ""
