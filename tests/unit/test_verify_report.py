"""The report (table, JSON, exit codes) and the reasons mapped from what a host answered."""

from __future__ import annotations

import json
import ssl

import httpx
import pytest

from ollama_fleet.verify.checks import CHECK_NAMES
from ollama_fleet.verify.context import CheckResult, Status
from ollama_fleet.verify.reasons import (
    error_message,
    explain_status,
    explain_tls,
    explain_transport,
    is_openai_error,
)
from ollama_fleet.verify.report import (
    EXIT_FAILED,
    EXIT_OK,
    FleetReport,
    HostReport,
    progress_line,
    render_text,
    to_json,
)

pytestmark = pytest.mark.unit

SECRET = "sk-fleet-0123456789abcdef"


def host(name: str, failing: dict[str, str] | None = None) -> HostReport:
    failing = failing or {}
    results = tuple(
        CheckResult(check, Status.FAIL, reason=failing[check])
        if check in failing
        else CheckResult(check, Status.PASS, figure=f"{check} fine", seconds=0.01)
        for check in CHECK_NAMES
    )
    return HostReport(host=name, address=f"10.213.4.{len(name)}", results=results)


def test_all_passing_exits_zero_and_says_pass() -> None:
    report = FleetReport(hosts=(host("lab-1"), host("lab-2")), seconds=1.5)
    assert report.exit_code == EXIT_OK
    text = render_text(report)
    total = 2 * len(CHECK_NAMES)
    assert text.splitlines()[-1] == (
        f"PASS: {total}/{total} checks passed, 0 n/a (nothing to prove on these settings), 0 failed, "
        "0 blocked on 2 hosts in 1.5 s"
    )
    assert text.splitlines()[0].split() == ["host", "address", *CHECK_NAMES]


def test_a_failure_exits_one_and_the_table_shows_where_and_why() -> None:
    report = FleetReport(
        hosts=(host("lab-1"), host("lab-2", {"stream": "proxy buffering is on"})), seconds=2.0
    )
    assert report.exit_code == EXIT_FAILED
    assert report.failures() == [("lab-2", "stream")]
    lines = render_text(report).splitlines()
    row = next(line for line in lines if line.startswith("lab-2  "))
    assert row.split()[2 + CHECK_NAMES.index("stream")] == "FAIL"
    assert any("stream" in line and "proxy buffering is on" in line for line in lines)


def test_blocked_and_not_applicable_are_told_apart() -> None:
    results = (
        CheckResult("tls", Status.PASS, figure="TLSv1.3"),
        CheckResult("chat", Status.BLOCKED, reason="not run: needs models to pass"),
        CheckResult("outsider", Status.NA, figure="not a lab host"),
    )
    report = FleetReport(hosts=(HostReport("lan-1", "192.0.2.1", results),), seconds=0.1)
    assert report.exit_code == EXIT_FAILED  # blocked is not a pass
    matrix_row = render_text(report).splitlines()[1].split()
    assert matrix_row == ["lan-1", "192.0.2.1", "ok", "blocked", "n/a"]


def test_not_applicable_is_counted_apart_and_fails_only_under_strict() -> None:
    results = (
        CheckResult("tls", Status.PASS, figure="TLSv1.3"),
        CheckResult("auth", Status.NA, figure="auth disabled"),
        CheckResult("outsider", Status.NA, figure="not a lab host"),
    )
    hosts = (HostReport("lan-1", "192.0.2.1", results),)
    lenient, strict = FleetReport(hosts, 0.1), FleetReport(hosts, 0.1, strict=True)
    assert (lenient.exit_code, strict.exit_code) == (EXIT_OK, EXIT_FAILED)
    assert (
        render_text(lenient)
        .splitlines()[-1]
        .startswith(
            "PASS: 1/3 checks passed, 2 n/a (nothing to prove on these settings), 0 failed, 0 blocked"
        )
    )
    assert render_text(strict).splitlines()[-1].startswith("FAIL (--strict: n/a fails): 1/3 checks passed")
    for report, ok in ((lenient, True), (strict, False)):
        payload = json.loads(to_json(report))
        assert payload["ok"] is ok and payload["strict"] is not ok
        assert payload["counts"] == {"pass": 1, "fail": 0, "blocked": 0, "n/a": 2}
        assert payload["failures"] == []
        assert payload["not_applicable"] == [
            {"host": "lan-1", "check": "auth", "why": "auth disabled"},
            {"host": "lan-1", "check": "outsider", "why": "not a lab host"},
        ]


