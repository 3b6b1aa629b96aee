"""The checks against a fake fleet host on 127.0.0.1: a healthy host passes; each fault fails its check."""

from __future__ import annotations

import errno
import socket
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from verify_fakes import Behaviour, FakeHost, fake_host

from ollama_fleet.settings import settings_for_host
from ollama_fleet.verify import checks, probes
from ollama_fleet.verify.checks import CHECK_NAMES, check_host
from ollama_fleet.verify.context import CheckResult, HostContext, Status, make_client
from ollama_fleet.verify.reasons import CheckFailed
from ollama_fleet.verify.targets import Target

pytestmark = pytest.mark.unit

KEY = "ci-key-0123456789abcdef"
OTHER_KEY = "other-key-0123456789abcdef"


def closed_port() -> int:
    """A loopback port nothing listens on (bound, then released)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def target_for(host: FakeHost, keys: dict[str, str] | None = None, **overrides: object) -> Target:
    keys = {"ci": KEY} if keys is None else keys
    data: dict[str, object] = {
        "nginx_https_port": host.port,
        "tls_ca_dir": str(host.ca_dir),
        "auth_key_names": list(keys),
        "auth_secrets_file": str(host.ca_dir / "no-secrets.json"),
        "models_pull": ["tiny"],
        "ollama_origins": ["https://app.example.com"],
        "ollama_listen": f"127.0.0.1:{closed_port()}",
        "nginx_http_port": closed_port(),
        "firewall_enabled": False,
        **overrides,
    }
    environ = {f"OLLAMA_FLEET_API_KEY_{name.upper()}": key for name, key in keys.items()}
    settings = settings_for_host("fake", data, environ=environ)
    return Target(name="fake", address="127.0.0.1", settings=settings, data=data)


@pytest.fixture
def host(tmp_path: Path) -> Iterator[FakeHost]:
    with fake_host(tmp_path / "ca", Behaviour(keys={KEY})) as served:
        yield served


def run(target: Target, timeout: float = 5.0) -> dict[str, CheckResult]:
    return {result.check: result for result in check_host(target, timeout)}


def statuses(results: dict[str, CheckResult]) -> dict[str, Status]:
    return {name: result.status for name, result in results.items()}


# The fake host runs with firewall_enabled false: its Ollama port is closed, not filtered, so raw_port proves
# nothing about a firewall (n/a), like ipv6 with no IPv6 subnet and outsider outside the lab.
HEALTHY = {name: Status.PASS for name in CHECK_NAMES} | {
    "outsider": Status.NA,
    "ipv6": Status.NA,
    "raw_port": Status.NA,
    "gpu": Status.NA,  # gpu_vendor auto: where the models run is shown, not required
}


def test_a_healthy_host_passes_every_check(host: FakeHost) -> None:
    results = run(target_for(host))
    assert statuses(results) == HEALTHY, {n: r.reason for n, r in results.items() if r.reason}
    assert results["version"].figure == "0.24.0"
    assert results["tls"].metrics["days_left"] == pytest.approx(397, abs=1)
    assert results["auth"].figure == "no key 401, wrong key 401, 1/1 keys accepted"
    assert results["scopes"].figure == "1 inference key(s) refused admin paths, 0 admin pass"
    assert results["stream"].metrics["chunks"] == 64
    assert results["stream"].metrics["bursts"] >= 32
    assert results["cors"].figure.startswith("https://app.example.com allowed")
    assert "closed (refused)" in results["raw_port"].figure
    assert "not a lab host" in results["outsider"].figure


def test_ollama_refusing_the_host_header_fails_root_and_blocks_what_needs_ollama(host: FakeHost) -> None:
    host.behaviour.root_status = 403
    results = run(target_for(host))
    assert results["root"].status is Status.FAIL
    assert "must send Host: localhost:11434" in results["root"].reason
    blocked = {n for n, r in results.items() if r.status is Status.BLOCKED}
    assert blocked == {"auth", "scopes", "version", "models", "chat", "stream", "gpu", "ipv6"}
    assert all(results[n].status is Status.PASS for n in ("tls", "cors"))
    assert results["raw_port"].status is Status.NA


def test_ollama_down_says_which_unit_to_look_at(host: FakeHost) -> None:
    host.behaviour.root_status = 502
    results = run(target_for(host))
    assert results["root"].status is Status.FAIL
    assert "systemctl status ollama" in results["root"].reason


def test_a_buffered_stream_fails_only_the_stream_check(host: FakeHost) -> None:
    host.behaviour.buffered = True
    results = run(target_for(host))
    assert statuses(results) == HEALTHY | {"stream": Status.FAIL}
    assert "proxy_buffering off" in results["stream"].reason
    assert "(seen twice)" in results["stream"].reason


def test_a_missing_model_fails_models_and_blocks_chat_and_stream(host: FakeHost) -> None:
    host.behaviour.models = ["other:latest"]
    results = run(target_for(host))
    expected = HEALTHY | {"models": Status.FAIL} | dict.fromkeys(("chat", "stream", "gpu"), Status.BLOCKED)
    assert statuses(results) == expected
    assert "tiny:latest" in results["models"].reason
    assert "re-run the deploy" in results["models"].reason


def test_a_host_with_no_models_is_a_finding_not_a_pass(host: FakeHost) -> None:
    results = run(target_for(host, models_pull=[]))
    expected = HEALTHY | {"models": Status.FAIL} | dict.fromkeys(("chat", "stream", "gpu"), Status.BLOCKED)
    assert statuses(results) == expected
    assert "the host's settings name no model" in results["models"].reason


def test_a_stale_key_list_fails_auth_and_names_the_key(host: FakeHost) -> None:
    host.behaviour.keys = {OTHER_KEY}
    results = run(target_for(host))
    assert results["auth"].status is Status.FAIL
    assert "key(s) ci" in results["auth"].reason and "stale" in results["auth"].reason
    assert KEY not in results["auth"].reason
    assert {n for n, r in results.items() if r.status is Status.BLOCKED} == {
        "scopes",
        "version",
        "models",
        "chat",
        "stream",
        "gpu",
        "ipv6",
    }


def test_one_stale_key_of_two_fails_auth_only(host: FakeHost) -> None:
    """The checks after auth use any key that works, so a partly stale list fails auth alone."""
    target = target_for(host, keys={"ci": KEY, "other": OTHER_KEY})
    results = run(target)
    assert statuses(results) == HEALTHY | {"auth": Status.FAIL}
    assert "key(s) other" in results["auth"].reason


def test_keys_not_enforced_fails_auth(host: FakeHost) -> None:
    host.behaviour.keyless_allowed = True
    results = run(target_for(host))
    assert statuses(results) == HEALTHY | {"auth": Status.FAIL}
    assert "does not enforce API keys" in results["auth"].reason


def test_a_version_other_than_the_pinned_one_fails_version(host: FakeHost) -> None:
    host.behaviour.version = "0.23.1"
    results = run(target_for(host))
    assert statuses(results) == HEALTHY | {"version": Status.FAIL}
    assert "0.23.1" in results["version"].reason and "0.24.0" in results["version"].reason


def test_cors_echoing_any_origin_fails_cors(host: FakeHost) -> None:
    host.behaviour.cors_echo_any = True
    results = run(target_for(host))
    assert statuses(results) == HEALTHY | {"cors": Status.FAIL}
    assert "disallowed origin" in results["cors"].reason


def test_cors_with_no_origins_checks_only_the_refusal_and_says_so(host: FakeHost) -> None:
    results = run(target_for(host, ollama_origins=[]))
    assert results["cors"].status is Status.NA  # no origin to allow: the feature is off
    assert results["cors"].figure.startswith("no ollama_origins: no origin to allow; ")
    host.behaviour.cors_echo_any = True
    assert run(target_for(host, ollama_origins=[]))["cors"].status is Status.FAIL


def test_an_allowed_origin_that_is_refused_fails_cors(host: FakeHost) -> None:
    results = run(target_for(host, ollama_origins=["https://*.lan"]))
    assert results["cors"].status is Status.FAIL
    assert "https://verify.lan" in results["cors"].reason


def test_a_certificate_from_another_ca_fails_tls_and_blocks_https_checks(
    host: FakeHost, tmp_path: Path
) -> None:
    from ollama_fleet.pki import FleetCA

    FleetCA.load_or_create(tmp_path / "other-ca")
    results = run(target_for(host, tls_ca_dir=str(tmp_path / "other-ca")))
    assert results["tls"].status is Status.FAIL
    assert "does not verify against the fleet CA" in results["tls"].reason
    https_checks = {"root", "auth", "scopes", "version", "models", "chat", "stream", "gpu", "cors", "ipv6"}
    assert {n for n, r in results.items() if r.status is Status.BLOCKED} == https_checks
    assert results["raw_port"].status is Status.NA  # ran (the host answered TCP: reachable), firewall off


def test_a_certificate_without_the_address_fails_tls_naming_what_it_holds(tmp_path: Path) -> None:
    with fake_host(tmp_path / "ca", Behaviour(keys={KEY}), sans=("other.lan",)) as served:
        results = run(target_for(served))
    assert results["tls"].status is Status.FAIL
    assert "does not name 127.0.0.1" in results["tls"].reason
    assert "the certificate names other.lan" in results["tls"].reason


def test_a_missing_fleet_ca_says_where_it_looked(host: FakeHost, tmp_path: Path) -> None:
    results = run(target_for(host, tls_ca_dir=str(tmp_path / "nowhere")))
    assert results["tls"].status is Status.FAIL
    assert str(tmp_path / "nowhere" / "ca.pem") in results["tls"].reason


def test_nothing_listening_fails_tls_and_blocks_the_rest(tmp_path: Path) -> None:
    from ollama_fleet.pki import FleetCA

    FleetCA.load_or_create(tmp_path / "ca")
    dead = FakeHost(port=closed_port(), behaviour=Behaviour(), ca_dir=tmp_path / "ca")
    results = run(target_for(dead))
    assert results["tls"].status is Status.FAIL
    assert "connection refused" in results["tls"].reason
    assert all(r.status is Status.BLOCKED for n, r in results.items() if n not in ("tls", "outsider"))


def test_an_open_raw_port_fails_raw_port(host: FakeHost) -> None:
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        port = listener.getsockname()[1]
        results = run(target_for(host, ollama_listen=f"127.0.0.1:{port}"))
    assert statuses(results) == HEALTHY | {"raw_port": Status.FAIL}
    assert "Ollama is exposed" in results["raw_port"].reason


def test_a_plain_http_listener_fails_plain_http_when_it_should_be_closed(host: FakeHost) -> None:
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        port = listener.getsockname()[1]
        results = run(target_for(host, nginx_http_port=port))
    assert statuses(results) == HEALTHY | {"plain_http": Status.FAIL}
    assert "sends its key in clear" in results["plain_http"].reason


def test_a_missing_redirect_fails_plain_http_when_it_is_on(host: FakeHost) -> None:
    results = run(target_for(host, nginx_http_redirect=True))
    assert statuses(results) == HEALTHY | {"plain_http": Status.FAIL}
    assert "nginx_http_redirect is on but" in results["plain_http"].reason


def test_a_raw_port_that_resets_fails_when_the_firewall_should_drop_it(host: FakeHost) -> None:
    target = target_for(
        host,
        firewall_enabled=True,
        firewall_client_subnets=["127.0.0.0/8"],
        firewall_admin_subnets=["127.0.0.0/8"],
    )
    results = run(target)
    assert results["raw_port"].status is Status.FAIL
    assert "firewall lets it through" in results["raw_port"].reason


def test_with_auth_disabled_auth_and_scopes_are_not_applicable(tmp_path: Path) -> None:
    with fake_host(tmp_path / "ca", Behaviour(keys=set())) as served:
        results = run(target_for(served, keys={}, auth_enabled=False))
    assert statuses(results) == HEALTHY | {"auth": Status.NA, "scopes": Status.NA}
    assert results["auth"].figure == "auth disabled: the API answers without a key (no key to check)"


def test_progress_sees_each_result_as_it_comes(host: FakeHost) -> None:
    """Checks run side by side: each result is reported once, as it ends, after every check it waits for;
    the returned list keeps CHECKS' order."""
    host.behaviour.stream_gap = 0.01  # a stream of 64 chunks that takes 0.64 s
    seen: list[str] = []
    results = check_host(target_for(host), 5.0, on_result=lambda target, result: seen.append(result.check))
    assert [r.check for r in results] == list(CHECK_NAMES)
    assert sorted(seen) == sorted(CHECK_NAMES)
    for spec in checks.CHECKS:
        assert all(seen.index(first) < seen.index(spec.name) for first in checks.waits_for(spec)), spec.name
    # cors waits for tls only, not for the stream that started before it
    assert seen.index("cors") < seen.index("stream")


