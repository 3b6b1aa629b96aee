"""What a deployed host must look like, read on the host itself (pytest-testinfra).

Expected values come from the same validated settings the deploy used, and files are compared with what
the renderers produce, so a check fails on any drift, not only on a missing line.
"""

from __future__ import annotations

import datetime as dt
import json
import re
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from infra_fleet import connection_address, fleet, hostspecs, ip_of

from ollama_fleet.deploys.firewall import wanted_rules
from ollama_fleet.deploys.proxy import dialled_address
from ollama_fleet.gateway import (
    GATEWAY_MEMBERS_DIR,
    GatewayPlan,
    answers_loaded_check,
    gateway_plan,
    member_confs,
)
from ollama_fleet.operations import ufw
from ollama_fleet.operations.addresses import ResolvedAddresses, StableIpv6Addresses
from ollama_fleet.pki import cert_sans, host_sans
from ollama_fleet.render import render_dropin, render_hardening, render_nginx_site, tls_paths
from ollama_fleet.settings import FleetSettings

pytestmark = pytest.mark.e2e
testinfra_hosts = hostspecs()


@pytest.fixture
def s(host: Any) -> FleetSettings:
    return fleet()[host.backend.hostname][1]


def every_host() -> dict[str, FleetSettings]:
    """Inventory name -> settings (fleet() lists each host under its address too)."""
    return dict(fleet().values())


def resolved(host: Any, name: str) -> list[str]:
    """What `name` resolves to on `host`, as the deploy's fact reads it."""
    return ResolvedAddresses().process(host.check_output(f"getent ahosts {name} || true").splitlines())


def gateway_of(host: Any, s: FleetSettings) -> GatewayPlan | None:
    """The plan a gateway host's deploy made: every host at the address this host resolves it to."""
    if not s.is_gateway:
        return None
    addresses = {}
    for name, member in every_host().items():
        reached = connection_address(name)
        chosen = ip_of(reached) or dialled_address(resolved(host, reached), member.serves_ipv6)
        assert chosen, f"{reached} does not resolve on {host.backend.hostname}"
        addresses[name] = chosen
    return gateway_plan(every_host(), addresses)


def gateway_sources(host: Any, loaded_check: bool) -> list[str]:
    """The addresses a gateway's first tries come from, as this host resolves them (its deploy's view)."""
    if not loaded_check:
        return []
    sources = []
    for name, settings in every_host().items():
        if settings.is_gateway:
            reached = connection_address(name)
            literal = ip_of(reached)
            sources += [literal] if literal else resolved(host, reached)
    return sources


def test_ollama_service_is_enabled_and_active(host: Any, s: FleetSettings) -> None:
    service = host.service("ollama")
    if not s.serves_api:  # gateway_only: an Ollama an earlier deploy installed is stopped and disabled
        assert not service.is_running and not service.is_enabled
        return
    assert service.is_enabled
    assert service.is_running


def test_dropin_holds_exactly_the_validated_environment(host: Any, s: FleetSettings) -> None:
    dropin = host.file("/etc/systemd/system/ollama.service.d/override.conf")
    assert dropin.content_string == render_dropin(s)
    if s.nginx.enabled:
        assert 'Environment="OLLAMA_HOST=127.0.0.1:11434"' in dropin.content_string.splitlines()


def test_pinned_version_serves_from_a_versioned_directory(host: Any, s: FleetSettings) -> None:
    install = s.ollama.install_dir
    assert host.file("/usr/local/bin/ollama").linked_to == f"{install}/{s.ollama.version}/bin/ollama"
    assert host.file(f"{install}/current").is_symlink
    version = json.loads(host.check_output(f"curl -fsS http://127.0.0.1:{s.ollama.listen_port}/api/version"))
    assert version["version"] == s.ollama.version


def test_the_service_runs_sandboxed(host: Any, s: FleetSettings) -> None:
    sandbox = host.file("/etc/systemd/system/ollama.service.d/hardening.conf")
    if not s.ollama.hardening:
        assert not sandbox.exists
        return
    assert sandbox.content_string == render_hardening(s)
    exposure = host.check_output("systemd-analyze security ollama.service --no-pager | tail -1")
    match = re.search(r"exposure level for ollama.service: ([0-9.]+)", exposure)
    assert match, exposure
    assert float(match.group(1)) < 2.0, exposure  # "OK" (9.2 "UNSAFE" without the sandbox)
    main_pid = host.check_output("systemctl show ollama.service -p MainPID --value")
    assert "NoNewPrivs:\t1" in host.check_output(f"cat /proc/{main_pid}/status")


def test_system_user_and_models_directory(host: Any, s: FleetSettings) -> None:
    user = host.user(s.ollama.user)
    assert user.exists and user.shell == "/bin/false" and user.home == str(s.ollama.home)
    assert user.group == s.ollama.group and user.uid < 1000  # a system user
    models = host.file(str(s.ollama.models_dir))
    assert models.is_directory and models.user == s.ollama.user