def test_json_is_complete_and_never_carries_a_key() -> None:
    leaky = host("lab-1", {"auth": f"header was Bearer {SECRET}"})
    payload = json.loads(to_json(FleetReport(hosts=(leaky,), seconds=0.5), secrets=[SECRET]))
    assert payload["ok"] is False
    assert payload["failures"] == [{"host": "lab-1", "check": "auth"}]
    auth = next(c for c in payload["hosts"][0]["checks"] if c["check"] == "auth")
    assert auth == {
        "check": "auth",
        "status": "fail",
        "ok": False,
        "figure": "",
        "reason": "header was Bearer ***",
        "seconds": 0.0,
        "metrics": {},
    }
    assert SECRET not in render_text(FleetReport(hosts=(leaky,), seconds=0.5), secrets=[SECRET])


def test_progress_line_shows_figure_or_reason() -> None:
    assert (
        progress_line("lab-1", CheckResult("version", Status.PASS, figure="0.24.0"))
        == "[lab-1] version: ok - 0.24.0"
    )
    failed = CheckResult("root", Status.FAIL, reason="502 for GET /health")
    assert progress_line("lab-1", failed) == "[lab-1] root: FAIL - 502 for GET /health"


@pytest.mark.parametrize(
    ("status", "body", "fix"),
    [
        (403, "", "the proxy must send Host: localhost:11434"),
        (401, '{"error": {"message": "bad key"}}', "the key list on the host is stale; re-run the deploy"),
        (502, "<html>Bad Gateway</html>", "is ollama.service running?"),
        (504, "", "raise nginx_read_timeout"),
        (413, "", "client_max_body_size"),
        (503, "", "OLLAMA_MAX_QUEUE"),
        (404, '{"error": "model \\"x\\" not found"}', 'model "x" not found'),
        (500, '{"error": {"message": "llama runner crashed"}}', "llama runner crashed"),
    ],
)
def test_statuses_map_to_a_fix(status: int, body: str, fix: str) -> None:
    assert fix in explain_status(status, body, "GET /api/tags")


def test_error_bodies_are_read_in_both_styles() -> None:
    assert error_message('{"error": {"message": "openai style"}}') == "openai style"
    assert error_message('{"error": "ollama style"}') == "ollama style"
    assert error_message("plain\n  text") == "plain text"
    assert is_openai_error('{"error": {"message": "m", "type": "invalid_request_error"}}')
    assert not is_openai_error('{"error": "m"}')
    assert not is_openai_error("<html>401</html>")


def test_transport_failures_say_where_to_look() -> None:
    request = httpx.Request("GET", "https://10.0.0.1/")
    refused = httpx.ConnectError("[Errno 111] Connection refused", request=request)
    assert "is nginx running" in explain_transport(refused, "10.0.0.1", 443, "GET /")
    timed_out = httpx.ConnectTimeout("timed out", request=request)
    assert "firewall_client_subnets" in explain_transport(timed_out, "10.0.0.1", 443, "GET /")
    slow = httpx.ReadTimeout("timed out", request=request)
    assert "raise --timeout" in explain_transport(slow, "10.0.0.1", 443, "GET /")


def test_tls_failures_say_what_to_fix() -> None:
    mismatch = ssl.SSLCertVerificationError(1, "certificate verify failed")
    mismatch.verify_message = "IP address mismatch, certificate is not valid for '10.0.0.1'."
    assert "tls_extra_sans" in explain_tls(mismatch, "10.0.0.1", 443, "ca.pem")
    expired = ssl.SSLCertVerificationError(1, "certificate verify failed")
    expired.verify_message = "certificate has expired"
    assert "has expired" in explain_tls(expired, "10.0.0.1", 443, "ca.pem")
    foreign = ssl.SSLCertVerificationError(1, "certificate verify failed")
    foreign.verify_message = "unable to get local issuer certificate"
    assert "does not verify against the fleet CA ca.pem" in explain_tls(foreign, "10.0.0.1", 443, "ca.pem")
    assert "nothing listens" in explain_tls(ConnectionRefusedError(111, "refused"), "10.0.0.1", 443, "ca.pem")
    assert "firewall drops" in explain_tls(TimeoutError("timed out"), "10.0.0.1", 443, "ca.pem")
