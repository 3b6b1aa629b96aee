"""The fleet gateway on the lab: lab-1 (also an Ollama host) is in the inventory group `gateway` and serves
one endpoint on port 8443 for the three hosts, whose model lists differ:

    lab-1: tiny, vehicle-assistant      lab-2: tiny, vehicle-assistant, gw-two      lab-3: tiny

The official `openai` client (base_url = the gateway, the lab's key and CA) gets an answer for every model,
streamed and not; each request reaches only hosts serving its model (each host's own nginx access log says
so); with Ollama stopped on one host and nginx on another it still answers; a drained host gets nothing.
"""

from __future__ import annotations

import json
import re
import secrets
import ssl
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
from ollama_fleet.lab.state import LabState

pytestmark = pytest.mark.e2e

PORT = 8443
HOST_LOG = "/var/log/nginx/ollama-fleet.access.log"
GATEWAY_LOG = "/var/log/nginx/ollama-fleet-gateway.access.log"
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
        """host -> the statuses its own nginx logged for requests whose User-Agent holds `marker`, but for
        404: a gateway's first try the host declined (the model not loaded there)."""
        found = {}
        for host in self.fleet.hosts:
            log = self.fleet.ssh_ok(host, f"grep -F {marker} {HOST_LOG} || true")
            logged = [int(line.split('"')[2].split()[0]) for line in log.splitlines() if line]
            found[host] = [status for status in logged if status != 404]
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
    assert sum(len(s) for s in tiny.values()) == 6, tiny  # on any of the three
    assert vehicle[three] == [] and sum(len(s) for s in vehicle.values()) == 4, vehicle
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
    time.sleep(LOADED_CACHE_VALID_S + 1)  # every host's loaded check sees /api/ps as it is now
    with gateway.openai(marker) as client:
        for _ in range(6):
            reply = client.chat.completions.create(
                model="tiny", messages=[{"role": "user", "content": "hi"}], max_tokens=2
            )
            assert reply.choices[0].message.content
    assert gateway.hits(marker) == {one: [], two: [200] * 6, three: []}
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
                reply = client.chat.completions.create(
                    model="tiny", messages=[{"role": "user", "content": "hi"}], max_tokens=2
                )
                assert reply.choices[0].message.content
    finally:
        gateway.fleet.ssh(two, "systemctl start ollama")
        gateway.fleet.ssh(three, "systemctl start nginx")
    first, second = gateway.hits(f"{marker}-a"), gateway.hits(f"{marker}-b")
    assert set(first[two]) <= {502}, first  # lab-2's nginx answered 502 (no Ollama); the gateway went on
    assert second[three] == [], second  # lab-3's nginx was down: nothing reached it
    log = gateway.fleet.ssh_ok(gateway.host, f"grep -F {marker}-a {GATEWAY_LOG}")
    assert all(" 200 " in line for line in log.splitlines()), log


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
    assert hits[three] == [] and sum(len(s) for s in hits.values()) == 6, hits


SITE = "/etc/nginx/sites-available/ollama-fleet.conf"
DRAIN_MARK = "(drained by ollama-fleet rollout)"
LONG_STREAM_TOKENS = 12000  # the lab's tiny model makes ~100-300 tokens/s: a stream of 40 s or more


@dataclass
class Stream:
    """A long streamed chat through the gateway, read to its end in a thread."""

    first_chunk: threading.Event = field(default_factory=threading.Event)
    done: bool = False
    error: str = ""
    ended: float = 0.0


def long_stream(gateway: Gateway, model: str, stream: Stream) -> None:
    body = {
        "model": model,
        "messages": [{"role": "user", "content": "Tell a long story."}],
        "options": {"num_predict": LONG_STREAM_TOKENS},
    }
    headers = {"Authorization": f"Bearer {gateway.fleet.keys['ci']}"}
    try:
        with (
            httpx.Client(
                verify=ssl.create_default_context(cafile=str(gateway.fleet.ca_file)),
                trust_env=False,
                timeout=300,
            ) as client,
            client.stream("POST", f"{gateway.url}/api/chat", json=body, headers=headers) as response,
        ):
            if response.status_code != 200:
                stream.error = f"HTTP {response.status_code}"
                return
            for line in response.iter_lines():
                stream.first_chunk.set()
                stream.done = stream.done or bool(line and json.loads(line).get("done"))
    except httpx.HTTPError as exc:
        stream.error = f"{type(exc).__name__}: {exc}"
    finally:
        stream.ended = time.time()
        stream.first_chunk.set()


