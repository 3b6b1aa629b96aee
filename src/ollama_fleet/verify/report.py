"""The verdict of a verify run: a hosts x checks table for people, JSON for CI, and the exit code."""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from ollama_fleet.verify.checks import CHECK_NAMES
from ollama_fleet.verify.context import CheckResult, Status
from ollama_fleet.verify.targets import Target

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_BAD_INPUT = 2

_MARK = {Status.PASS: "ok", Status.FAIL: "FAIL", Status.BLOCKED: "blocked", Status.NA: "n/a"}


@dataclass(frozen=True)
class HostReport:
    host: str
    address: str
    results: tuple[CheckResult, ...]

    @property
    def ok(self) -> bool:
        return all(result.ok for result in self.results)

    def result(self, check: str) -> CheckResult | None:
        return next((r for r in self.results if r.check == check), None)


@dataclass(frozen=True)
class FleetReport:
    hosts: tuple[HostReport, ...]
    seconds: float
    strict: bool = False  # n/a fails the run too (verify --strict)

    @property
    def ok(self) -> bool:
        """No check failed or was blocked, and (strict) none was n/a: the exit status is 0."""
        return all(host.ok for host in self.hosts) and not (self.strict and self.not_applicable())

    @property
    def exit_code(self) -> int:
        return EXIT_OK if self.ok else EXIT_FAILED

    def failures(self) -> list[tuple[str, str]]:
        """(host, check) of every check that failed or was blocked (n/a is listed by not_applicable)."""
        return [(h.host, r.check) for h in self.hosts for r in h.results if not r.ok]

    def not_applicable(self) -> list[tuple[str, str, str]]:
        """(host, check, why) of every check that proved nothing on that host's settings."""
        return [(h.host, r.check, r.figure) for h in self.hosts for r in h.results if r.status == Status.NA]

    def counts(self) -> dict[str, int]:
        """How many checks ended in each status (pass, fail, blocked, n/a), every status named."""
        found = {str(status): 0 for status in Status}
        for h in self.hosts:
            for r in h.results:
                found[str(r.status)] += 1
        return found


def redact(text: str, secrets: Iterable[str]) -> str:
    """A last guard: no key value ever reaches the output, even if a host echoed one back."""
    for secret in secrets:
        if secret:
            text = text.replace(secret, "***")
    return text


def format_table(rows: Sequence[Sequence[str]]) -> list[str]:
    """Left-aligned columns, two spaces apart; the first row is the header."""
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return [
        "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip() for row in rows
    ]


def render_text(report: FleetReport, secrets: Iterable[str] = ()) -> str:
    """The matrix of hosts x checks, then one line per check with its figure or reason."""
    checks = [name for name in CHECK_NAMES if any(h.result(name) for h in report.hosts)]
    matrix = [["host", "address", *checks]]
    for host in report.hosts:
        marks = [_MARK[r.status] if (r := host.result(name)) else "-" for name in checks]
        matrix.append([host.host, host.address, *marks])
    details = [["host", "check", "result", "figure / reason"]]
    for host in report.hosts:
        for r in host.results:
            details.append([host.host, r.check, _MARK[r.status], r.reason if not r.ok else r.figure])
    lines = [*format_table(matrix), "", *format_table(details), ""]
    lines.append(verdict_line(report))
    return redact("\n".join(lines), list(secrets))


def verdict_line(report: FleetReport) -> str:
    """`PASS: 30/34 checks passed, 4 n/a (nothing to prove on these settings), 0 failed, 0 blocked on ...`"""
    counts = report.counts()
    total = sum(counts.values())
    na = counts[str(Status.NA)]
    verdict = "PASS" if report.ok else "FAIL"
    strict = " (--strict: n/a fails)" if report.strict and na else ""
    return (
        f"{verdict}{strict}: {counts[str(Status.PASS)]}/{total} checks passed, {na} n/a (nothing to prove on "
        f"these settings), {counts[str(Status.FAIL)]} failed, {counts[str(Status.BLOCKED)]} blocked on "
        f"{len(report.hosts)} hosts in {report.seconds:.1f} s"
    )


def to_json(report: FleetReport, secrets: Iterable[str] = ()) -> str:
    payload: dict[str, Any] = {
        "ok": report.ok,
        "strict": report.strict,
        "seconds": round(report.seconds, 3),
        "counts": report.counts(),
        "failures": [{"host": host, "check": check} for host, check in report.failures()],
        "not_applicable": [
            {"host": host, "check": check, "why": why} for host, check, why in report.not_applicable()
        ],
        "hosts": [
            {
                "host": host.host,
                "address": host.address,
                "ok": host.ok,
                "checks": [
                    {
                        "check": r.check,
                        "status": str(r.status),
                        "ok": r.ok,
                        "figure": r.figure,
                        "reason": r.reason,
                        "seconds": r.seconds,
                        "metrics": r.metrics,
                    }
                    for r in host.results
                ],
            }
            for host in report.hosts
        ],
    }
    return redact(json.dumps(payload, indent=2), list(secrets))


def failure_summary(target: Target, results: list[CheckResult]) -> str | None:
    """The failed checks of one host on one line (`check: status: reason; ...`), keys redacted."""
    failed = [r for r in results if not r.ok]
    if not failed:
        return None
    secrets = [k.key.get_secret_value() for k in target.settings.auth.keys]
    return redact("; ".join(f"{r.check}: {r.status}: {r.reason}" for r in failed), secrets)


def progress_line(host: str, result: CheckResult) -> str:
    detail = result.figure if result.ok else result.reason
    return f"[{host}] {result.check}: {_MARK[result.status]}" + (f" - {detail}" if detail else "")
