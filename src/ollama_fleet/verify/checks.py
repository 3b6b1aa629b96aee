"""The checks, one function each: they use a host as a client would, through nginx, with the CA and a key.

A check returns a CheckResult or raises CheckFailed with the reason. Checks that need something an earlier
check establishes (a TLS connection, a running Ollama, an accepted key, the models) declare it in `needs`;
when it is missing they are reported as blocked, so a fault shows as one failed check, not a cascade.
"""

from __future__ import annotations

import errno
import ipaddress
import secrets
import ssl
import threading
import time
from collections.abc import Callable, Collection
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import httpx
from cryptography import x509

from ollama_fleet import gpu
from ollama_fleet.pki import ROLL_COMMAND, ca_constraints
from ollama_fleet.verify import probes
from ollama_fleet.verify.context import (
    CheckResult,
    HostContext,
    Status,
    make_client,
    not_applicable,
    passed,
)
from ollama_fleet.verify.reasons import (
    CheckFailed,
    explain_status,
    explain_tls,
    explain_transport,
    is_openai_error,
)
from ollama_fleet.verify.sse import StreamTiming, judge_stream, timing_from_reads
from ollama_fleet.verify.targets import Target

CHAT_MAX_TOKENS = 8  # the tiny lab model never emits EOS, so every completion runs to max_tokens
STREAM_MAX_TOKENS = 64  # enough chunks to tell a token-by-token stream from a buffered one
DISALLOWED_ORIGIN = "https://disallowed.ollama-fleet-verify.invalid"
PROMPT = [{"role": "user", "content": "Say hello to the fleet."}]


# --- the checks, in the order they run ---------------------------------------------------------------


def check_tls(ctx: HostContext) -> CheckResult:
    target, tls = ctx.target, ctx.settings.tls
    if not target.https:
        ctx.established.add("reachable")
        return not_applicable("nginx disabled: Ollama serves plain HTTP, no TLS to check")
    ca = target.ca_file
    if ca is not None and not ca.is_file():
        raise CheckFailed(
            f"the fleet CA {ca} is missing on the controller: run the deploy (it creates the CA) "
            "or fix tls_ca_dir"
        )
    if probes.tcp_connect(target.address, target.port, timeout=min(ctx.timeout, 5.0)) == "open":
        ctx.established.add("reachable")
    try:
        facts = probes.tls_handshake(target.address, target.port, probes.client_ssl_context(ca), ctx.timeout)
    except (OSError, ssl.SSLError) as exc:
        reason = explain_tls(exc, target.address, target.port, str(ca or "the system store"))
        if isinstance(exc, ssl.SSLCertVerificationError) and "match" in str(exc.verify_message):
            names = probes.certificate_names(target.address, target.port, ctx.timeout)
            reason += f"; the certificate names {', '.join(names) or 'nothing'}"
        raise CheckFailed(reason) from None
    days = facts.days_left()
    if days < tls.renew_before_days:
        raise CheckFailed(
            f"the certificate expires in {days:.0f} days, inside tls_renew_before_days="
            f"{tls.renew_before_days}: re-run the deploy to renew it"
        )
    constraints = _ca_constraints(ca)
    if ca is None:
        signer = ""
    elif constraints is None:
        signer = f"; the fleet CA has NO name constraints (roll it: {ROLL_COMMAND})"
    else:
        signer = f"; the fleet CA may sign only for {', '.join(constraints)}"
    return passed(
        f"{facts.version}, expires in {days:.0f} days{signer}",
        days_left=round(days, 1),
        version=facts.version,
        ca_name_constraints=" ".join(constraints) if constraints is not None else "none" if ca else "n/a",
    )


def _ca_constraints(ca_file: Path | None) -> list[str] | None:
    """The signing fleet CA's name constraints (the first certificate of ca.pem); None: none, or no CA."""
    if ca_file is None:
        return None
    try:
        return ca_constraints(x509.load_pem_x509_certificate(ca_file.read_bytes()))
    except ValueError:
        return None


def check_root(ctx: HostContext) -> CheckResult:
    auth = ctx.settings.auth
    open_health = ctx.target.https and auth.enabled and auth.health_open
    path = "/health" if open_health else "/"
    keys = ctx.configured_keys()
    key = keys[0][1] if keys and ctx.target.https and auth.enabled and not open_health else None
    started = time.perf_counter()
    response = ctx.request("GET", path, key=key)
    elapsed = time.perf_counter() - started
    if response.status_code != 200:
        raise CheckFailed(explain_status(response.status_code, response.text, f"GET {path}"))
    if "Ollama is running" not in response.text:
        raise CheckFailed(
            f"GET {path} answered 200 but not 'Ollama is running' (got {response.text[:60]!r}): "
            f"the nginx site does not proxy {path} to Ollama's /"
        )
    return passed(f"GET {path}: Ollama is running ({elapsed * 1000:.0f} ms)", ms=round(elapsed * 1000, 1))


