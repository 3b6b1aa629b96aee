"""A gateway_only host: the gateway and nothing else (no Ollama, no API port, no models, no health timer).

Its settings are checked, its site holds only the gateway (run by a real `nginx -t`), its firewall opens only
SSH and the gateway port, pyinfra plans no Ollama for it, and a client checks it as its gateway.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from test_gateway_render import _gateway_prefix, addresses, fleet_of, host_settings
from test_plan import KEY, gateway_fleet, pyinfra
from test_render import _binary

from ollama_fleet import render
from ollama_fleet.deploys.firewall import guarded_ports, wanted_rules
from ollama_fleet.gateway import gateway_plan
from ollama_fleet.pki import FleetCA
from ollama_fleet.settings import FleetSettings, SettingsError

pytestmark = pytest.mark.unit


def only(tmp: Path, **data: Any) -> FleetSettings:
    return host_settings("gw", tmp, gateway_enabled=True, gateway_only=True, **data)


def test_gateway_only_is_for_a_gateway_that_serves_no_models(tmp_path: Path) -> None:
    s = only(tmp_path)
    assert s.is_gateway and not s.serves_api and not s.serves_api_through_nginx
    with pytest.raises(SettingsError, match=r"gateway_only: alpha is not a gateway; put it in the inventory"):
        host_settings("alpha", tmp_path, gateway_only=True)
    with pytest.raises(SettingsError, match=r"empty models_pull, models_custom for it"):
        only(tmp_path, models_pull=["tiny"], models_custom=[{"name": "t2", "base": "tiny"}])
    with pytest.raises(SettingsError, match=r"gateway_only: the models seed serves models"):
        only(tmp_path, models_seed_host="gw", models_lan_subnets=["10.0.0.0/24"])


def test_the_gateway_balances_over_the_other_hosts_only(tmp_path: Path) -> None:
    fleet = {**fleet_of(tmp_path, 443), "gw": only(tmp_path)}
    plan = gateway_plan(fleet, addresses())
    assert [m.name for m in plan.members] == ["alpha", "beta", "busy"]
    assert plan.models == ("big:latest", "only-busy:latest", "small:latest", "tiny:latest")


def test_its_site_is_the_gateway_alone_and_nginx_accepts_it(tmp_path: Path, ca: FleetCA) -> None:
    fleet = {**fleet_of(tmp_path, 443), "gw": only(tmp_path, gateway_port=8443)}
    site = render.render_nginx_site(fleet["gw"], gateway=gateway_plan(fleet, addresses()))
    assert "listen 8443 ssl default_server;" in site
    assert "listen 443" not in site and "proxy_pass http://127.0.0.1:11434" not in site
    conf = _gateway_prefix(tmp_path, fleet["gw"], ca, gateway_plan(fleet, addresses()), "")
    checked = subprocess.run(
        [_binary("nginx"), "-t", "-p", str(tmp_path), "-c", str(conf)], capture_output=True
    )
    assert checked.returncode == 0, checked.stderr.decode()
    assert b"[warn]" not in checked.stderr, checked.stderr.decode()


def test_its_firewall_opens_ssh_and_the_gateway_and_keeps_the_api_port_closed(tmp_path: Path) -> None:
    s = only(
        tmp_path,
        firewall_enabled=True,
        firewall_client_subnets=["10.1.0.0/24"],
        firewall_admin_subnets=["10.9.0.0/24"],
    )
    assert {(rule.port, rule.source) for rule in wanted_rules(s)} == {
        (22, "10.9.0.0/24"),
        (8443, "10.1.0.0/24"),
    }
    assert guarded_ports(s)[443] == ("", [])  # a rule opening it is too wide
    assert guarded_ports(s)[8443][0] == "firewall_client_subnets"


def test_pyinfra_plans_no_ollama_for_it_and_stops_one_installed_before(tmp_path: Path) -> None:
    inventory = gateway_fleet(tmp_path, h1={"gateway_only": True}, h2={"models_pull": ["tiny"]})
    result = pyinfra("--dry", "--json", str(inventory), "deploys/ollama.py")
    assert result.returncode == 0, result.stderr
    assert "[@fake/h1] gateway on port 8443: 1 host(s), 1 model(s), a pool each" in result.stderr
    ops = {op["name"].split(" | ")[-1]: op for op in json.loads(result.stdout)["plan"]}
    for name in ("Download, verify and unpack Ollama 0.24.0", "Switch /opt/ollama/current to 0.24.0"):
        assert ops[name]["hosts_with_change"] == ["@fake/h2"], name
    assert "@fake/h1" not in ops["Pull model tiny:latest"]["hosts_with_change"]
    assert "@fake/h1" not in ops["Write /usr/local/lib/ollama-fleet/health-check.py"]["hosts_with_change"]
    assert "Stop and disable Ollama (gateway_only)" in ops  # nothing to stop on a bare host
    # The gateway is checked after every host's own check, though h1 has none of its own.
    names = list(ops)
    assert names.index("Check the host like a client (ollama-fleet verify)") < names.index(
        "Check the fleet's gateway like a client (ollama-fleet verify)"
    )


def test_a_client_checks_it_as_its_gateway(tmp_path: Path) -> None:
    """verify, status and rollout read targets from the inventory: a gateway_only host's is its gateway."""
    inventory = gateway_fleet(tmp_path, h1={"gateway_only": True}, h2={"models_pull": ["tiny"]})
    script = (
        "import sys\n"
        "from ollama_fleet.verify.targets import load_gateway_targets, load_targets\n"
        "targets = load_targets(sys.argv[1])\n"
        "print([(t.name, t.settings.host, t.port, t.models) for t in targets])\n"
        "print([t.name for t in load_gateway_targets(sys.argv[1])])\n"
    )
    environ = {**os.environ, "OLLAMA_FLEET_API_KEY_TEAM": KEY}
    done = subprocess.run(
        [sys.executable, "-c", script, str(inventory)],
        cwd=Path(__file__).resolve().parents[2],
        env=environ,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    listed, gateways = done.stdout.splitlines()
    assert listed == str(
        [
            ("@fake/h1/gateway", "@fake/h1", 8443, ["tiny:latest"]),
            ("@fake/h2", "@fake/h2", 443, ["tiny:latest"]),
        ]
    )
    assert gateways == str(["@fake/h1/gateway"])
