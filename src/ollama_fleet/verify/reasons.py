"""Turn what a host answered into a reason that says what to fix (pure: no network)."""

from __future__ import annotations

import json
import ssl

import httpx

OLLAMA_UNIT = "ollama.service"


class CheckFailed(Exception):
    """A check found a problem; the message is the reason shown to the operator."""


def error_message(body: str) -> str:
    """The message of an OpenAI-style or Ollama-style JSON error body, else the start of the body."""
    try:
        parsed = json.loads(body)
    except ValueError:
        return " ".join(body.split())[:160]
    if isinstance(parsed, dict):
        error = parsed.get("error")
        if isinstance(error, dict):
            return str(error.get("message") or error)
        if error:
            return str(error)
    return " ".join(body.split())[:160]


def is_openai_error(body: str) -> bool:
    """True when the body is `{"error": {"message": ..., ...}}` as OpenAI clients expect."""
    try:
        parsed = json.loads(body)
    except ValueError:
        return False
    return isinstance(parsed, dict) and isinstance(parsed.get("error"), dict) and "message" in parsed["error"]


def explain_status(status: int, body: str, what: str) -> str:
    """Why `what` (e.g. "GET /api/tags") answered `status`, and what to do about it."""
    message = error_message(body)
    if status == 403 and not body.strip():
        return (
            f"403 with an empty body for {what} from Ollama behind nginx: Ollama refused the Host header; "
            "the proxy must send Host: localhost:11434 (proxy_set_header Host localhost:11434)"
        )
    if status == 401:
        return (
            f"401 for {what} with the configured key: the key list on the host is stale; re-run the deploy "
            "(or check auth_key_names and the secrets file)"
        )
    if status == 404:
        return (
            f"404 for {what}: {message or 'not found'}; the nginx site does not route it or Ollama lacks it"
        )
    if status == 413:
        return f"413 for {what}: the request body exceeds nginx client_max_body_size"
    if status == 502:
        return (
            f"502 for {what}: nginx cannot reach Ollama on 127.0.0.1:11434; is {OLLAMA_UNIT} running? "
            f"(systemctl status ollama; journalctl -u ollama)"
        )
    if status == 503:
        return (
            f"503 for {what}: Ollama is overloaded (its queue is full, OLLAMA_MAX_QUEUE) or nginx is draining"
        )
    if status == 504:
        return (
            f"504 for {what}: nginx gave up waiting for Ollama; raise nginx_read_timeout or find out why "
            "the model is slow to load (journalctl -u ollama)"
        )
    return f"{status} for {what}: {message or 'no body'}"


def explain_transport(exc: Exception, address: str, port: int, what: str) -> str:
    """Why a request could not complete at all (connect, TLS, timeout)."""
    where = f"{address}:{port}"
    if isinstance(exc, httpx.ConnectTimeout):
        return (
            f"{what}: no answer from {where} (connect timed out): the host is down or its firewall drops "
            "the controller; is the controller's subnet in firewall_client_subnets?"
        )
    if isinstance(exc, httpx.ReadTimeout | httpx.WriteTimeout | httpx.PoolTimeout):
        return (
            f"{what}: {where} accepted the connection but did not answer in time; raise --timeout "
            "or check the host"
        )
    if isinstance(exc, httpx.ConnectError):
        cause = exc.__context__ or exc.__cause__
        if isinstance(cause, ssl.SSLError) or "SSL" in str(exc) or "certificate" in str(exc):
            return f"{what}: TLS handshake with {where} failed ({exc}); see the tls check"
        if "refused" in str(exc).lower():
            return (
                f"{what}: connection refused on {where}: nothing listens there; is nginx running "
                "(systemctl status nginx)?"
            )
        return f"{what}: cannot connect to {where}: {exc}"
    if isinstance(exc, httpx.RemoteProtocolError):
        return f"{what}: {where} broke the HTTP exchange ({exc}); look at the nginx error log"
    return f"{what}: {type(exc).__name__}: {exc}"


def explain_tls(exc: Exception, address: str, port: int, ca_file: str) -> str:
    """Why the TLS handshake failed, from the verification error."""
    text = str(exc)
    where = f"{address}:{port}"
    if isinstance(exc, ssl.SSLCertVerificationError):
        detail = exc.verify_message or text
        if "mismatch" in detail or "match" in detail:
            return (
                f"the certificate of {where} does not name {address} ({detail}): add it to the host's "
                "names or tls_extra_sans and re-run the deploy so the certificate is reissued"
            )
        if "expired" in detail:
            return f"the certificate of {where} has expired: re-run the deploy to reissue it"
        return (
            f"the certificate of {where} does not verify against the fleet CA {ca_file} ({detail}): the host "
            "holds a certificate from another CA; re-run the deploy (or point tls_ca_dir at the right CA)"
        )
    if isinstance(exc, ConnectionRefusedError):
        return f"connection refused on {where}: nothing listens on the HTTPS port; is nginx running?"
    if isinstance(exc, TimeoutError | OSError) and "timed out" in text:
        return (
            f"no answer from {where} (timed out): the host is down or its firewall drops the controller; "
            "is the controller's subnet in firewall_client_subnets?"
        )
    if isinstance(exc, ssl.SSLError):
        return f"TLS handshake with {where} failed ({exc.reason or text}): check the nginx ssl_* settings"
    return f"cannot reach {where}: {text}"
