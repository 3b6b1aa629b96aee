"""Metrics and alerts on the lab: every host's nginx logs each request for mtail; lab-3 (the inventory group
`monitoring`) runs Prometheus, Alertmanager and the blackbox exporter; lab-1 is the gateway.

After chats and streams with two keys over two models, direct and through the gateway, Prometheus holds
exactly those requests per key and model, and token totals equal the answers' own counts; /metrics answers
only the key with the `metrics` scope and holds no key's value; stopping Ollama on a host fires the
Ollama-down alert in Alertmanager's API, which resolves once it runs again; the dashboard, opened in
headless Chromium through an SSH tunnel, shows the hosts and the counts Prometheus holds; a host certificate
reissued with 10 days left fires the certificate alert until a plain deploy renews it.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import socket
import ssl
import subprocess
import sys
import time
import urllib.parse
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import httpx
import pytest
from verify_fleet import DeployedFleet, deploy_fleet

from ollama_fleet import monitoring
from ollama_fleet.lab.state import LabState, state_dir
from ollama_fleet.verify.targets import load_targets

pytestmark = pytest.mark.e2e

PYINFRA = str(Path(sys.executable).parent / "pyinfra")
MONITOR = "monitor"
GATEWAY_PORT = 8443
MODELS = ("tiny:latest", "vehicle-assistant:latest")
KEYS = ("ci", "ops")
Series = dict[tuple[str, str], float]  # (key, model) -> value


@dataclass(frozen=True)
class Monitored:
    fleet: DeployedFleet
    monitor_key: str
    gateway: str  # lab-1
    monitoring: str  # lab-3
    inventory: Path

    def deploy(self, *args: str) -> subprocess.CompletedProcess[str]:
        """`pyinfra -y INVENTORY deploys/ollama.py ARGS` with this module's inventory and metrics key."""
        return subprocess.run(
            [PYINFRA, "-y", *args, str(self.inventory), "deploys/ollama.py"],
            cwd=Path(__file__).resolve().parents[2],
            env={**os.environ, "OLLAMA_FLEET_API_KEY_MONITOR": self.monitor_key, "PYINFRA_PROGRESS": "off"},
            capture_output=True,
            text=True,
            timeout=900,
            check=False,
        )

    def client(self) -> httpx.Client:
        trust = ssl.create_default_context(cafile=str(self.fleet.ca_file))
        return httpx.Client(verify=trust, trust_env=False, timeout=120)

    def url(self, host: str, port: int = 443) -> str:
        return f"https://{self.fleet.address(host)}:{port}"

    @staticmethod
    def get_with_key(client: httpx.Client, url: str, key: str) -> httpx.Response:
        return client.get(url, headers={"Authorization": f"Bearer {key}"})

    def query(self, promql: str) -> Series:
        """Prometheus's answer on the monitoring host (its loopback), summed by key and model."""
        url = "http://127.0.0.1:9090/api/v1/query?query=" + urllib.parse.quote(promql)
        answer = json.loads(self.fleet.ssh_ok(self.monitoring, f"curl -sf '{url}'"))
        return {
            (r["metric"].get("key", ""), r["metric"].get("model", "")): float(r["value"][1])
            for r in answer["data"]["result"]
        }

    def scraped_after(self, moment: float, timeout: float = 60) -> None:
        """Wait until Prometheus has scraped every host after `moment` (the lab shares this clock)."""
        up = 'up{job="ollama_fleet"}'
        promql = f"min(timestamp({up})) > {moment} and count({up}) == {len(self.fleet.hosts)}"
        deadline = time.monotonic() + timeout
        while not self.query(promql):
            assert time.monotonic() < deadline, f"Prometheus scraped no host after {moment} in {timeout} s"
            time.sleep(2)

    def alerts(self) -> list[dict[str, Any]]:
        out = self.fleet.ssh_ok(self.monitoring, "curl -sf 'http://127.0.0.1:9093/api/v2/alerts?active=true'")
        return list(json.loads(out))