def check_auth(ctx: HostContext) -> CheckResult:
    auth = ctx.settings.auth
    if not (ctx.target.https and auth.enabled):
        response = ctx.request("GET", "/v1/models")
        if response.status_code != 200:
            raise CheckFailed(
                explain_status(response.status_code, response.text, "GET /v1/models without a key")
            )
        ctx.established.add("key")
        return not_applicable("auth disabled: the API answers without a key (no key to check)")
    problems = _keyless_problems(ctx)
    accepted, rejected = [], []
    for name, key in ctx.configured_keys():
        response = ctx.request("GET", "/v1/models", key=key)
        if response.status_code == 429:  # nginx limits only keys it accepted
            accepted.append(name)
        elif response.status_code == 200:
            accepted.append(name)
            ctx.key = ctx.key or key
        elif response.status_code == 401:
            rejected.append(name)
        else:
            problems.append(
                explain_status(response.status_code, response.text, f"GET /v1/models with key {name!r}")
            )
    if ctx.key:
        ctx.established.add("key")
    if rejected:
        problems.append(
            f"401 with the configured key(s) {', '.join(rejected)}: the key list on the host is stale; "
            "re-run the deploy"
        )
    still_valid = [name for name, key in ctx.refused_keys() if _accepted(ctx, key)]
    if still_valid:
        problems.append(
            f"the removed or ungranted key(s) {', '.join(still_valid)} still answer 200: nginx has not "
            "loaded the current key list; re-run the deploy (it reloads nginx when its config is stale)"
        )
    total = len(accepted) + len(rejected)
    refused = len(ctx.refused_keys())
    figure = f"no key 401, wrong key 401, {len(accepted)}/{total} keys accepted"
    figure += f", {refused - len(still_valid)}/{refused} removed keys refused" if refused else ""
    if problems:
        raise CheckFailed("; ".join(problems))
    return passed(figure, keys_accepted=len(accepted))


# An admin request that changes nothing: Ollama answers 400 to an empty copy (source and destination needed).
SCOPE_PROBE = ("POST", "/api/copy")


def check_scopes(ctx: HostContext) -> CheckResult:
    """Each inference key gets 403 on an admin path and each admin key gets past nginx to Ollama."""
    auth = ctx.settings.auth
    if not (ctx.target.https and auth.enabled):
        return not_applicable("auth disabled: no key scopes")
    method, path = SCOPE_PROBE
    problems, limited, counts = [], [], {"inference": 0, "admin": 0}
    for name, key in ctx.configured_keys():
        scope = auth.policy(name).scope
        response = ctx.request(method, path, key=key, json={})
        code = _error_code(response)
        if response.status_code == 401:
            continue  # a stale key list: the auth check reports it
        if response.status_code == 429:
            limited.append(name)
        elif scope == "inference" and code != "insufficient_scope":
            problems.append(
                f"inference key {name!r} got {response.status_code} on {method} {path}, not 403 "
                "insufficient_scope: nginx does not enforce scopes; re-run the deploy"
            )
        elif scope == "admin" and response.status_code in (401, 403):
            problems.append(
                f"admin key {name!r} got {response.status_code} on {method} {path}: "
                f"{explain_status(response.status_code, response.text, 'an admin path')}"
            )
        else:
            counts[scope] += 1
    if problems:
        raise CheckFailed("; ".join(problems))
    figure = f"{counts['inference']} inference key(s) refused admin paths, {counts['admin']} admin pass"
    figure += f"; {', '.join(limited)} at their rate limit, not probed" if limited else ""
    if not counts["inference"]:
        # What scopes protect is an inference key kept off admin paths: with none probed, nothing is shown.
        return not_applicable(f"no inference key probed: {figure}")
    return passed(figure)


def _error_code(response: httpx.Response) -> str | None:
    try:
        return str(response.json()["error"]["code"])
    except (ValueError, KeyError, TypeError):
        return None


def _accepted(ctx: HostContext, key: str) -> bool:
    return ctx.request("GET", "/v1/models", key=key).status_code == 200


