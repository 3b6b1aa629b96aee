"""`ollama-fleet status`'s dashboard view: Prometheus's answers and a host's own answers, each turned into the
same per-host figures, shown as a table and as JSON."""

from __future__ import annotations

import json

import pytest

from ollama_fleet.verify import fleet_view as fv

pytestmark = pytest.mark.unit


def answer(*results: tuple[dict[str, str], float]) -> str:
    """A Prometheus /api/v1/query answer (instant vector)."""
    vector = [{"metric": labels, "value": [1764900000.0, str(value)]} for labels, value in results]
    return json.dumps({"status": "success", "data": {"resultType": "vector", "result": vector}})


PROMETHEUS_ANSWERS = {
    "up": answer(({"host": "lab-1"}, 1), ({"host": "lab-2"}, 1), ({"host": "lab-3"}, 0)),
    "ollama_up": answer(({"host": "lab-1"}, 1), ({"host": "lab-2"}, 0)),
    "version": answer(({"host": "lab-1", "version": "0.24.0"}, 1)),
    "size": answer(
        ({"host": "lab-1", "model": "tiny:latest"}, 104857600),
        ({"host": "lab-1", "model": "qwen:7b"}, 9663676416),
    ),
    "vram": answer(
        ({"host": "lab-1", "model": "tiny:latest"}, 0),
        ({"host": "lab-1", "model": "qwen:7b"}, 6442450944),
    ),
    "rps": answer(({"host": "lab-1"}, 0.5), ({"host": "lab-2"}, 0)),
    "errors": answer(({"host": "lab-1"}, 0.025), ({"host": "lab-2"}, 0)),
    "ttft_p95": answer(({"host": "lab-1"}, 0.8125), ({"host": "lab-2"}, float("nan"))),
}


def test_prometheus_answers_give_each_host_up_version_models_and_rates() -> None:
    lab1, lab2, lab3, lab4 = fv.views_from_prometheus(
        ["lab-1", "lab-2", "lab-3", "lab-4"], PROMETHEUS_ANSWERS
    )
    assert lab1.up is True and lab1.version == "0.24.0"
    assert [(m.name, m.where) for m in lab1.models] == [("qwen:7b", "67% GPU"), ("tiny:latest", "CPU")]
    assert (lab1.requests_per_s, lab1.errors_per_s, lab1.ttft_p95_s) == (0.5, 0.025, 0.8125)
    assert lab2.up is False  # nginx answers, Ollama does not
    assert lab2.ttft_p95_s is None  # NaN: no first token in the window
    assert lab3.up is False and lab4.up is None and lab4.note == "not scraped by Prometheus"


def test_the_table_shows_the_dashboards_columns_and_the_source() -> None:
    hosts = fv.views_from_prometheus(["lab-1", "lab-2"], PROMETHEUS_ANSWERS)
    lines = fv.render_view(fv.FleetView("prometheus on lab-3", tuple(hosts)))
    assert lines == [
        "from prometheus on lab-3 (rates over 5m)",
        "host   up    version  models loaded (where)                 req/s  5xx/s  ttft p95",
        "lab-1  up    0.24.0   qwen:7b (67% GPU), tiny:latest (CPU)  0.50   0.03   0.81 s",
        "lab-2  DOWN  -        -                                     0.00   0.00   -",
    ]


def test_the_json_holds_each_models_place() -> None:
    hosts = fv.views_from_prometheus(["lab-1"], PROMETHEUS_ANSWERS)
    shown = json.loads(json.dumps(fv.view_json(fv.FleetView("prometheus on lab-3", tuple(hosts)))))
    assert shown["source"] == "prometheus on lab-3"
    (lab1,) = shown["hosts"]
    assert lab1["up"] is True and lab1["requests_per_s"] == 0.5
    assert lab1["models"][1] == {"name": "tiny:latest", "size": 104857600, "vram": 0, "where": "CPU"}


MTAIL_PAGE = """# HELP ollama_fleet_requests_total defined at ollama-fleet.mtail:5:9-33
# TYPE ollama_fleet_requests_total counter
ollama_fleet_requests_total{key="ci",model="tiny:latest",route="/api/chat",server="api",status="200"} 18
ollama_fleet_requests_total{key="ci",model="tiny:latest",route="/api/chat",server="api",status="503"} 2
ollama_fleet_requests_total{key="ci",model="tiny:latest",route="/api/chat",server="gateway",status="502"} 7
ollama_fleet_ttft_seconds_bucket{key="ci",model="tiny:latest",route="/api/chat",server="api",le="0.5"} 10
ollama_fleet_ttft_seconds_bucket{key="ci",model="tiny:latest",route="/api/chat",server="api",le="1"} 17
ollama_fleet_ttft_seconds_bucket{key="ci",model="tiny:latest",route="/api/chat",server="api",le="2.5"} 18
ollama_fleet_ttft_seconds_bucket{key="ci",model="tiny:latest",route="/api/chat",server="api",le="+Inf"} 18
"""


def test_a_hosts_own_answers_give_its_totals_since_mtail_started() -> None:
    ps = {"models": [{"name": "tiny:latest", "size": 104857600, "size_vram": 104857600}]}
    view = fv.view_from_host(
        "lab-1", {"version": '{"version":"0.24.0"}', "ps": json.dumps(ps), "metrics": MTAIL_PAGE}
    )
    assert view.up is True and view.version == "0.24.0"
    assert [(m.name, m.where) for m in view.models] == [("tiny:latest", "GPU")]
    # The API server's requests only (the gateway's are its own), 503s from a full queue among the 5xx.
    assert (view.requests_total, view.errors_total) == (20.0, 2.0)
    assert view.ttft_p95_s == 2.5  # the bucket holding the 95th of 18 observations
    lines = fv.render_view(fv.FleetView("hosts", (view,)))
    assert lines[0] == "straight from the hosts (no monitoring host): totals since mtail started"
    assert lines[2].split() == ["lab-1", "up", "0.24.0", "tiny:latest", "(GPU)", "20", "2", "2.50", "s"]


def test_a_host_whose_ollama_is_down_shows_down_with_why() -> None:
    view = fv.view_from_host("lab-2", {"version": "", "ps": "", "metrics": MTAIL_PAGE})
    assert view.up is False and view.note == "Ollama does not answer on the host"


def test_the_remote_commands_split_back_into_their_sections() -> None:
    output = '## up\n{}\n\n## version\n\n## ps\n{"models": []}\n'
    assert fv.sections(output) == {"up": "{}", "version": "", "ps": '{"models": []}'}
    assert fv.prometheus_command().count("curl -sf") == len(fv.PROMETHEUS_QUERIES)