def test_one_after_another_gives_the_same_verdicts_in_order(host: FakeHost) -> None:
    seen: list[str] = []
    results = check_host(
        target_for(host), 5.0, on_result=lambda target, result: seen.append(result.check), concurrent=False
    )
    assert seen == [r.check for r in results] == list(CHECK_NAMES)
    assert {r.check: r.status for r in results} == HEALTHY


@pytest.mark.parametrize("num_parallel", [1, 2])
def test_at_most_num_parallel_generations_at_once(host: FakeHost, num_parallel: int) -> None:
    """chat (two loaded models) and stream start together; the host runs OLLAMA_NUM_PARALLEL at a time."""
    host.behaviour.models = ["tiny:latest", "other:latest"]
    host.behaviour.chat_seconds = 0.2
    target = target_for(
        host, models_pull=["tiny", "other"], ollama_env={"OLLAMA_NUM_PARALLEL": str(num_parallel)}
    )
    results = run(target)
    assert results["chat"].status is results["stream"].status is Status.PASS
    assert results["chat"].figure.startswith("2 model(s) answered (2 already loaded")
    assert host.behaviour.most_generating == num_parallel


def test_each_model_gets_one_generation_the_stream_answering_for_its_model(host: FakeHost) -> None:
    host.behaviour.models = ["tiny:latest", "other:latest"]
    results = run(target_for(host, models_pull=["tiny", "other"]))
    assert results["chat"].status is results["stream"].status is Status.PASS
    assert sorted(host.behaviour.generated) == ["other:latest", "tiny:latest"]
    assert results["stream"].figure.startswith("tiny:latest: first chunk")
    assert "tiny:latest in the stream's generation" in results["chat"].figure
    assert host.behaviour.shown == []