def _keyless_problems(ctx: HostContext) -> list[str]:
    problems = []
    wrong_key = "ollama-fleet-verify-wrong-" + secrets.token_hex(8)
    for label, key in (("without a key", None), ("with a wrong key", wrong_key)):
        response = ctx.request("GET", "/v1/models", key=key)
        if response.status_code == 200:
            problems.append(
                f"GET /v1/models {label} answered 200: nginx does not enforce API keys; the site must "
                "include the api-keys file and check Authorization (re-run the deploy)"
            )
        elif response.status_code != 401:
            problems.append(f"GET /v1/models {label}: expected 401, got {response.status_code}")
        elif not is_openai_error(response.text):
            problems.append(
                f"GET /v1/models {label} answered 401 without an OpenAI-style JSON body "
                f"(got {response.text[:60]!r}): OpenAI clients cannot show the error; "
                "fix the site's 401 handler"
            )
    return problems


def check_version(ctx: HostContext) -> CheckResult:
    version = str(ctx.api("GET", "/api/version").get("version", ""))
    wanted = ctx.settings.ollama.version
    if version != wanted:
        raise CheckFailed(
            f"the host runs Ollama {version or '?'} but ollama_version is {wanted}: re-run the deploy "
            "(or restart ollama if the new binary is installed but not running)"
        )
    return passed(version, version=version)


def check_models(ctx: HostContext) -> CheckResult:
    wanted = ctx.target.models
    if not wanted:
        where = "no host of the inventory serves" if ctx.target.is_gateway else "the host's settings name"
        raise CheckFailed(
            f"{where} no model (models_pull, models_gguf and models_custom are empty): a client can run "
            "nothing here; list the models it must serve"
        )
    tags = [str(m.get("name")) for m in ctx.api("GET", "/api/tags").get("models") or []]
    listed = [str(m.get("id")) for m in ctx.api("GET", "/v1/models").get("data") or []]
    missing = [name for name in wanted if name not in tags]
    if missing and ctx.target.is_gateway:
        raise CheckFailed(
            f"the gateway does not list {', '.join(missing)}, which the inventory's hosts serve: re-run the "
            "deploy on the gateway host (its lists are written from every host's settings)"
        )
    if missing:
        raise CheckFailed(
            f"missing on the host (not in /api/tags): {', '.join(missing)}; re-run the deploy, which "
            "pulls or creates every configured model"
        )
    unlisted = [name for name in wanted if name not in listed]
    if unlisted:
        raise CheckFailed(f"/v1/models does not list {', '.join(unlisted)} although /api/tags has them")
    ctx.established.add("models")
    where = "listed by the gateway" if ctx.target.is_gateway else "on the host"
    return passed(
        f"{len(wanted)} configured of {len(tags)} {where}", configured=len(wanted), on_host=len(tags)
    )


def check_chat(ctx: HostContext) -> CheckResult:
    """One short completion per model, or none where a load could evict (verify/generation.py). The
    stream check's model is answered by that stream; the other loaded models are asked at once, as many at
    a time as OLLAMA_NUM_PARALLEL lets the host run; models that must be loaded are asked one after another
    after the stream, so the check never loads two at once; the rest are shown by /api/show."""
    models = ctx.target.models
    if not models:
        return not_applicable("no models configured")
    plan = ctx.generation_plan()
    warm = [model for model in plan.warm if model != plan.stream_model]
    with ThreadPoolExecutor(max_workers=max(1, len(warm)), thread_name_prefix="verify-chat") as pool:
        answers = [pool.submit(_chat_once, ctx, model) for model in warm]
        seconds = [answer.result() for answer in answers]  # the first failure in the models' order
    if plan.stream_model is not None:
        _streamed_answer(ctx, plan.stream_model)
    seconds += [_chat_once(ctx, model) for model in plan.cold if model != plan.stream_model]
    for model in plan.shown:
        _show_once(ctx, model)
    answered = len(models) - len(plan.shown)
    figure = f"{answered} model(s) answered ({len(plan.warm)} already loaded"
    figure += f"; {plan.stream_model} in the stream's generation)" if plan.stream_model else ")"
    figure += f", slowest {max(seconds):.2f} s" if seconds else ""
    if plan.shown:
        figure += (
            f"; {', '.join(plan.shown)} not loaded: shown by /api/show, not generated ({plan.why_shown()})"
        )
    if not answered:
        return not_applicable(figure)  # every model shown, none generated: no answer was proven
    return passed(
        figure,
        slowest_s=round(max(seconds, default=0.0), 3),
        generated=answered,
        shown=len(plan.shown),
    )


def _streamed_answer(ctx: HostContext, model: str) -> None:
    """The stream check's generation answers for `model`: it must have brought text."""
    if not ctx.wait_for("stream"):
        _chat_once(ctx, model)  # no stream in this run: ask it here
        return
    if not ctx.streamed_text:
        why = ctx.stream_problem or "the stream check did not run"
        raise CheckFailed(f"model {model}: no answer in the stream: {why}")