def write_inventory(fleet: DeployedFleet, path: Path) -> Path:
    """The lab's inventory, every host granting the metrics key, lab-1 the gateway, lab-3 monitoring."""
    path.write_text(
        Path(fleet.lab.inventory_path).read_text()
        + "def _metrics(name, data):\n"
        + f"    keys = [*data['auth_key_names'], {MONITOR!r}]\n"
        + f"    policies = {{**data['auth_key_policies'], {MONITOR!r}: {{'scope': 'metrics'}}}}\n"
        + "    return name, {**data, 'auth_key_names': keys, 'auth_key_policies': policies,\n"
        + f"                  'monitoring_metrics_key': {MONITOR!r}}}\n"
        + "lab_canary = [_metrics(n, d) for n, d in lab_canary]\n"
        + "lab_rest = [_metrics(n, d) for n, d in lab_rest]\n"
        + "lab_hosts = lab_canary + lab_rest\n"
        + "gateway = [lab_canary[0][0]]\n"
        + "monitoring = [lab_rest[-1][0]]\n"
    )
    return path


@pytest.fixture(scope="module")
def monitored(lab: LabState, tmp_path_factory: pytest.TempPathFactory) -> Monitored:
    fleet = deploy_fleet(lab)
    inventory = write_inventory(fleet, tmp_path_factory.mktemp("metrics") / "fleet.py")
    monitored = Monitored(fleet, secrets.token_urlsafe(24), fleet.hosts[0], fleet.hosts[-1], inventory)
    done = monitored.deploy()
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-4000:]
    assert monitored.monitor_key not in done.stdout + done.stderr
    assert "alerts are sent nowhere" in done.stdout + done.stderr
    return monitored


def test_metrics_answer_the_metrics_key_only_and_hold_no_key(monitored: Monitored) -> None:
    fleet, host = monitored.fleet, monitored.fleet.hosts[1]
    with monitored.client() as client:
        url = monitored.url(host)
        as_ci = monitored.get_with_key(client, f"{url}/metrics", fleet.keys["ci"])
        page = monitored.get_with_key(client, f"{url}/metrics", monitored.monitor_key)
        monitor_on_api = monitored.get_with_key(client, f"{url}/v1/models", monitored.monitor_key)
    assert as_ci.status_code == 403 and as_ci.json()["error"]["code"] == "insufficient_scope"
    assert page.status_code == 200 and "ollama_fleet_requests_total" in page.text
    assert monitor_on_api.status_code == 403
    for value in [*fleet.keys.values(), monitored.monitor_key]:
        assert value not in page.text
    # mtail listens on the host's loopback only: nothing answers on its port from the LAN.
    with pytest.raises(httpx.TransportError):
        httpx.get(f"http://{fleet.address(host)}:3903/metrics", timeout=3)


def _chat_native(client: httpx.Client, url: str, key: str, model: str) -> tuple[int, int]:
    """A streamed /api/chat; (prompt, output) tokens as its final chunk reports them."""
    body = {"model": model, "messages": [{"role": "user", "content": "Hello"}], "options": {"num_predict": 6}}
    with client.stream("POST", f"{url}/api/chat", json=body, headers={"Authorization": f"Bearer {key}"}) as r:
        assert r.status_code == 200
        last = [json.loads(line) for line in r.iter_lines() if line][-1]
    assert last["done"] is True
    return int(last["prompt_eval_count"]), int(last["eval_count"])