def test_a_model_whose_load_would_evict_is_shown_not_generated(host: FakeHost) -> None:
    """OLLAMA_MAX_LOADED_MODELS=1 with tiny loaded: asking `other` would evict tiny."""
    host.behaviour.models = ["tiny:latest", "other:latest"]
    host.behaviour.loaded = ["tiny:latest"]
    target = target_for(host, models_pull=["other", "tiny"], ollama_env={"OLLAMA_MAX_LOADED_MODELS": "1"})
    results = run(target)
    assert results["chat"].status is results["stream"].status is Status.PASS
    assert host.behaviour.generated == ["tiny:latest"]  # the stream, on the loaded model, not the first
    assert host.behaviour.shown == ["other:latest"]
    assert results["stream"].figure.startswith("tiny:latest: ")
    assert "other:latest not loaded: shown by /api/show, not generated (loading could evict tiny:latest)" in (
        results["chat"].figure
    )


def test_with_room_for_a_load_the_model_not_loaded_is_generated(host: FakeHost) -> None:
    host.behaviour.models = ["tiny:latest", "other:latest"]
    host.behaviour.loaded = ["tiny:latest"]
    results = run(target_for(host, models_pull=["other", "tiny"]))  # room for 3 runners: one more fits
    assert sorted(host.behaviour.generated) == ["other:latest", "tiny:latest"]
    assert host.behaviour.shown == []
    assert results["chat"].figure.startswith("2 model(s) answered (1 already loaded")