def _show_once(ctx: HostContext, model: str) -> None:
    """/api/show: the model is there and Ollama reads its manifest, without loading it."""
    shown = ctx.api("POST", "/api/show", json={"model": model})
    if not isinstance(shown, dict) or not (shown.get("details") or shown.get("modelfile")):
        raise CheckFailed(f"model {model}: /api/show answered without the model's details: {shown!r:.160}")


def _chat_once(ctx: HostContext, model: str) -> float:
    body = {"model": model, "messages": PROMPT, "max_tokens": CHAT_MAX_TOKENS, "stream": False}
    with ctx.generation_slot():
        started = time.perf_counter()
        reply = ctx.api("POST", "/v1/chat/completions", json=body)
        elapsed = time.perf_counter() - started
    try:
        content = reply["choices"][0]["message"]["content"]
    except (KeyError, IndexError, TypeError):
        raise CheckFailed(
            f"model {model}: the completion has no choices[0].message.content: {reply!r:.160}"
        ) from None
    if not isinstance(content, str) or not content:
        raise CheckFailed(f"model {model}: the completion is empty")
    return elapsed


def check_stream(ctx: HostContext) -> CheckResult:
    """One 64-token stream on a loaded model (or one whose load evicts nothing): SSE through nginx, read
    as a client reads it, judged for buffering; its text answers for that model in `chat` too."""
    models = ctx.target.models
    if not models:
        return not_applicable("no models configured")
    plan = ctx.generation_plan()
    model = plan.stream_model
    if model is None:
        return not_applicable(
            f"no configured model is loaded and {plan.why_shown()}: streaming not proven now "
            "(verify again once one is loaded)"
        )
    try:
        timing, total, retried = _stream_judged(ctx, model)
    except CheckFailed as exc:
        ctx.stream_problem = str(exc)
        raise
    return passed(
        f"{model}: {timing.figure()}" + (" (on the second try)" if retried else ""),
        first_ms=round(timing.first * 1000, 1),
        last_ms=round(timing.last * 1000, 1),
        total_ms=round(total * 1000, 1),
        chunks=timing.chunks,
        bursts=len(timing.bursts()),
    )


def _stream_judged(ctx: HostContext, model: str) -> tuple[StreamTiming, float, bool]:
    """The stream's timing, its total time and whether it took a second try. One retry: a first stream can
    start late (model reload, a busy host) and look buffered; a buffering proxy fails every time."""
    timing, total = _stream_once(ctx, model)
    if judge_stream(timing) is None:
        return timing, total, False
    timing, total = _stream_once(ctx, model)
    reason = judge_stream(timing)
    if reason is not None:
        raise CheckFailed(f"{reason} (seen twice)")
    return timing, total, True


def _stream_once(ctx: HostContext, model: str) -> tuple[StreamTiming, float]:
    """Stream one completion, noting when each read arrived after the response's headers (Ollama sends them
    once generation starts, so a model load is not in the timing); returns it and the total time. The text
    it brought is kept for `chat`, whatever the judgement of its timing."""
    body = {"model": model, "messages": PROMPT, "max_tokens": STREAM_MAX_TOKENS, "stream": True}
    with ctx.generation_slot():
        timing, total, text = _stream_reads(ctx, body)
    ctx.streamed_text = ctx.streamed_text or text
    return timing, total


def _stream_reads(ctx: HostContext, body: dict[str, object]) -> tuple[StreamTiming, float, str]:
    what = "POST /v1/chat/completions (stream)"
    reads: list[tuple[float, bytes]] = []
    started = time.perf_counter()
    try:
        with ctx.client.stream(
            "POST", "/v1/chat/completions", json=body, headers=ctx.auth_header(ctx.key)
        ) as response:
            answered = time.perf_counter()
            if response.status_code != 200:
                response.read()
                raise CheckFailed(explain_status(response.status_code, response.text, what))
            content_type = response.headers.get("content-type", "")
            if not content_type.startswith("text/event-stream"):
                raise CheckFailed(f"{what} answered {content_type!r}, not text/event-stream")
            for data in response.iter_bytes():
                reads.append((time.perf_counter() - answered, data))
    except httpx.HTTPError as exc:
        raise CheckFailed(explain_transport(exc, ctx.target.address, ctx.target.port, what)) from None
    total = time.perf_counter() - started
    try:
        timing, text = timing_from_reads(reads)
    except ValueError as exc:
        raise CheckFailed(f"{what}: {exc}") from None
    return timing, total, text


