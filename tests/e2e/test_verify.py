"""`ollama-fleet verify` and `status` on a deployed lab: all green, then one fault at a time on one host.

Each fault must fail exactly its check on exactly that host (checks that depend on it are "blocked"), with a
reason that says what to fix; every other host and check still passes; after the repair all pass again.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from verify_fleet import API_KEYS, SITE, DeployedFleet, deploy_fleet, reasons, statuses

from ollama_fleet.lab.state import LabState
from ollama_fleet.operations.nginx import reload_script
from ollama_fleet.render import builtin_templates_dir
from ollama_fleet.verify.checks import CHECK_NAMES

pytestmark = pytest.mark.e2e

# Returns once the old workers take no new connections: a verify right after is served by the new config.
RELOAD_NGINX = f"{{ {reload_script()}; }}"
WAIT_FOR_OLLAMA = (
    "for i in $(seq 100); do curl -sf http://127.0.0.1:11434/ >/dev/null && exit 0; sleep 0.2; done; exit 1"
)


# The lab's hosts have no GPU (gpu_vendor auto): the gpu check shows where models run and requires nothing.
HEALTHY = dict.fromkeys(CHECK_NAMES, "pass") | {"gpu": "n/a"}


@pytest.fixture(scope="module")
def fleet(lab: LabState) -> DeployedFleet:
    return deploy_fleet(lab)


@pytest.fixture
def faulty(fleet: DeployedFleet) -> str:
    """The one host a fault is put on: not the first, so inventory order cannot hide a mix-up."""
    return fleet.hosts[1]


def test_verify_passes_every_check_on_the_healthy_fleet(fleet: DeployedFleet) -> None:
    # The next whole second on each host's clock (journalctl counts whole seconds), and a wait into it.
    since = {host: int(float(fleet.ssh_ok(host, "date +%s.%N"))) + 1 for host in fleet.hosts}
    time.sleep(1.1)
    started = time.perf_counter()
    code, report = fleet.verify()
    elapsed = time.perf_counter() - started
    assert code == 0, report["failures"]
    assert report["ok"] is True
    assert statuses(report) == {host: HEALTHY for host in fleet.hosts}
    for host in report["hosts"]:
        checks = {c["check"]: c for c in host["checks"]}
        assert checks["version"]["figure"] == "0.24.0"
        assert checks["stream"]["metrics"]["first_ms"] < checks["stream"]["metrics"]["last_ms"] / 2
        print(f"{host['host']}: stream {checks['stream']['figure']}; chat {checks['chat']['figure']}")
        # One generation per model: the stream's answers for its model in chat (a second stream only when
        # the first looked buffered).
        retried = "(on the second try)" in checks["stream"]["figure"]
        assert completions_since(fleet, host["host"], since[host["host"]]) == len(MODELS) + retried
    print(f"verify of {len(fleet.hosts)} hosts: {elapsed:.1f} s (report: {report['seconds']:.1f} s)")


MODELS = ("tiny", "vehicle-assistant")  # the lab's models: one runner (the custom one is on tiny's weights)


def completions_since(fleet: DeployedFleet, host: str, since: int) -> int:
    """Chat completions Ollama answered on `host` since `since` (its clock, epoch seconds)."""
    log = fleet.ssh_ok(host, f"journalctl -u ollama --since @{since} -o cat --no-pager")
    return sum('"/v1/chat/completions"' in line for line in log.splitlines())


def test_checks_with_nothing_to_prove_say_na_apart_and_fail_only_under_strict(
    fleet: DeployedFleet, tmp_path: Path
) -> None:
    """The lab's first host seen through an inventory that gives it no ollama_origins and no lab outsider:
    cors and outsider prove nothing there, and say so."""
    first = fleet.hosts[0]
    inventory = tmp_path / "fleet.py"
    inventory.write_text(
        "import runpy\n"
        f"_lab = runpy.run_path({fleet.lab.inventory_path!r})\n"
        "_off = {'ollama_origins': [], 'lab_outsider_ip': None, 'lab_outsider_netns': None}\n"
        f"hosts = [(n, {{**d, **_off}}) for n, d in _lab['lab_canary'] if n == {first!r}]\n"
    )
    verify = [sys.executable, "-m", "ollama_fleet.cli", "verify", str(inventory)]
    lenient = fleet.run(verify)
    assert lenient.returncode == 0, lenient.stdout[-3000:]
    header, row = (line.split() for line in lenient.stdout.splitlines()[:2])
    marks = dict(zip(header[2:], row[2:], strict=True))
    # gpu too: under gpu_vendor auto it shows where models run and requires no GPU (a CPU lab host).
    assert {check for check, mark in marks.items() if mark != "ok"} == {"cors", "outsider", "gpu"}
    assert marks["cors"] == marks["outsider"] == marks["gpu"] == "n/a"
    total = len(CHECK_NAMES)
    assert f"PASS: {total - 3}/{total} checks passed, 3 n/a" in lenient.stdout.splitlines()[-1]
    strict = fleet.run([*verify, "--strict", "--json"])
    assert strict.returncode == 1, strict.stdout[-3000:]
    report = json.loads(strict.stdout)
    assert report["ok"] is False and report["failures"] == []
    assert {(n["host"], n["check"]) for n in report["not_applicable"]} == {
        (first, "cors"),
        (first, "outsider"),
        (first, "gpu"),
    }


@dataclass(frozen=True)
class Fault:
    name: str
    breaks: str  # shell on the faulty host
    repair: str | None  # shell on the faulty host; None: re-run the deploy on that host
    fails: str
    blocked: frozenset[str]
    fix: str  # words the reason must contain


FAULTS = [
    Fault(
        "ollama stopped",
        "systemctl stop ollama",
        f"systemctl start ollama && {WAIT_FOR_OLLAMA}",
        fails="root",
        blocked=frozenset({"auth", "scopes", "version", "models", "chat", "stream", "gpu", "ipv6"}),
        fix="systemctl status ollama",
    ),
    Fault(
        "proxy buffering on",
        f"sed -i 's/proxy_buffering off;/proxy_buffering on;/' {SITE} "
        f"&& grep -q 'proxy_buffering on;' {SITE} && {RELOAD_NGINX}",
        f"sed -i 's/proxy_buffering on;/proxy_buffering off;/' {SITE} && {RELOAD_NGINX}",
        fails="stream",
        blocked=frozenset(),
        fix="set `proxy_buffering off`",
    ),
    Fault(
        "model deleted",
        "ollama rm tiny",
        None,
        fails="models",
        blocked=frozenset({"chat", "stream", "gpu"}),
        fix="re-run the deploy",
    ),
    Fault(
        "ufw opens 11434",  # to IPv4 only: over IPv6 it is the ipv6 check's business
        "ufw allow from 0.0.0.0/0 to any port 11434 proto tcp",
        "ufw delete allow from 0.0.0.0/0 to any port 11434 proto tcp",
        fails="raw_port",
        blocked=frozenset(),
        fix="ufw rule for 11434",
    ),
    Fault(
        "ufw opens 11434 over ipv6 only",  # filtered for IPv4 only: raw_port passes, ipv6 must fail
        "ufw allow from ::/0 to any port 11434 proto tcp",
        "ufw delete allow from ::/0 to any port 11434 proto tcp",
        fails="ipv6",
        blocked=frozenset(),
        fix="the firewall lets it through over IPv6 (a ufw rule for 11434?",
    ),
    Fault(
        "ufw rejects 11434 instead of dropping",  # an RST back in one round trip, not the drop's silence
        "ufw reject proto tcp from 0.0.0.0/0 to any port 11434",
        "ufw delete reject proto tcp from 0.0.0.0/0 to any port 11434",
        fails="raw_port",
        blocked=frozenset(),
        fix="answered (refused) instead of being dropped: the firewall lets it through or rejects it",
    ),
    Fault(
        "scopes not enforced",
        f'sed -i \'s/^    "inference:inference" 0;$/&\\n    "inference:admin" 0;/\' {SITE} '
        f"&& grep -q 'inference:admin' {SITE} && {RELOAD_NGINX}",
        f"sed -i '/inference:admin/d' {SITE} && {RELOAD_NGINX}",
        fails="scopes",
        blocked=frozenset(),
        fix="nginx does not enforce scopes",
    ),
    Fault(
        "plain http served",
        f"sed -i 's/^    listen 443 ssl default_server;$/&\\n    listen 80;/' {SITE} "
        f"&& {RELOAD_NGINX} && ufw allow 80/tcp",
        f"ufw delete allow 80/tcp && sed -i '/^    listen 80;$/d' {SITE} && {RELOAD_NGINX}",
        fails="plain_http",
        blocked=frozenset(),
        fix="sends its key in clear",
    ),
    Fault(
        "nginx not on ipv6",
        f"sed -i '/^    listen \\[::\\]:443 ssl default_server;$/d' {SITE} "
        f"&& ! grep -q 'listen \\[::\\]' {SITE} && {RELOAD_NGINX}",
        None,
        fails="ipv6",
        blocked=frozenset(),
        fix="nginx must listen on [::]:443",
    ),
    Fault(
        "ufw leaves ipv6 open",
        "sed -i 's/^IPV6=yes$/IPV6=no/' /etc/default/ufw && grep -q '^IPV6=no$' /etc/default/ufw "
        "&& ufw reload",
        None,
        fails="ipv6",
        blocked=frozenset(),
        fix="IPV6=yes in /etc/default/ufw",
    ),
    Fault(
        "key list changed",
        f"cp -p {API_KEYS} /root/api-keys.verify-backup && sed -i '/^# key: ops$/,+1d' {API_KEYS} "
        f"&& ! grep -q 'key: ops' {API_KEYS} && grep -q 'key: ci' {API_KEYS} && {RELOAD_NGINX}",
        f"mv /root/api-keys.verify-backup {API_KEYS} && {RELOAD_NGINX}",
        fails="auth",
        blocked=frozenset(),
        fix="401 with the configured key(s) ops: the key list on the host is stale; re-run the deploy",
    ),
]


@pytest.mark.parametrize("fault", FAULTS, ids=[f.name for f in FAULTS])
def test_a_fault_fails_exactly_its_check_on_exactly_that_host(
    fleet: DeployedFleet, faulty: str, fault: Fault
) -> None:
    fleet.ssh_ok(faulty, fault.breaks)
    try:
        code, report = fleet.verify()
    finally:
        repair(fleet, faulty, fault)
    assert code == 1
    expected = HEALTHY | {fault.fails: "fail"} | dict.fromkeys(fault.blocked, "blocked")
    healthy = HEALTHY
    assert statuses(report) == {host: expected if host == faulty else healthy for host in fleet.hosts}
    assert fault.fix in reasons(report, faulty)[fault.fails]
    assert report["failures"][0] == {"host": faulty, "check": fault.fails}

    code, report = fleet.verify("--hosts", faulty)
    assert code == 0, f"not repaired: {report['failures']}"


def repair(fleet: DeployedFleet, host: str, fault: Fault) -> None:
    if fault.repair is not None:
        fleet.ssh_ok(host, fault.repair)
        return
    done = fleet.deploy("--limit", host)
    assert done.returncode == 0, done.stdout[-3000:]


def test_a_deploy_whose_result_does_not_work_fails(fleet: DeployedFleet, tmp_path: Path) -> None:
    """The deploy ends with the same checks: a site template that buffers streams makes it fail."""
    templates = tmp_path / "templates"
    templates.mkdir()
    site = (builtin_templates_dir() / "nginx-site.conf.j2").read_text()
    assert "proxy_buffering off;" in site
    (templates / "nginx-site.conf.j2").write_text(site.replace("proxy_buffering off;", "proxy_buffering on;"))
    host = fleet.hosts[2]
    override = f'["{templates}"]'
    try:
        done = fleet.deploy("--limit", host, "--data", f"nginx_template_dirs={override}")
    finally:
        restored = fleet.deploy("--limit", host)
    output = done.stdout + done.stderr
    assert done.returncode != 0
    assert f"{host} does not work for clients" in output
    assert "stream: fail" in output and "proxy_buffering off" in output
    assert restored.returncode == 0, restored.stdout[-3000:]


@pytest.fixture
def health_results(fleet: DeployedFleet) -> Iterator[DeployedFleet]:
    """Every host has logged a first health result (the timer fires 10 s after the deploy started it)."""
    deadline = time.monotonic() + 120
    while fleet.ollama_fleet("status").returncode != 0:
        assert time.monotonic() < deadline, fleet.ollama_fleet("status").stdout
        time.sleep(3)
    yield fleet


def test_status_shows_each_hosts_last_health_result(health_results: DeployedFleet, faulty: str) -> None:
    fleet = health_results
    done = fleet.ollama_fleet("status")
    # The health table, a blank line, then the dashboard's view read straight from the hosts (no
    # monitoring host in this inventory): caption, header, a row per host.
    health, view = done.stdout.split("\n\n", 1)
    rows = {line.split()[0]: line.split() for line in health.splitlines()[1:]}
    assert set(rows) == set(fleet.hosts)
    assert all(row[1] == "ok" and "version=0.24.0" in " ".join(row) for row in rows.values())
    caption, _, *view_rows = view.splitlines()
    assert caption.startswith("straight from the hosts"), view
    seen = {line.split()[0]: line.split() for line in view_rows if line.split()[0] in fleet.hosts}
    assert set(seen) == set(fleet.hosts), view
    assert all(row[1:3] == ["up", "0.24.0"] for row in seen.values()), view

    fleet.ssh_ok(faulty, "systemctl stop ollama")
    try:
        fleet.ssh(faulty, "systemctl start ollama-fleet-health.service")  # fails, and logs why
        done = fleet.ollama_fleet("status", "--json")
    finally:
        fleet.ssh_ok(faulty, f"systemctl start ollama && {WAIT_FOR_OLLAMA}")
        fleet.ssh_ok(faulty, "systemctl start ollama-fleet-health.service")
    assert done.returncode == 1
    hosts = {h["host"]: h for h in json.loads(done.stdout)["hosts"]}
    assert hosts[faulty]["state"] == "FAIL"
    assert "unreachable" in hosts[faulty]["message"] and "systemctl status ollama" in hosts[faulty]["message"]
    assert all(hosts[h]["state"] == "ok" for h in fleet.hosts if h != faulty)
    assert fleet.ollama_fleet("status").returncode == 0


def test_a_second_deploy_changes_no_health_unit_and_verifies_again(fleet: DeployedFleet) -> None:
    done = fleet.deploy("--json", "--data", "deploy_fast_rerun=false")  # every operation asked again
    assert done.returncode == 0, done.stderr[-3000:]
    operations = json.loads(done.stdout)["results"]["operations"]
    health = [op for op in operations if op["name"].startswith("Ollama health timer |")]
    assert len(health) >= 5
    for op in health:
        assert (op["success"], sorted(op["no_change"])) == ([], sorted(fleet.hosts)), op["name"]
    check = next(op for op in operations if op["name"].startswith("Check the host like a client"))
    assert (check["success"], sorted(check["no_change"])) == ([], sorted(fleet.hosts))  # ran, changed nothing
    assert "quick client check (0 operation(s) changed this host)" in done.stderr