def steady_small_completions(gateway: Gateway, stop: threading.Event, statuses: list[int]) -> None:
    body = {"model": "tiny", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}
    headers = {"Authorization": f"Bearer {gateway.fleet.keys['ci']}"}
    with httpx.Client(
        verify=ssl.create_default_context(cafile=str(gateway.fleet.ca_file)), trust_env=False, timeout=120
    ) as client:
        while not stop.is_set():
            try:
                statuses.append(
                    client.post(f"{gateway.url}/v1/chat/completions", json=body, headers=headers).status_code
                )
            except httpx.HTTPError:
                statuses.append(0)
            time.sleep(0.3)


def active_since(gateway: Gateway, host: str) -> int:
    """When the host's Ollama last (re)started, in Unix seconds."""
    out = gateway.fleet.ssh_ok(host, "systemctl show ollama -p ActiveEnterTimestamp --timestamp=unix")
    return int(out.strip().split("@")[1])


def test_a_rollout_drains_each_batch_at_the_gateway_and_no_client_request_fails(
    gateway: Gateway, tmp_path: Path
) -> None:
    """A rollout that restarts every host's Ollama: lab-2 (the only host of gw-two) goes first, alone. The
    drain waits for a long gw-two stream that was in flight, so the stream ends whole and lab-2 restarts
    after it; steady small completions through the gateway all the while all get 200."""
    two = gateway.fleet.hosts[1]
    inventory = write_inventory(gateway.fleet, tmp_path / "fleet.py")
    inventory.write_text(inventory.read_text() + f"victim = [{two!r}]\n")
    change = tmp_path / "group_data"
    change.mkdir()
    (change / "all.py").write_text('ollama_env = {"OLLAMA_KEEP_ALIVE": "6m"}\n')  # restarts every Ollama
    stream, stop, statuses_seen = Stream(), threading.Event(), []
    reader = threading.Thread(target=long_stream, args=(gateway, "gw-two", stream))
    load = threading.Thread(target=steady_small_completions, args=(gateway, stop, statuses_seen))
    started = time.time()
    reader.start()
    assert stream.first_chunk.wait(120) and not stream.error, stream.error
    load.start()
    rollout_started = time.time()
    try:
        rolled = gateway.fleet.run(
            [
                sys.executable,
                "-m",
                "ollama_fleet.cli",
                "rollout",
                str(inventory),
                "--canary",
                "victim",
                "--batch",
                "100%",
                "--group-data",
                str(change),
                "--state",
                str(tmp_path / "rollout.json"),
                "--json",
            ],
            timeout=1200,
        )
    finally:
        rolled_for = time.time() - rollout_started
        stop.set()
        load.join(timeout=150)
        reader.join(timeout=300)
    try:
        assert rolled.returncode == 0, rolled.stdout[-3000:] + rolled.stderr[-5000:]
        assert f"gateway: {two} out of rotation at {gateway.host}" in rolled.stderr, rolled.stderr[-5000:]
        waited = re.search(r"requests in flight before the drain finished after (\d+) s", rolled.stderr)
        streamed = f"the stream ran {stream.ended - started:.0f} s, the rollout {rolled_for:.0f} s"
        assert waited and int(waited.group(1)) >= 1, f"{streamed}\n{rolled.stderr[-5000:]}"  # it waited
        assert stream.done and not stream.error, stream.error  # the stream ended whole
        assert active_since(gateway, two) >= int(stream.ended) - 1  # lab-2 restarted after the stream
        assert statuses_seen and set(statuses_seen) == {200}, statuses_seen
        site = gateway.fleet.ssh_ok(gateway.host, f"cat {SITE}")
        assert DRAIN_MARK not in site  # every host back in rotation
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