def check_gpu(ctx: HostContext) -> CheckResult:
    """Where the loaded models run (/api/ps, after chat and stream loaded them): on a host declared to have
    a GPU (gpu_vendor nvidia or amd) every one must sit fully in VRAM; Ollama's silent CPU fallback still
    answers every other check."""
    vendor = ctx.settings.gpu.vendor
    if not ctx.target.models:
        return not_applicable("no models configured: none is loaded to show where models run")
    ps = ctx.api("GET", "/api/ps")
    if vendor not in ("nvidia", "amd"):
        loaded = [m for m in ps.get("models") or [] if isinstance(m, dict)]
        where = ", ".join(
            f"{m.get('name')} {gpu.offload(int(m.get('size') or 0), int(m.get('size_vram') or 0))}"
            for m in loaded
        )
        return not_applicable(f"gpu_vendor {vendor}, no GPU required ({where or 'no model loaded'})")
    verdict = gpu.gpu_verdict(ps, None, vendor)
    if not verdict["ok"]:
        raise CheckFailed(verdict["summary"])
    return passed(verdict["summary"])


def concrete_origin(pattern: str) -> str:
    """An origin matching an OLLAMA_ORIGINS entry (wildcards filled in): https://*.lan -> https://verify.lan."""
    return pattern.replace(":*", ":8443").replace("*", "verify")


def check_cors(ctx: HostContext) -> CheckResult:
    origins = ctx.settings.ollama.origins
    if "*" in origins:
        _preflight_allowed(ctx, DISALLOWED_ORIGIN)
        return passed("ollama_origins is '*': any origin is allowed (checked one); no disallowed case exists")
    refused = _preflight_refused(ctx, DISALLOWED_ORIGIN)
    if not origins:
        return not_applicable(
            f"no ollama_origins: no origin to allow; {DISALLOWED_ORIGIN} refused ({refused})"
        )
    allowed = concrete_origin(origins[0])
    _preflight_allowed(ctx, allowed)
    return passed(f"{allowed} allowed with headers; {DISALLOWED_ORIGIN} refused ({refused})")


def _preflight(ctx: HostContext, origin: str) -> httpx.Response:
    headers = {
        "Origin": origin,
        "Access-Control-Request-Method": "POST",
        "Access-Control-Request-Headers": "authorization,content-type",
    }
    return ctx.request("OPTIONS", "/v1/chat/completions", headers=headers)


def _preflight_allowed(ctx: HostContext, origin: str) -> None:
    response = _preflight(ctx, origin)
    what = f"the preflight from allowed origin {origin}"
    if response.status_code == 401:
        raise CheckFailed(
            f"{what} got 401: nginx must answer OPTIONS before the key check (browsers send preflights "
            "without Authorization)"
        )
    if response.status_code == 403 and not response.text.strip():
        raise CheckFailed(
            f"{what} got 403 from Ollama: OLLAMA_ORIGINS on the host lacks it; re-run the deploy"
        )
    if response.status_code not in (200, 204):
        raise CheckFailed(f"{what}: {explain_status(response.status_code, response.text, 'OPTIONS')}")
    allow_origin = response.headers.get("access-control-allow-origin", "")
    allow_headers = response.headers.get("access-control-allow-headers", "").lower()
    allow_methods = response.headers.get("access-control-allow-methods", "").upper()
    if allow_origin not in (origin, "*"):
        raise CheckFailed(f"{what} got Access-Control-Allow-Origin {allow_origin!r}; browsers will block it")
    if "authorization" not in allow_headers:
        raise CheckFailed(
            f"{what}: Access-Control-Allow-Headers {allow_headers!r} lacks authorization ('*' does not cover "
            "it): browser apps cannot send their key"
        )
    if "POST" not in allow_methods and "*" not in allow_methods:
        raise CheckFailed(f"{what}: Access-Control-Allow-Methods {allow_methods!r} lacks POST")


def _preflight_refused(ctx: HostContext, origin: str) -> int:
    response = _preflight(ctx, origin)
    allow_origin = response.headers.get("access-control-allow-origin")
    if allow_origin in (origin, "*"):
        raise CheckFailed(
            f"the preflight from disallowed origin {origin} got Access-Control-Allow-Origin "
            f"{allow_origin!r}: nginx must echo only origins listed in ollama_origins"
        )
    return response.status_code


