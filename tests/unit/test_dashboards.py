"""The fleet dashboards' PromQL: the console page Prometheus serves and the Grafana JSON. Every expression is
checked by promtool (as recording rules) and may name only series the fleet produces: mtail's program, the
blackbox probe, each host's state timer and deploy record, Prometheus's own `up` and `ALERTS`. A typo in a
metric name would otherwise show a blank panel, not an error."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from ollama_fleet import monitoring
from ollama_fleet.deploys.metrics import mtail_program
from ollama_fleet.operations import deploy_record
from ollama_fleet.render import builtin_templates_dir

pytestmark = pytest.mark.unit

SHIPPED = builtin_templates_dir() / "monitoring"
CONSOLE = SHIPPED / "consoles" / "ollama-fleet.html"
GRAFANA = SHIPPED / "grafana" / "ollama-fleet.json"
STATE_WRITER = builtin_templates_dir() / "state" / "ollama-fleet-state.py.j2"
# Series that come from elsewhere than mtail: Prometheus itself and the blackbox exporter's probe.
NOT_FROM_MTAIL = {"up", "ALERTS", "probe_success", "probe_ssl_earliest_cert_expiry"}
PROMQL_WORDS = {"and", "or", "unless", "by", "without", "on", "ignoring", "group_left", "group_right", "bool"}
GO_STRING = re.compile(r'"((?:[^"\\]|\\.)*)"')
# A Go template action, its string literals (which may hold braces) read whole.
GO_ACTION = re.compile(r'\{\{((?:"(?:[^"\\]|\\.)*"|[^"}]|\}(?!\}))*)\}\}')


def console_expressions(text: str) -> list[str]:
    """The PromQL in the console page: its Go string literals that hold a selector or a call (the others
    are formats, template names and labels), each host or model `%s` put in as a sample value."""
    actions = [m.group(1) for m in GO_ACTION.finditer(text)]
    literals = [m.group(1).replace('\\"', '"') for a in actions for m in GO_STRING.finditer(a)]
    return [lit.replace("%s", "lab-1") for lit in literals if "(" in lit or "{" in lit]


def grafana_expressions(dashboard: dict[str, object]) -> list[str]:
    """Each panel target's PromQL, with the host variable at "All" (Grafana's allValue)."""
    panels = dashboard["panels"]
    assert isinstance(panels, list)
    return [t["expr"].replace("$host", ".*") for p in panels for t in p["targets"]]


def produced_series() -> set[str]:
    """Every series name mtail's shipped program declares (histograms as Prometheus exposes them), the
    state timer's families (job ollama_fleet_host) and the deploy record's."""
    names = set()
    for kind, name in re.findall(r"^(counter|histogram) (\w+)", mtail_program(), re.MULTILINE):
        names |= {f"{name}_bucket", f"{name}_sum", f"{name}_count"} if kind == "histogram" else {name}
    names |= set(re.findall(r'family\(\s*"(\w+)"', STATE_WRITER.read_text()))
    return names | {deploy_record.STARTED, deploy_record.SUCCESS}


def series_named(expr: str) -> set[str]:
    """The series names an expression reads: identifiers left once strings, matchers, ranges, label
    lists, function calls, keywords and numbers are taken out."""
    bare = re.sub(r'"(?:[^"\\]|\\.)*"', "", expr)
    bare = re.sub(r"\{[^}]*\}|\[[^\]]*\]", " ", bare)
    bare = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", bare)
    names = set(re.findall(r"\b([A-Za-z_:][A-Za-z0-9_:]*)\b(?!\s*\()", bare))
    return {n for n in names if n not in PROMQL_WORDS and not re.fullmatch(r"[0-9.e]+|Inf|NaN", n)}


def _promtool() -> str:
    found = shutil.which("promtool")
    if not found:
        pytest.fail("promtool is not installed: on Debian 12 apt-get install prometheus, on 13 promtool")
    return found


def check_with_promtool(expressions: list[str], tmp_path: Path) -> subprocess.CompletedProcess[str]:
    rules = [{"record": f"ollama_fleet:dashboard_check_{i}", "expr": e} for i, e in enumerate(expressions)]
    path = tmp_path / "dashboard-rules.yml"
    path.write_text(json.dumps({"groups": [{"name": "dashboard", "rules": rules}]}))
    return subprocess.run(
        [_promtool(), "check", "rules", str(path)], capture_output=True, text=True, timeout=120
    )


def test_the_series_reader_finds_names_and_only_names() -> None:
    expr = (
        'sum by (host, le) (rate(ollama_fleet_ttft_seconds_bucket{server="api", host=~"$x"}[5m])) '
        '/ on(host) group_left up{job="a"} >= 0 and ALERTS{alertstate="firing"}'
    )
    assert series_named(expr) == {"ollama_fleet_ttft_seconds_bucket", "up", "ALERTS"}
    assert "ollama_fleet_ttft_seconds_bucket" in produced_series()
    assert "ollama_fleet_requests_total" in produced_series()


def test_the_console_page_queries_are_valid_promql(tmp_path: Path) -> None:
    expressions = console_expressions(CONSOLE.read_text())
    # Hosts, models, gateways and alerts: a reader that found few would test little.
    assert len(expressions) >= 20, expressions
    checked = check_with_promtool(expressions, tmp_path)
    assert checked.returncode == 0, checked.stdout + checked.stderr


def test_the_grafana_dashboard_queries_are_valid_promql(tmp_path: Path) -> None:
    dashboard = json.loads(GRAFANA.read_text())
    expressions = grafana_expressions(dashboard)
    assert len(expressions) >= 12, expressions
    assert all(p["datasource"]["uid"] == "${datasource}" for p in dashboard["panels"])
    checked = check_with_promtool(expressions, tmp_path)
    assert checked.returncode == 0, checked.stdout + checked.stderr


def test_dashboards_and_alerts_read_only_series_the_fleet_produces() -> None:
    rules = re.findall(r"^\s+expr: (?:\|\n((?:\s{12}.*\n)+)|(.+))", monitoring.rules_text(), re.MULTILINE)
    expressions = {
        "console": console_expressions(CONSOLE.read_text()),
        "grafana": grafana_expressions(json.loads(GRAFANA.read_text())),
        "alert rules": ["".join(parts) for parts in rules],
    }
    assert len(expressions["alert rules"]) >= 6
    known = produced_series() | NOT_FROM_MTAIL
    for source, exprs in expressions.items():
        for expr in exprs:
            unknown = series_named(expr) - known
            assert not unknown, f"{source}: {expr!r} reads {sorted(unknown)}, which nothing produces"