def test_a_full_host_with_none_of_the_models_loaded_proves_no_generation_and_says_so(host: FakeHost) -> None:
    host.behaviour.models = ["tiny:latest", "busy:latest"]
    host.behaviour.loaded = ["busy:latest"]  # a model outside this inventory, in the only runner
    target = target_for(host, ollama_env={"OLLAMA_MAX_LOADED_MODELS": "1"})
    results = run(target)
    assert host.behaviour.generated == []
    assert host.behaviour.shown == ["tiny:latest"]
    assert results["stream"].status is results["chat"].status is Status.NA
    assert "loading could evict busy:latest" in results["stream"].figure
    assert "tiny:latest not loaded: shown by /api/show" in results["chat"].figure


def test_what_each_check_waits_for() -> None:
    waits = {spec.name: checks.waits_for(spec) for spec in checks.CHECKS}
    assert waits["tls"] == ()
    assert waits["cors"] == waits["raw_port"] == waits["plain_http"] == waits["outsider"] == ("tls",)
    assert waits["chat"] == waits["stream"] == ("auth", "models")
    assert waits["gpu"] == ("auth", "models", "stream", "chat")
    assert waits["ipv6"] == ("tls", "auth")


def test_a_dropped_port_waits_ten_round_trips_of_the_control_with_a_floor() -> None:
    assert probes.closed_port_timeout(0.0004, ceiling=30) == probes.CLOSED_PORT_FLOOR  # a LAN
    assert probes.closed_port_timeout(0.1, ceiling=30) == pytest.approx(1.0)  # a slow network
    assert probes.closed_port_timeout(5.0, ceiling=30) == 30  # never past the request timeout