def check_raw_port(ctx: HostContext) -> CheckResult:
    target, port = ctx.target, ctx.settings.ollama.listen_port
    if not target.https:
        return not_applicable(f"nginx disabled: clients use Ollama's port {port} directly")
    probe = _ollama_port_guarded(
        ctx,
        target.address,
        target.address,
        unfiltered=f"the firewall lets it through or rejects it (is there a ufw rule for {port}? "
        "`ufw status numbered`); "
        "nothing listens there now, but nothing guards it",
    )
    if probe.outcome == "timeout":
        return passed(f"{port} filtered ({_silence(probe)})", wait_s=round(probe.timeout, 3))
    # Nothing listens there now, but nothing guards the port: the firewall is off by settings.
    return not_applicable(f"firewall disabled: {port} closed ({probe.outcome}), not filtered")


def _silence(probe: probes.DroppedProbe) -> str:
    return f"no answer in {probe.tries} x {probe.timeout:.2f} s"


def _ollama_port_guarded(ctx: HostContext, address: str, shown: str, unfiltered: str) -> probes.DroppedProbe:
    """Connect to Ollama's own port at `address` after a positive control there: fail when it accepts, or
    when it answers instead of being dropped while the firewall is on (`unfiltered` says why that may be);
    else how it stayed shut."""
    port = ctx.settings.ollama.listen_port
    wait, _rtt = ctx.dropped_port_wait(address, shown)
    probe = probes.probe_dropped(address, port, wait)
    if probe.outcome == "open":
        raise CheckFailed(
            f"port {port} of {shown} accepts connections from the controller: Ollama is exposed without TLS "
            "or keys; keep ollama_listen on 127.0.0.1 and remove any ufw rule for the port"
        )
    if probe.outcome != "timeout" and ctx.settings.firewall.enabled:
        raise CheckFailed(
            f"port {port} of {shown} answered ({probe.outcome}) instead of being dropped: {unfiltered}"
        )
    return probe


def check_plain_http(ctx: HostContext) -> CheckResult:
    """Closed (the default): nothing answers plain HTTP, so no client sends its key in clear. Redirect: a
    301 to the same URI over HTTPS and nothing proxied."""
    target, nginx = ctx.target, ctx.settings.nginx
    if not target.https:
        return not_applicable("nginx disabled: no HTTPS to protect")
    if nginx.http_redirect:
        url = f"http://{target.address}:{nginx.http_port}/v1/models"
        try:
            response = httpx.get(url, timeout=ctx.timeout, trust_env=False)
        except httpx.HTTPError as exc:
            raise CheckFailed(f"nginx_http_redirect is on but {url} fails: {exc}") from None
        https = "" if nginx.https_port == 443 else f":{nginx.https_port}"
        wanted = f"https://{target.address}{https}/v1/models"
        if response.status_code != 301 or response.headers.get("location") != wanted:
            raise CheckFailed(
                f"{url} answered {response.status_code} (Location {response.headers.get('location')!r}), "
                f"not a 301 to {wanted}: re-run the deploy"
            )
        return passed(f"{nginx.http_port} redirects to HTTPS")
    wait, _rtt = ctx.dropped_port_wait(target.address, target.address)
    probe = probes.probe_dropped(target.address, nginx.http_port, wait)
    if probe.outcome == "open":
        raise CheckFailed(
            f"port {nginx.http_port} of {target.address} accepts connections though nginx_http_redirect is "
            "off: a client set to http:// sends its key in clear; remove the listener (another site?) and "
            "any ufw rule for the port, or re-run the deploy"
        )
    how = _silence(probe) if probe.outcome == "timeout" else probe.outcome
    return passed(f"{nginx.http_port} closed ({how})")