def _chat_openai(client: httpx.Client, url: str, key: str, model: str, stream: bool) -> tuple[int, int]:
    """A /v1/chat/completions answer, whole or streamed with usage; (prompt, completion) tokens from it."""
    body: dict[str, Any] = {"model": model, "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 5}
    headers = {"Authorization": f"Bearer {key}"}
    if not stream:
        reply = client.post(f"{url}/v1/chat/completions", json=body, headers=headers)
        assert reply.status_code == 200, reply.text
        usage = reply.json()["usage"]
    else:
        body |= {"stream": True, "stream_options": {"include_usage": True}}
        with client.stream("POST", f"{url}/v1/chat/completions", json=body, headers=headers) as r:
            assert r.status_code == 200
            chunks = [json.loads(line[6:]) for line in r.iter_lines() if line.startswith("data: {")]
        usage = next(c["usage"] for c in chunks if c.get("usage"))
    return int(usage["prompt_tokens"]), int(usage["completion_tokens"])


def _settled(monitored: Monitored, promql: str, expected: Series, timeout: float = 75) -> Series:
    """Prometheus's values once they equal `expected` (scrapes lag the requests), else the last seen."""
    deadline = time.monotonic() + timeout
    while True:
        found = {k: v for k, v in monitored.query(promql).items() if k in expected}
        if found == expected or time.monotonic() > deadline:
            return found
        time.sleep(3)


def test_prometheus_holds_exactly_the_requests_and_tokens_the_clients_saw(monitored: Monitored) -> None:
    fleet = monitored.fleet
    api = 'server="api", route=~"/api/chat|/v1/chat/completions"'
    queries = {
        "requests": f'sum by (key, model) (ollama_fleet_requests_total{{{api}, status="200"}})',
        # Observed for answers only (status 200), so the histogram has no status label.
        "ttft": f"sum by (key, model) (ollama_fleet_ttft_seconds_count{{{api}}})",
        "prompt": 'sum by (key, model) (ollama_fleet_prompt_tokens_total{server="api"})',
        "output": 'sum by (key, model) (ollama_fleet_output_tokens_total{server="api"})',
        "gateway": 'sum by (key, model) (ollama_fleet_gateway_requests_total{status="200"})',
    }
    # What the hosts counted before (earlier tests' traffic), once every host was scraped after now.
    monitored.scraped_after(time.time())
    before = {name: monitored.query(q) for name, q in queries.items()}
    seen: dict[str, Counter[tuple[str, str]]] = {name: Counter() for name in queries}
    direct = [monitored.url(h) for h in fleet.hosts]
    gateway = monitored.url(monitored.gateway, GATEWAY_PORT)
    with monitored.client() as client:
        for i, (key, model) in enumerate((k, m) for k in KEYS for m in MODELS):
            value = fleet.keys[key]
            answers = [
                _chat_native(client, direct[i % 3], value, model),
                _chat_openai(client, direct[(i + 1) % 3], value, model, stream=False),
                _chat_openai(client, gateway, value, model, stream=True),
            ]
            seen["requests"][(key, model)] += len(answers)
            seen["ttft"][(key, model)] += len(answers)
            seen["gateway"][(key, model)] += 1
            for prompt, output in answers:
                seen["prompt"][(key, model)] += prompt
                seen["output"][(key, model)] += output
    for name, promql in queries.items():
        expected = {k: before[name].get(k, 0.0) + n for k, n in seen[name].items()}
        assert _settled(monitored, promql, expected) == expected, name


class DashboardRows(HTMLParser):
    """The dashboard's rows as the browser built them: (table id, the row's data-*) -> field -> text."""

    def __init__(self) -> None:
        super().__init__()
        self.rows: dict[tuple[str, tuple[tuple[str, str], ...]], dict[str, str]] = {}
        self.table = ""
        self.row: dict[str, str] | None = None
        self.field: str | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        found = {name: value or "" for name, value in attrs}
        if tag == "table":
            self.table = found.get("id", "")
        elif tag == "tr" and any(name.startswith("data-") for name in found):
            labels = tuple(sorted((n[5:], v) for n, v in found.items() if n.startswith("data-")))
            self.row = self.rows.setdefault((self.table, labels), {})
        elif tag == "td" and self.row is not None:
            self.field = found.get("data-field", "")
            self.row[self.field] = ""

    def handle_endtag(self, tag: str) -> None:
        if tag == "td":
            self.field = None
        elif tag == "tr":
            self.row = None

    def handle_data(self, data: str) -> None:
        if self.row is not None and self.field is not None:
            self.row[self.field] += data.strip()


def _chromium() -> str:
    found = shutil.which("chromium-headless-shell") or shutil.which("chromium")
    if not found:
        pytest.fail(
            "no headless Chromium: apt-get install chromium-headless-shell (bootstrap.sh installs it)"
        )
    return found


def _browse(url: str, *args: str) -> str:
    """Headless Chromium on the controller; --no-sandbox since the tests run as root."""
    argv = [_chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars", *args, url]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout


@contextmanager
def prometheus_tunnel(monitored: Monitored) -> Iterator[str]:
    """`ssh -L` to Prometheus on the monitoring host's loopback, as docs/metrics.md tells a person to open the
    dashboard; yields Prometheus's base URL on the controller."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    lab = monitored.fleet.lab
    argv = ["ssh", "-F", lab.ssh_config_path, "-N", "-o", "ExitOnForwardFailure=yes"]
    argv += ["-L", f"127.0.0.1:{port}:{monitoring.PROMETHEUS_ADDRESS}", lab.host(monitored.monitoring).name]
    tunnel = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        base = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 30
        while True:
            assert tunnel.poll() is None, f"ssh -L failed: {tunnel.stderr.read() if tunnel.stderr else ''}"
            try:
                if httpx.get(f"{base}/-/ready", timeout=3, trust_env=False).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, "Prometheus did not answer through the tunnel in 30 s"
            time.sleep(0.5)
        yield base
    finally:
        tunnel.terminate()
        tunnel.wait(timeout=10)


def _by_model_and_host(base: str, promql: str) -> dict[tuple[str, str], float]:
    answer = httpx.get(f"{base}/api/v1/query", params={"query": promql}, trust_env=False).json()
    return {
        (r["metric"]["model"], r["metric"]["host"]): float(r["value"][1]) for r in answer["data"]["result"]
    }


COUNTED = 'sum by (model, host) (ollama_fleet_requests_total{server="api", model!=""})'
LOADED = "sum by (model, host) (ollama_fleet_model_loaded_size_bytes)"  # the host state series


def test_the_dashboard_shows_the_fleet_in_a_browser(monitored: Monitored) -> None:
    """The page a person opens (through `ssh -L`) holds the real figures: every host up and answering, and
    per model and host the request counts Prometheus holds (the requests of the test above among them)."""
    screenshot = state_dir(monitored.fleet.lab.slot) / "dashboard.png"
    with prometheus_tunnel(monitored) as base:
        url = base + monitoring.DASHBOARD_PATH
        before, loaded_before = _by_model_and_host(base, COUNTED), _by_model_and_host(base, LOADED)
        page = _browse(url, "--dump-dom")
        after, loaded_after = _by_model_and_host(base, COUNTED), _by_model_and_host(base, LOADED)
        screenshot.unlink(missing_ok=True)
        _browse(url, "--window-size=1400,1100", f"--screenshot={screenshot}")
    print(f"dashboard screenshot: {screenshot}")
    assert screenshot.stat().st_size > 10_000
    parsed = DashboardRows()
    parsed.feed(page)
    rows = parsed.rows
    for host in monitored.fleet.hosts:
        row = rows[("hosts", (("host", host),))]
        assert (row["host"], row["nginx"], row["ollama"]) == (host, "up", "answers"), row
        assert row["cert_days"].endswith("days") and float(row["cert_days"].split()[0]) > 300, row
    models_shown = {
        (dict(labels)["model"], dict(labels)["host"]): float(fields["requests"])
        for (table, labels), fields in rows.items()
        if table == "models"
    }
    assert set(models_shown) == set(before) == set(after)
    for place, shown in models_shown.items():
        assert before[place] <= shown <= after[place], (place, before[place], shown, after[place])
    for model in MODELS:  # each was asked on every host by the test above
        assert all(models_shown[(model, host)] > 0 for host in monitored.fleet.hosts), model
    # Loaded models (Ollama's /api/ps through the host state series): what Prometheus holds, no more.
    loaded_shown = {
        (dict(labels)["model"], dict(labels)["host"]) for table, labels in rows if table == "loaded"
    }
    assert set(loaded_before) & set(loaded_after) <= loaded_shown <= set(loaded_before) | set(loaded_after)
    if not loaded_shown:
        assert "No host reports its loaded models" in page
    gateway_rows = [dict(labels) for table, labels in rows if table == "gateway"]
    assert any(
        r["host"] == monitored.gateway and r["upstream"] in monitored.fleet.hosts for r in gateway_rows
    )


def test_stopping_ollama_fires_its_alert_and_starting_it_resolves_it(monitored: Monitored) -> None:
    fleet, host = monitored.fleet, monitored.fleet.hosts[1]

    def firing() -> bool:
        return any(
            a["labels"].get("alertname") == "OllamaFleetOllamaDown" and a["labels"].get("host") == host
            for a in monitored.alerts()
        )

    assert not firing()
    fleet.ssh_ok(host, "systemctl stop ollama")
    stopped = time.monotonic()
    try:
        while not firing():
            assert time.monotonic() - stopped < 120, f"no OllamaFleetOllamaDown for {host} in 120 s"
            time.sleep(2)
        print(
            f"OllamaFleetOllamaDown fired in Alertmanager {time.monotonic() - stopped:.0f} s after the stop"
        )
    finally:
        fleet.ssh_ok(host, "systemctl start ollama")
    started = time.monotonic()
    while firing():
        assert time.monotonic() - started < 120, f"OllamaFleetOllamaDown for {host} still active after 120 s"
        time.sleep(2)
    print(f"resolved {time.monotonic() - started:.0f} s after the start")


def _changed(run: subprocess.CompletedProcess[str]) -> dict[str, list[str]]:
    """Operation name -> hosts it changed, from `pyinfra --json`."""
    assert run.returncode == 0, run.stdout[-4000:] + run.stderr[-4000:]
    operations = json.loads(run.stdout)["results"]["operations"]
    return {op["name"]: op["success"] for op in operations if op["success"]}


def _certificate_installed(changed: dict[str, list[str]], host: str) -> bool:
    return any(name.endswith("(secret) together") and host in hosts for name, hosts in changed.items())


def test_a_short_lived_certificate_fires_its_alert_until_a_deploy_renews_it(monitored: Monitored) -> None:
    """lab-2's certificate reissued with 10 days of life (tls_cert_days=10) fires
    OllamaFleetCertificateExpiresSoon (< 20 days) in Alertmanager's API; a plain deploy renews it (10 days is
    inside the default tls_renew_before_days=30) and the alert resolves. The same runs deploy the monitoring
    host a second time: it must not change."""
    fleet, host = monitored.fleet, monitored.fleet.hosts[1]
    started = time.monotonic()

    def expiring() -> bool:
        return any(
            a["labels"].get("alertname") == "OllamaFleetCertificateExpiresSoon"
            and a["labels"].get("host") == host
            for a in monitored.alerts()
        )

    assert not expiring()
    # The controller keeps each host's certificate and reissues it only when needed: take lab-2's away so
    # this run issues a new one, with the short life.
    (fleet.state_dir / "pki" / "hosts" / host / "fullchain.pem").unlink()
    limit = ["--limit", host, "--limit", monitored.monitoring]
    # deploy_fast_rerun=false: the monitoring host gets the whole deploy again, not the quick check.
    settings = ["tls_cert_days=10", "tls_renew_before_days=5", "deploy_fast_rerun=false"]
    short = monitored.deploy("--json", *limit, *[arg for s in settings for arg in ("--data", s)])
    changed = _changed(short)
    assert _certificate_installed(changed, host), changed
    # That second deploy of the monitoring role, dashboard included, changes nothing.
    operations = json.loads(short.stdout)["results"]["operations"]
    dashboard = [op for op in operations if "(the fleet dashboard)" in op["name"]]
    assert len(dashboard) == 2 and all(monitored.monitoring in op["no_change"] for op in dashboard), dashboard
    on_monitoring = {name for name, hosts in changed.items() if monitored.monitoring in hosts}
    assert on_monitoring <= {"Record the verified state for the next run"}, changed
    reissued = time.monotonic()
    while not expiring():
        assert time.monotonic() - reissued < 180, f"no OllamaFleetCertificateExpiresSoon for {host} in 180 s"
        time.sleep(3)
    print(f"OllamaFleetCertificateExpiresSoon fired {time.monotonic() - reissued:.0f} s after the reissue")
    renewed = _changed(monitored.deploy("--json", "--limit", host))
    assert _certificate_installed(renewed, host), renewed
    restored = time.monotonic()
    while expiring():
        assert time.monotonic() - restored < 120, f"OllamaFleetCertificateExpiresSoon for {host} still active"
        time.sleep(3)
    print(
        f"resolved {time.monotonic() - restored:.0f} s after the renewal; "
        f"the test took {time.monotonic() - started:.0f} s"
    )


# ---- The host's state: node-exporter's /metrics/host on every host (deploys/host_state.py), scraped as job
# ollama_fleet_host; the state timer's and the deploy's textfiles.


def host_series(monitored: Monitored, promql: str) -> dict[tuple[str, str], float]:
    """Prometheus's answer as (host, model) -> value."""
    url = "http://127.0.0.1:9090/api/v1/query?query=" + urllib.parse.quote(promql)
    answer = json.loads(monitored.fleet.ssh_ok(monitored.monitoring, f"curl -sf '{url}'"))
    return {
        (r["metric"].get("host", ""), r["metric"].get("model", "")): float(r["value"][1])
        for r in answer["data"]["result"]
    }


def _until(found: Any, expected: Any, timeout: float = 60) -> Any:
    """found() once it equals `expected` (the state timer and the scrapes lag), else the last seen."""
    deadline = time.monotonic() + timeout
    while True:
        seen = found()
        if seen == expected or time.monotonic() > deadline:
            return seen
        time.sleep(3)


def test_host_state_needs_the_metrics_key_and_node_exporter_stays_on_loopback(monitored: Monitored) -> None:
    fleet, host = monitored.fleet, monitored.fleet.hosts[0]
    with monitored.client() as client:
        url = f"{monitored.url(host)}/metrics/host"
        as_ci = monitored.get_with_key(client, url, fleet.keys["ci"])
        page = monitored.get_with_key(client, url, monitored.monitor_key)
    assert as_ci.status_code == 403 and as_ci.json()["error"]["code"] == "insufficient_scope"
    assert page.status_code == 200 and "ollama_fleet_state_timestamp_seconds" in page.text
    assert "node_filesystem_avail_bytes" in page.text
    for value in [*fleet.keys.values(), monitored.monitor_key]:
        assert value not in page.text
    with pytest.raises(httpx.TransportError):
        httpx.get(f"http://{fleet.address(host)}:9100/metrics", timeout=3)


def test_prometheus_holds_each_hosts_version_loaded_models_disk_health_and_last_deploy(
    monitored: Monitored,
) -> None:
    fleet = monitored.fleet
    targets = {t.name: t for t in load_targets(fleet.lab.inventory_path)}
    job = 'job="ollama_fleet_host"'
    # A health check now rather than at the next interval: an earlier test stopped Ollama on lab-2.
    for h in fleet.hosts:
        fleet.ssh_ok(h, "systemctl start ollama-fleet-health.service || true")
    # The version each host was deployed with (its settings), which its running Ollama reports.
    deployed = {h: targets[h].settings.ollama.version for h in fleet.hosts}
    for h, version in deployed.items():
        assert json.loads(fleet.ssh_ok(h, "curl -s 127.0.0.1:11434/api/version"))["version"] == version

    def versions() -> dict[str, str]:
        url = "http://127.0.0.1:9090/api/v1/query?query=" + urllib.parse.quote(
            f"ollama_fleet_ollama_version_info{{{job}}} == 1"
        )
        answer = json.loads(fleet.ssh_ok(monitored.monitoring, f"curl -sf '{url}'"))
        return {r["metric"]["host"]: r["metric"]["version"] for r in answer["data"]["result"]}

    assert _until(versions, deployed) == deployed
    # A model loaded on lab-2 now: Prometheus holds it with the size and size_vram /api/ps gives.
    host = fleet.hosts[1]
    with monitored.client() as client:
        _chat_native(client, monitored.url(host), fleet.keys["ci"], fleet.model)
    ps = json.loads(fleet.ssh_ok(host, "curl -s 127.0.0.1:11434/api/ps"))["models"]
    loaded = next(m for m in ps if m["name"] == fleet.model)
    for metric, field in (("size", "size"), ("vram", "size_vram")):
        promql = f'ollama_fleet_model_loaded_{metric}_bytes{{{job}, host="{host}", model="{fleet.model}"}}'
        expected = {(host, fleet.model): float(loaded[field])}
        assert _until(lambda q=promql: host_series(monitored, q), expected) == expected, metric
    # Every host: its last deploy (the fixture's) passed, its health check passes, its models' disk is known.
    everyone = {(h, ""): 1.0 for h in fleet.hosts}
    for promql in (
        f"ollama_fleet_deploy_success{{{job}}}",
        f"ollama_fleet_health_last_success{{{job}}}",
        f"ollama_fleet_models_filesystem_avail_bytes{{{job}}} > bool 0",
    ):
        assert (
            _until(lambda q=promql: host_series(monitored, f"max by (host) ({q})"), everyone) == everyone
        ), promql
    started = host_series(monitored, f"ollama_fleet_deploy_timestamp_seconds{{{job}}}")
    assert all(time.time() - t < 3600 for t in started.values()) and len(started) == len(fleet.hosts)


def test_status_shows_each_hosts_version_and_loaded_models_from_prometheus(
    monitored: Monitored, tmp_path: Path
) -> None:
    fleet, host = monitored.fleet, monitored.fleet.hosts[1]
    inventory = write_inventory(fleet, tmp_path / "fleet.py")
    targets = {t.name: t for t in load_targets(fleet.lab.inventory_path)}
    with monitored.client() as client:
        _chat_native(client, monitored.url(host), fleet.keys["ci"], fleet.model)

    def status() -> dict[str, Any]:
        done = subprocess.run(
            [sys.executable, "-m", "ollama_fleet.cli", "status", str(inventory), "--json"],
            cwd=Path(__file__).resolve().parents[2],
            env={**os.environ, "OLLAMA_FLEET_API_KEY_MONITOR": monitored.monitor_key},
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        assert monitored.monitor_key not in done.stdout + done.stderr
        return dict(json.loads(done.stdout)["view"])

    def loaded_on_cpu() -> bool:
        views = {h["host"]: h for h in status()["hosts"]}
        return {"name": fleet.model, "where": "CPU"} in [
            {"name": m["name"], "where": m["where"]} for m in views[host]["models"]
        ]

    assert _until(loaded_on_cpu, True), f"status shows no {fleet.model} loaded on the CPU of {host}"
    view = status()
    assert view["source"] == f"prometheus on {monitored.monitoring}"
    for shown in view["hosts"]:
        assert shown["up"] is True, shown
        assert shown["version"] == targets[shown["host"]].settings.ollama.version
        assert shown["requests_per_s"] is not None


def test_a_failing_health_check_shows_in_prometheus_and_makes_its_alert_pending(monitored: Monitored) -> None:
    """The alert waits 90 s before firing (two checks in a row): promtool's unit tests prove it fires; here
    the live series make it pending, then clear once the check passes again."""
    fleet, host = monitored.fleet, monitored.fleet.hosts[1]
    failing = f'ollama_fleet_health_last_success{{job="ollama_fleet_host", host="{host}"}} == 0'
    health = "systemctl start ollama-fleet-health.service || true"

    def alert_states() -> set[str]:
        url = "http://127.0.0.1:9090/api/v1/alerts"
        alerts = json.loads(fleet.ssh_ok(monitored.monitoring, f"curl -sf '{url}'"))["data"]["alerts"]
        return {
            a["state"]
            for a in alerts
            if a["labels"].get("alertname") == "OllamaFleetHealthCheckFailing"
            and a["labels"].get("host") == host
        }

    # A check that passes first: an earlier test stopped Ollama here, and the rules lag the series by up to
    # one evaluation.
    fleet.ssh_ok(host, health)
    assert _until(alert_states, set(), timeout=90) == set(), "the alert is active before the fault"
    fleet.ssh_ok(host, "systemctl stop ollama")
    stopped = time.monotonic()
    try:
        fleet.ssh_ok(host, health)
        assert _until(lambda: host_series(monitored, failing), {(host, ""): 0.0}) == {(host, ""): 0.0}
        assert _until(lambda: bool(alert_states()), True), "OllamaFleetHealthCheckFailing is not pending"
        print(f"OllamaFleetHealthCheckFailing {alert_states()} {time.monotonic() - stopped:.0f} s after stop")
    finally:
        fleet.ssh_ok(host, "systemctl start ollama")
    # Until Ollama answers again: a check before that fails too.
    fleet.ssh_ok(
        host, "for i in $(seq 30); do systemctl start ollama-fleet-health.service && break; sleep 2; done"
    )
    assert _until(alert_states, set(), timeout=90) == set(), "the alert stays active after the check passes"