def test_a_silent_port_proves_nothing_when_the_positive_control_fails(host: FakeHost) -> None:
    target = target_for(host, nginx_https_port=closed_port())
    with make_client(target, 5.0) as client:
        ctx = HostContext(target=target, client=client, timeout=5.0)
        with pytest.raises(CheckFailed, match="the positive control failed: port"):
            ctx.dropped_port_wait("127.0.0.1", "127.0.0.1")
    target = target_for(host)
    with make_client(target, 5.0) as client:
        ctx = HostContext(target=target, client=client, timeout=5.0)
        wait, rtt = ctx.dropped_port_wait("127.0.0.1", "127.0.0.1")
    assert 0 < rtt < 1 and wait == probes.closed_port_timeout(rtt, 5.0)


def test_scopes_not_enforced_fails_scopes_only(host: FakeHost) -> None:
    host.behaviour.scopes_enforced = False
    results = run(target_for(host))
    assert statuses(results) == HEALTHY | {"scopes": Status.FAIL}
    assert (
        "inference key 'ci' got 400 on POST /api/copy, not 403 insufficient_scope" in results["scopes"].reason
    )


def test_an_admin_key_refused_on_admin_paths_fails_scopes(host: FakeHost) -> None:
    policies = {"ci": {"scope": "admin"}}
    results = run(target_for(host, auth_key_policies=policies))
    assert statuses(results) == HEALTHY | {"scopes": Status.FAIL}
    assert "admin key 'ci' got 403 on POST /api/copy" in results["scopes"].reason
    host.behaviour.admin_keys = {KEY}
    admin_only = run(target_for(host, auth_key_policies=policies))["scopes"]
    assert admin_only.status is Status.NA  # no inference key: what scopes protect was not shown
    assert (
        admin_only.figure == "no inference key probed: 0 inference key(s) refused admin paths, 1 admin pass"
    )


IPV6_CLIENTS = {"firewall_client_subnets": ["127.0.0.0/8", "::1/128"]}


def test_ipv6_clients_get_tls_and_the_api_on_every_ipv6_address_the_certificate_names(tmp_path: Path) -> None:
    with fake_host(tmp_path / "ca", Behaviour(keys={KEY}), sans=("127.0.0.1", "::1"), ipv6=True) as served:
        results = run(target_for(served, **IPV6_CLIENTS))
    assert statuses(results) == HEALTHY | {"ipv6": Status.PASS}, results["ipv6"].reason
    assert results["ipv6"].figure.startswith("TLS and the API over ::1")


def test_a_certificate_without_the_ipv6_address_fails_ipv6_only(tmp_path: Path) -> None:
    with fake_host(tmp_path / "ca", Behaviour(keys={KEY}), ipv6=True) as served:
        results = run(target_for(served, **IPV6_CLIENTS))
    assert statuses(results) == HEALTHY | {"ipv6": Status.FAIL}
    assert "the certificate names no IPv6 address (it names 127.0.0.1)" in results["ipv6"].reason