def check_ipv6(ctx: HostContext) -> CheckResult:
    """With IPv6 client subnets: each IPv6 address the certificate names serves TLS (verified against it)
    and the API with a key, and Ollama's own port is closed there too."""
    target, s = ctx.target, ctx.settings
    if not target.https:
        return not_applicable("nginx disabled: no HTTPS to check over IPv6")
    if not s.serves_ipv6:
        return not_applicable("no IPv6 subnet in firewall_client_subnets")
    names = probes.certificate_names(target.address, target.port, ctx.timeout)
    addresses = [name for name in names if _is_ipv6(name)]
    if not addresses:
        raise CheckFailed(
            f"firewall_client_subnets has IPv6 subnets but the certificate names no IPv6 address (it names "
            f"{', '.join(names) or 'nothing'}): re-run the deploy (fleet CA) or add the host's IPv6 address "
            "to the provided certificate"
        )
    served = []
    for address in addresses:
        url = f"https://[{address}]:{target.port}/v1/models"
        try:
            with httpx.Client(verify=probes.client_ssl_context(target.ca_file), trust_env=False) as client:
                response = client.get(url, headers=ctx.auth_header(ctx.key), timeout=ctx.timeout)
        except httpx.HTTPError as exc:
            reason = explain_transport(exc, f"[{address}]", target.port, "GET /v1/models")
            # IPV6=no after yes leaves ip6tables' DROP policy with no rules: a SYN times out, or, once the
            # client's neighbour entry for the host has expired, neighbour discovery is dropped too.
            if isinstance(exc, httpx.ConnectTimeout) or _no_route(exc):
                fix = "ufw must filter IPv6 with its rules (IPV6=yes in /etc/default/ufw; re-run the deploy)"
            else:
                fix = f"nginx must listen on [::]:{target.port} (re-run the deploy)"
            raise CheckFailed(f"{reason}; {fix}") from None
        if response.status_code != 200:
            raise CheckFailed(explain_status(response.status_code, response.text, f"GET {url}"))
        unfiltered = (
            f"the firewall lets it through over IPv6 (a ufw rule for {s.ollama.listen_port}? IPV6=no in "
            "/etc/default/ufw?); re-run the deploy"
        )
        _ollama_port_guarded(ctx, address, f"[{address}]", unfiltered)
        served.append(address)
    return passed(f"TLS and the API over {', '.join(served)}; {s.ollama.listen_port} filtered there")


def _no_route(exc: BaseException) -> bool:
    """EHOSTUNREACH anywhere in the exception's chain (httpx wraps the socket's OSError)."""
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, OSError) and seen.errno == errno.EHOSTUNREACH:
            return True
        seen = seen.__cause__ or seen.__context__
    return "No route to host" in str(exc)


def _is_ipv6(name: str) -> bool:
    try:
        return ipaddress.ip_address(name).version == 6
    except ValueError:
        return False


def check_outsider(ctx: HostContext) -> CheckResult:
    target = ctx.target
    netns = target.data.get("lab_outsider_netns")
    outsider_ip = target.data.get("lab_outsider_ip")
    if not netns and outsider_ip:
        netns = probes.netns_holding(str(outsider_ip))
        if not netns:
            raise CheckFailed(f"no network namespace holds the lab outsider {outsider_ip}: is the lab up?")
    if not netns:
        return not_applicable("not a lab host: no lab_outsider_netns / lab_outsider_ip in host data")
    try:
        probe = probes.outsider_probe(str(netns), target.address, target.port, ceiling=ctx.timeout)
    except RuntimeError as exc:
        raise CheckFailed(str(exc)) from None
    if probe.tcp == "open":
        raise CheckFailed(
            f"port {target.port} of {target.address} is reachable from the outsider netns {netns}: the "
            "firewall must allow it only from firewall_client_subnets; re-run the deploy"
        )
    if not probe.ping:
        raise CheckFailed(
            f"the outsider netns {netns} cannot reach {target.address} at all (no ICMP echo reply), so the "
            f"block of {target.port} proves nothing: check the lab network"
        )
    how = f"no answer in {probe.tries} x {probe.wait:.2f} s" if probe.tcp == "timeout" else probe.tcp
    return passed(f"{target.port} unreachable from {netns} ({how}); ping reaches the host")


# --- running them ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class CheckSpec:
    name: str
    run: Callable[[HostContext], CheckResult]
    needs: tuple[str, ...] = ()
    establishes: str | None = None  # what passing proves, for the checks after it
    quick: bool = True  # part of the quick check: loads no model and waits for no dropped port
    after: tuple[str, ...] = ()  # checks it must follow though it needs nothing they establish


CHECKS: tuple[CheckSpec, ...] = (
    CheckSpec("tls", check_tls, establishes="https"),
    CheckSpec("root", check_root, needs=("https",), establishes="ollama"),
    CheckSpec("auth", check_auth, needs=("ollama",)),
    CheckSpec("scopes", check_scopes, needs=("ollama", "key")),
    CheckSpec("version", check_version, needs=("ollama", "key")),
    CheckSpec("models", check_models, needs=("ollama", "key")),
    # stream before chat: chat takes the stream's answer for the stream's model (one generation serves
    # both), so run one after another they must come in this order.
    CheckSpec("stream", check_stream, needs=("models", "key"), quick=False),
    CheckSpec("chat", check_chat, needs=("models", "key"), quick=False),
    # After chat and stream: the models they loaded are in /api/ps.
    CheckSpec("gpu", check_gpu, needs=("models", "key"), quick=False, after=("chat", "stream")),
    CheckSpec("cors", check_cors, needs=("https",)),
    # A dropped port is proven by silence (a fraction of a second after a positive control): full check only.
    CheckSpec("raw_port", check_raw_port, needs=("reachable",), quick=False),
    CheckSpec("plain_http", check_plain_http, needs=("reachable",), quick=False),
    CheckSpec("ipv6", check_ipv6, needs=("https", "key"), quick=False),
    CheckSpec("outsider", check_outsider, needs=("reachable",), quick=False),
)
CHECK_NAMES = tuple(spec.name for spec in CHECKS)
GATEWAY_CHECKS = ("tls", "root", "auth", "models", "stream", "chat")
"""What a client of the gateway relies on; scopes, version, CORS and the firewall are each host's."""