def test_nginx_site_streams_to_loopback_with_the_host_ollama_accepts(host: Any, s: FleetSettings) -> None:
    site = host.file("/etc/nginx/sites-available/ollama-fleet.conf")
    text = site.content_string
    plan = gateway_of(host, s)
    loaded_check = answers_loaded_check(s, every_host().values())
    assert text == render_nginx_site(
        s, gateway=plan, loaded_check=loaded_check, gateway_addresses=gateway_sources(host, loaded_check)
    )
    # A gateway's members: exactly one server line per host, in rotation unless its settings drain it.
    members = member_confs(plan, s.gateway) if plan else {}
    listed = host.check_output(f"ls -1 {GATEWAY_MEMBERS_DIR} 2>/dev/null || true").split()
    assert sorted(listed) == sorted(Path(path).name for path in members)
    for path, wanted in members.items():
        assert host.file(path).content_string == wanted
    if not s.serves_api:
        assert host.run("nginx -t").rc == 0
        return
    assert re.search(r"^\s*proxy_buffering off;$", text, re.M)
    assert re.search(rf"^\s*proxy_set_header Host localhost:{s.ollama.listen_port};$", text, re.M)
    assert re.search(rf"^\s*proxy_read_timeout {s.nginx.read_timeout}s;$", text, re.M)
    assert host.file("/etc/nginx/sites-enabled/ollama-fleet.conf").linked_to == site.path
    assert not host.file("/etc/nginx/sites-enabled/default").exists
    assert host.service("nginx").is_enabled and host.service("nginx").is_running
    assert host.run("nginx -t").rc == 0


def test_https_is_public_and_ollama_only_on_loopback(host: Any, s: FleetSettings) -> None:
    assert host.socket(f"tcp://0.0.0.0:{s.nginx.https_port}").is_listening
    assert host.socket(f"tcp://0.0.0.0:{s.nginx.http_port}").is_listening == s.nginx.http_redirect
    listeners = host.check_output("ss -Hltn").splitlines()
    on_port = [line.split()[3] for line in listeners if line.split()[3].endswith(f":{s.ollama.listen_port}")]
    assert on_port == [f"127.0.0.1:{s.ollama.listen_port}"]


def test_ufw_allows_exactly_our_rules_and_denies_the_rest(host: Any, s: FleetSettings) -> None:
    status = host.check_output("ufw status verbose")
    assert "Status: active" in status
    assert "deny (incoming)" in status and "allow (outgoing)" in status
    added = host.check_output("ufw show added").splitlines()
    assert ufw.tagged_rules(added) == set(wanted_rules(s))
    assert not [line for line in added if str(s.ollama.listen_port) in line]


def test_certificate_names_the_host_and_is_far_from_expiry(host: Any, s: FleetSettings) -> None:
    paths = tls_paths(s)
    cert = x509.load_pem_x509_certificate(host.file(str(paths.cert)).content)
    if s.tls.mode == "fleet_ca":
        addresses = [ip] if (ip := ip_of(connection_address(host.backend.hostname))) else []
        if s.serves_ipv6:
            listed = host.check_output("ip -6 -o addr show scope global").splitlines()
            addresses += StableIpv6Addresses().process(listed)
        wanted = host_sans(s, addresses)
        assert sorted(cert_sans(cert)) == sorted(name.lower() for name in wanted)
    left = cert.not_valid_after_utc - dt.datetime.now(dt.UTC)
    assert left > dt.timedelta(days=s.tls.renew_before_days)
    if s.tls.mode == "fleet_ca":
        ca = x509.load_pem_x509_certificate((Path(s.tls.ca_dir) / "ca.pem").read_bytes())
        cert.verify_directly_issued_by(ca)
        assert host.file(str(paths.ca)).content == (Path(s.tls.ca_dir) / "ca.pem").read_bytes()


def test_secret_files_are_readable_only_by_who_needs_them(host: Any, s: FleetSettings) -> None:
    key = host.file(str(tls_paths(s).key))
    assert (key.user, key.group, key.mode) == ("root", "root", 0o600)
    keys = host.file("/etc/nginx/ollama-fleet/api-keys.conf")
    assert (keys.user, keys.group, keys.mode) == ("root", "root", 0o600)
    # no staged copy of the keys is left behind
    assert not host.file("/var/lib/ollama-fleet/nginx").exists


def test_listed_models_are_served(host: Any, s: FleetSettings) -> None:
    tags = json.loads(host.check_output(f"curl -fsS http://127.0.0.1:{s.ollama.listen_port}/api/tags"))
    assert set(s.models.names()) <= {model["name"] for model in tags["models"]}