def test_nothing_listening_on_ipv6_fails_ipv6_only(tmp_path: Path) -> None:
    with fake_host(tmp_path / "ca", Behaviour(keys={KEY}), sans=("127.0.0.1", "::1")) as served:
        results = run(target_for(served, **IPV6_CLIENTS))
    assert statuses(results) == HEALTHY | {"ipv6": Status.FAIL}
    assert "GET /v1/models" in results["ipv6"].reason and "[::1]" in results["ipv6"].reason


def gateway_target(host: FakeHost, models: tuple[str, ...]) -> Target:
    """The fake host as a gateway on its port (its own API then on another, unused, port)."""
    plain = target_for(host, gateway_enabled=True, gateway_port=host.port, nginx_https_port=closed_port())
    return Target(
        name="fake/gateway",
        address=plain.address,
        settings=plain.settings,
        data=plain.data,
        gateway_models=models,
    )


def test_a_gateway_is_checked_for_what_its_clients_use(host: FakeHost) -> None:
    host.behaviour.models = ["tiny:latest", "other:latest"]
    results = run(gateway_target(host, ("other:latest", "tiny:latest")))
    assert statuses(results) == {
        name: Status.PASS for name in ("tls", "root", "auth", "models", "chat", "stream")
    }
    assert results["chat"].figure.startswith("2 model(s) answered")


def test_a_gateway_missing_a_hosts_model_fails_models_naming_it(host: FakeHost) -> None:
    results = run(gateway_target(host, ("other:latest", "tiny:latest")))
    assert results["models"].status is Status.FAIL
    assert "the gateway does not list other:latest" in results["models"].reason


def test_an_ipv6_host_that_is_unreachable_is_blamed_on_ufw_not_on_nginx() -> None:
    """IPV6=no leaves ip6tables' DROP policy without rules: neighbour discovery is dropped once the client's
    entry expires, and the connect fails with EHOSTUNREACH instead of a timeout."""
    cause = OSError(errno.EHOSTUNREACH, "No route to host")
    unreachable = httpx.ConnectError("[Errno 113] No route to host")
    unreachable.__cause__ = cause
    assert checks._no_route(unreachable)
    refused = httpx.ConnectError("[Errno 111] Connection refused")
    refused.__cause__ = OSError(errno.ECONNREFUSED, "Connection refused")
    assert not checks._no_route(refused)


# --- the gpu check ---------------------------------------------------------------------------------------


def gpu_host(tmp_path: Path, vram_share: float) -> Iterator[FakeHost]:
    return fake_host(tmp_path / "ca", Behaviour(keys={KEY}, vram_share=vram_share))


def test_gpu_check_passes_a_declared_gpu_host_with_every_model_in_vram(tmp_path: Path) -> None:
    with gpu_host(tmp_path, 1.0) as served:
        result = run(target_for(served, gpu_vendor="nvidia"))["gpu"]
    assert result.status is Status.PASS and result.figure == "100% GPU: tiny:latest"


def test_gpu_check_fails_a_split_naming_the_share_on_cpu(tmp_path: Path) -> None:
    with gpu_host(tmp_path, 0.59) as served:
        result = run(target_for(served, gpu_vendor="amd"))["gpu"]
    assert result.status is Status.FAIL
    assert result.reason.startswith("tiny:latest 41% on CPU: the model does not fit the free VRAM")


def test_gpu_check_fails_a_gpu_host_serving_from_the_cpu(tmp_path: Path) -> None:
    with gpu_host(tmp_path, 0.0) as served:
        result = run(target_for(served, gpu_vendor="nvidia"))["gpu"]
    assert result.status is Status.FAIL
    assert "tiny:latest 100% on CPU: likely nvidia_uvm or /dev/nvidia-uvm missing" in result.reason


def test_gpu_check_only_shows_where_models_run_under_auto(tmp_path: Path) -> None:
    with gpu_host(tmp_path, 0.0) as served:
        result = run(target_for(served))["gpu"]
    assert result.status is Status.NA
    assert result.figure == "gpu_vendor auto, no GPU required (tiny:latest 100% CPU)"