# Which check establishes each need, to say what blocked a check.
_PROVIDER = {"https": "tls", "reachable": "tls", "ollama": "root", "key": "auth", "models": "models"}


def waits_for(spec: CheckSpec) -> tuple[str, ...]:
    """The checks that must end before this one starts: those establishing what it needs, and its `after`."""
    providers = {_PROVIDER[need] for need in spec.needs} | set(spec.after)
    return tuple(name for name in CHECK_NAMES if name in providers)


def run_check(spec: CheckSpec, ctx: HostContext) -> CheckResult:
    missing = [need for need in spec.needs if need not in ctx.established]
    if missing:
        providers = sorted({_PROVIDER[need] for need in missing})
        return CheckResult(
            spec.name, Status.BLOCKED, reason=f"not run: needs {' and '.join(providers)} to pass"
        )
    started = time.perf_counter()
    try:
        result = spec.run(ctx)
    except CheckFailed as exc:
        result = CheckResult(spec.name, Status.FAIL, reason=str(exc))
    except Exception as exc:  # a verifier reports every host; one surprise must not end the run
        result = CheckResult(spec.name, Status.FAIL, reason=f"unexpected {type(exc).__name__}: {exc}")
    if result.ok and spec.establishes:
        ctx.established.add(spec.establishes)
    return CheckResult(
        spec.name,
        result.status,
        result.figure,
        result.reason,
        round(time.perf_counter() - started, 3),
        result.metrics,
    )


def selected_checks(
    target: Target, quick: bool = False, only: Collection[str] | None = None
) -> tuple[CheckSpec, ...]:
    return tuple(
        spec
        for spec in CHECKS
        if (spec.quick or not quick)
        and (not target.is_gateway or spec.name in GATEWAY_CHECKS)
        and (only is None or spec.name in only)
    )


def check_host(
    target: Target,
    timeout: float,
    on_result: Callable[[Target, CheckResult], None] | None = None,
    quick: bool = False,
    concurrent: bool | None = None,
    only: Collection[str] | None = None,
) -> list[CheckResult]:
    """Every check against one host; the results in CHECKS' order, on_result sees each as soon as it is
    known.

    Each check starts as soon as the checks it waits for (waits_for) have ended, and runs beside every
    other: the waits for dropped ports, the generations and the outsider's probe overlap instead of
    adding up. concurrent=False runs them one after another in CHECKS' order (the old way, a baseline
    for benchmarks/verify_bench.py). By default the quick check runs that way: it has no wait to overlap,
    and one after another its requests share one kept-alive connection, where checks in flight together
    each open their own, a TLS handshake each (13-15 ms of controller CPU per host against 16-22).

    quick runs only TLS, root, auth, scopes, version, models and CORS: no model is loaded (so none that
    clients use is evicted), and no probe waits on a dropped port. `only` keeps these checks alone (for
    benchmarks/verify_bench.py, which times parts of the check apart).
    """
    specs = selected_checks(target, quick, only)
    concurrent = not quick if concurrent is None else concurrent
    results: dict[str, CheckResult] = {}
    report_lock = threading.Lock()
    ended = {spec.name: threading.Event() for spec in specs}

    def run_one(spec: CheckSpec, ctx: HostContext) -> None:
        try:
            for name in waits_for(spec):
                if name in ended:  # a check left out (quick, gateway) is not waited for
                    ended[name].wait()
            result = run_check(spec, ctx)
            with report_lock:
                results[spec.name] = result
                if on_result:
                    on_result(target, result)
        finally:
            ended[spec.name].set()  # whatever happened, nothing waits on it forever

    with make_client(target, timeout) as client:
        ctx = HostContext(target=target, client=client, timeout=timeout, ended=ended)
        if not concurrent:
            for spec in specs:
                run_one(spec, ctx)
        else:
            with ThreadPoolExecutor(max_workers=len(specs), thread_name_prefix="verify-check") as pool:
                for done in [pool.submit(run_one, spec, ctx) for spec in specs]:
                    done.result()
    return [results[spec.name] for spec in specs]
