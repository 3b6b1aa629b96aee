"""Settings validation: every bad input fails in `settings_for_host`, before any operation exists, with a
message naming the host, the key the user wrote and how to fix it. Good inputs validate to what they say."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from ollama_fleet.settings import FleetSettings, SettingsError, listed_name, settings_for_host

pytestmark = pytest.mark.unit

HOST = "gpu7.lan"
KEY = "sk-fleet-0123456789abcdef"
ENVIRON = {"OLLAMA_FLEET_API_KEY_ALICE": KEY}


def valid_data(tmp_path: Path) -> dict[str, Any]:
    """The smallest complete set of host data: firewall subnets and one API key."""
    return {
        "firewall_client_subnets": ["192.168.1.0/24"],
        "firewall_admin_subnets": ["192.168.9.0/24"],
        "auth_key_names": ["alice"],
        "auth_secrets_file": str(tmp_path / "absent.json"),
    }


def settings(tmp_path: Path, environ: dict[str, str] | None = None, **data: Any) -> FleetSettings:
    return settings_for_host(HOST, {**valid_data(tmp_path), **data}, ENVIRON if environ is None else environ)


# (case id, data overriding valid_data, the key the message must name, a fragment of the fix)
BAD_INPUTS: list[tuple[str, dict[str, Any], str, str]] = [
    # unknown, removed and managed OLLAMA_* names
    (
        "removed-max-vram",
        {"ollama_env": {"OLLAMA_MAX_VRAM": "8589934592"}},
        "ollama_env",
        "OLLAMA_GPU_OVERHEAD",
    ),
    (
        "removed-runners-dir",
        {"ollama_env": {"OLLAMA_RUNNERS_DIR": "/x"}},
        "ollama_env",
        "bundled in lib/ollama",
    ),
    (
        "typo-keep-alive",
        {"ollama_env": {"OLLAMA_KEEP_ALIVES": "5m"}},
        "ollama_env",
        "did you mean OLLAMA_KEEP_ALIVE",
    ),
    ("unknown-name", {"ollama_env": {"OLLAMA_TURBO": "1"}}, "ollama_env", "known: "),
    ("client-auth-var", {"ollama_env": {"OLLAMA_AUTH": "1"}}, "ollama_env", "set auth_* to require API keys"),
    ("managed-host", {"ollama_env": {"OLLAMA_HOST": "0.0.0.0"}}, "ollama_env", "set ollama_listen instead"),
    ("managed-origins", {"ollama_env": {"OLLAMA_ORIGINS": "*"}}, "ollama_env", "set ollama_origins instead"),
    ("api-body-unlimited", {"nginx_api_max_body_size": "0"}, "nginx_api_max_body_size", "give a size"),
    ("managed-cloud", {"ollama_env": {"OLLAMA_NO_CLOUD": "0"}}, "ollama_env", "set ollama_cloud instead"),
    ("cloud-not-a-bool", {"ollama_cloud": "maybe"}, "ollama_cloud", "bool"),
    # booleans Ollama would silently read as true
    ("bool-yes", {"ollama_env": {"OLLAMA_FLASH_ATTENTION": "yes"}}, "ollama_env", "use 1/true or 0/false"),
    ("bool-no", {"ollama_env": {"OLLAMA_NOPRUNE": "no"}}, "ollama_env", "treats unparsable booleans as TRUE"),
    ("bool-on", {"ollama_env": {"OLLAMA_SCHED_SPREAD": "on"}}, "ollama_env", "use 1/true or 0/false"),
    # durations Ollama would silently replace with 5m
    (
        "duration-words",
        {"ollama_env": {"OLLAMA_KEEP_ALIVE": "5 minutes"}},
        "ollama_env",
        "Go duration (5m, 1h30m)",
    ),
    ("duration-forever", {"ollama_env": {"OLLAMA_KEEP_ALIVE": "forever"}}, "ollama_env", "negative value"),
    ("duration-days", {"ollama_env": {"OLLAMA_LOAD_TIMEOUT": "1d"}}, "ollama_env", "Use seconds (300)"),
    ("choice", {"ollama_env": {"OLLAMA_KV_CACHE_TYPE": "q5_1"}}, "ollama_env", "one of f16, q8_0, q4_0"),
    ("uint", {"ollama_env": {"OLLAMA_NUM_PARALLEL": "-1"}}, "ollama_env", "not a non-negative integer"),
    # origins that make `ollama serve` panic at start
    (
        "origin-no-scheme",
        {"ollama_origins": ["app.example.com"]},
        "ollama_origins",
        "https://app.example.com",
    ),
    (
        "origin-space",
        {"ollama_origins": ["https://a.lan, https://b.lan"]},
        "ollama_origins",
        "without trimming",
    ),
    ("origin-edge-space", {"ollama_origins": ["https://a.lan "]}, "ollama_origins", "contains a space"),
    ("origin-two-stars", {"ollama_origins": ["https://*.*.lan"]}, "ollama_origins", "more than one '*'"),
    ("origin-app-scheme", {"ollama_origins": ["app://obsidian.md"]}, "ollama_origins", "like app://*"),
    ("origin-file", {"ollama_origins": ["file:///srv/ui/index.html"]}, "ollama_origins", "panics on others"),
    ("origin-inner-tab", {"ollama_origins": ["https://a\t.lan"]}, "ollama_origins", "contains a space"),
    # CIDRs
    (
        "cidr-host-bits",
        {"firewall_client_subnets": ["192.168.1.7/24"]},
        "firewall_client_subnets",
        "192.168.1.0/24",
    ),
    ("cidr-prefix", {"firewall_client_subnets": ["10.0.0.0/33"]}, "firewall_client_subnets", "write it like"),
    ("cidr-word", {"firewall_admin_subnets": ["office"]}, "firewall_admin_subnets", "write it like"),
    ("cidr-not-list", {"firewall_client_subnets": "10.0.0.0/8"}, "firewall_client_subnets", "must be a list"),
    # an empty subnet list with the firewall on
    ("no-client-subnets", {"firewall_client_subnets": []}, "firewall_client_subnets", "list the LAN subnets"),
    ("no-admin-subnets", {"firewall_admin_subnets": []}, "firewall_admin_subnets", "SSH would be locked out"),
    # key policies
    (
        "policy-for-unknown-key",
        {"auth_key_policies": {"webapp": {"scope": "admin"}}},
        "auth_key_policies",
        "add it there or remove its policy",
    ),
    (
        "policy-bad-scope",
        {"auth_key_policies": {"alice": {"scope": "root"}}},
        "auth_key_policies",
        "'inference'",
    ),
    (
        "policy-bad-rate",
        {"auth_key_policies": {"alice": {"rate": "10/s"}}},
        "auth_key_policies",
        "60r/m or 5r/s",
    ),
    ("policy-typo", {"auth_key_policies": {"alice": {"concurency": 2}}}, "auth_key_policies", "Extra inputs"),
    (
        "policy-zero-conns",
        {"auth_key_policies": {"alice": {"concurrency": 0}}},
        "auth_key_policies",
        "than 0",
    ),
    (
        "default-scope",
        {"auth_default_scope": "all"},
        "auth_default_scope",
        "'inference', 'admin' or 'metrics'",
    ),
    # clashing ports
    (
        "https-is-http",
        {"nginx_https_port": 80, "nginx_http_redirect": True},
        "nginx_http_port",
        "give each a different port",
    ),
    ("ollama-on-443", {"ollama_listen": "127.0.0.1:443"}, "ollama_listen", "give each a different port"),
    ("ssh-on-https", {"firewall_ssh_port": 443}, "firewall_ssh_port", "give each a different port"),
    # Ollama exposed beside nginx
    (
        "listen-any",
        {"ollama_listen": "0.0.0.0:11434"},
        "ollama_listen",
        "set ollama_listen to 127.0.0.1:11434",
    ),
    (
        "listen-any-v6",
        {"ollama_listen": "[::]:11434"},
        "ollama_listen",
        "set ollama_listen to 127.0.0.1:11434",
    ),
    ("listen-lan-ip", {"ollama_listen": "192.168.1.7:11434"}, "ollama_listen", "when nginx_enabled is true"),
    ("listen-no-port", {"ollama_listen": "11434"}, "ollama_listen", "write it like 127.0.0.1:11434"),
    # missing TLS material
    ("provided-no-cert", {"tls_mode": "provided"}, "tls_cert_file", "set it to a file on the controller"),
    (
        "provided-missing-files",
        {"tls_mode": "provided", "tls_cert_file": "/nonexistent/c.pem", "tls_key_file": "/nonexistent/k.pem"},
        "tls_cert_file",
        "does not exist on the controller",
    ),
    # nginx values
    ("short-read-timeout", {"nginx_read_timeout": 60}, "nginx_read_timeout", "greater than or equal to 600"),
    ("short-send-timeout", {"nginx_send_timeout": 300}, "nginx_send_timeout", "greater than or equal to 600"),
    (
        "body-size-unit",
        {"nginx_client_max_body_size": "64GB"},
        "nginx_client_max_body_size",
        "write it like 64g",
    ),
    ("port-range", {"nginx_https_port": 70000}, "nginx_https_port", "less than 65536"),
    ("server-name-space", {"nginx_server_names": ["gpu 7.lan"]}, "nginx_server_names", "like ollama1.lan"),
    ("server-name-inject", {"nginx_server_names": ["a.lan;"]}, "nginx_server_names", "neither a DNS name"),
    ("san-bad", {"tls_extra_sans": ["-bad-.lan"]}, "tls_extra_sans", "or 10.0.0.5"),
    # typos and wrong types
    ("typo-key", {"nginx_reed_timeout": 900}, "nginx_reed_timeout", "did you mean nginx_read_timeout?"),
    ("keys-in-inventory", {"auth_keys": [{"name": "x", "key": KEY}]}, "auth_keys", "unknown setting"),
    ("version-with-v", {"ollama_version": "v0.24.0"}, "ollama_version", "no leading v"),
    ("arch", {"ollama_arch": "x86_64"}, "ollama_arch", "'amd64' or 'arm64'"),
    ("mirror-without-url", {"ollama_source": "mirror"}, "ollama_mirror_url", "set it to the base URL"),
    # API keys
    ("key-not-found", {"auth_key_names": ["bob"]}, "auth_key_names", "set OLLAMA_FLEET_API_KEY_BOB"),
    ("key-name-chars", {"auth_key_names": ["bob smith"]}, "auth_key_names", "letters, digits"),
    ("no-keys", {"auth_key_names": []}, "auth_key_names", "OLLAMA_FLEET_API_KEY_<NAME>"),
    # models
    (
        "custom-unknown-base",
        {"models_custom": [{"name": "helper", "base": "llama3.2:1b"}]},
        "models_custom",
        "add it to one of them",
    ),
    (
        "custom-name-space",
        {"models_custom": [{"name": "my model", "base": "x"}]},
        "models_custom",
        "write it like",
    ),
    (
        "custom-system-quotes",
        {"models_custom": [{"name": "m", "base": "x", "system": 'a """ b'}]},
        "models_custom",
        "no way to escape",
    ),
    (
        "custom-parameter-name",
        {"models_custom": [{"name": "m", "base": "x", "parameters": {"stop\nSYSTEM": "y"}}]},
        "models_custom",
        "only letters, digits",
    ),
    (
        "custom-parameter-newline",
        {"models_custom": [{"name": "m", "base": "x", "parameters": {"stop": "a\nFROM b"}}]},
        "models_custom",
        "one line",
    ),
    ("env-newline", {"ollama_env": {"HTTPS_PROXY": "http://p:3128\nX=1"}}, "ollama_env", "control character"),
    ("env-nested", {"ollama_env": {"OLLAMA_KEEP_ALIVE": {"m": 5}}}, "ollama_env", "valid string"),
    (
        "gguf-missing",
        {"models_gguf": {"tiny": "/nonexistent/tiny.gguf"}},
        "models_gguf",
        "not found on the controller",
    ),
    (
        "insecure-registry-url",
        {"models_insecure_registries": ["http://10.0.0.5:8080"]},
        "models_insecure_registries",
        "no scheme, no path",
    ),
    # a certificate due for renewal the day it is issued
    (
        "cert-shorter-than-renewal",
        {"tls_cert_days": 30, "tls_renew_before_days": 30},
        "tls_cert_days",
        "lower tls_renew_before_days",
    ),
]


@pytest.mark.parametrize(
    ("data", "key", "fix"), [case[1:] for case in BAD_INPUTS], ids=[c[0] for c in BAD_INPUTS]
)
def test_bad_input_names_host_key_and_fix(tmp_path: Path, data: dict[str, Any], key: str, fix: str) -> None:
    with pytest.raises(SettingsError) as caught:
        settings(tmp_path, **data)
    message = str(caught.value)
    assert caught.value.host == HOST and f"host {HOST!r}" in message
    assert key in message, message
    assert fix in message, message


def test_bad_value_is_shown_next_to_its_key(tmp_path: Path) -> None:
    with pytest.raises(SettingsError) as caught:
        settings(tmp_path, nginx_read_timeout=60)
    assert "nginx_read_timeout: " in str(caught.value) and "(got 60)" in str(caught.value)


def test_every_problem_of_a_host_is_reported_at_once(tmp_path: Path) -> None:
    with pytest.raises(SettingsError) as caught:
        settings(tmp_path, nginx_read_timeout=60, ollama_version="latest", nginx_client_max_body_size="1TB")
    assert len(caught.value.problems) == 3


def test_short_or_unsafe_key_is_refused_without_showing_it(tmp_path: Path) -> None:
    for bad in ("short-key", 'sk-"quoted"-0123456789', "sk-with space-0123456789"):
        with pytest.raises(SettingsError) as caught:
            settings(tmp_path, environ={"OLLAMA_FLEET_API_KEY_ALICE": bad})
        assert "use 16+ of" in str(caught.value)
        assert bad not in str(caught.value)


def test_a_secrets_file_others_can_read_is_refused(tmp_path: Path) -> None:
    secrets = tmp_path / "secrets.json"
    secrets.write_text('{"api_keys": {"alice": "aLiCe-4f9d0e1b2c3a5968"}}')
    secrets.chmod(0o644)
    with pytest.raises(SettingsError, match=r"is readable by others \(mode 0644\).*chmod 600") as caught:
        settings(tmp_path, environ={}, auth_secrets_file=str(secrets))
    assert "aLiCe" not in str(caught.value)


def test_guessable_and_shared_keys_are_refused_without_showing_them(tmp_path: Path) -> None:
    for weak in ("aaaaaaaaaaaaaaaaaaaa", "abcdabcdabcdabcdabcd", "0101010101010101"):
        with pytest.raises(SettingsError, match="key 'alice' is guessable") as caught:
            settings(tmp_path, environ={"OLLAMA_FLEET_API_KEY_ALICE": weak})
        assert weak not in str(caught.value)
    same = "Shared-7d1e93b04c2fa865"
    environ = {"OLLAMA_FLEET_API_KEY_ALICE": same, "OLLAMA_FLEET_API_KEY_BOB": same}
    with pytest.raises(SettingsError, match="keys 'alice', 'bob' have the same value") as caught:
        settings(tmp_path, environ=environ, auth_key_names=["alice", "bob"])
    assert same not in str(caught.value)


def test_malformed_secrets_file_is_named(tmp_path: Path) -> None:
    secrets = tmp_path / "secrets.json"
    secrets.write_text('{"keys": []}')
    secrets.chmod(0o600)
    with pytest.raises(SettingsError, match=r"auth_secrets_file: .* is not JSON of the form"):
        settings(tmp_path, environ={}, auth_secrets_file=str(secrets))


# --- good inputs ---


def test_defaults_proxy_a_loopback_ollama(tmp_path: Path) -> None:
    s = settings(tmp_path)
    assert s.host == HOST and s.server_names == [HOST]
    assert s.ollama.environment() == {
        "OLLAMA_HOST": "127.0.0.1:11434",
        "OLLAMA_MODELS": "/usr/share/ollama/.ollama/models",
        "OLLAMA_NO_CLOUD": "1",  # nothing leaves the LAN unless ollama_cloud says so
    }
    assert "OLLAMA_NO_CLOUD" not in settings(tmp_path, ollama_cloud=True).ollama.environment()
    assert s.nginx.read_timeout >= 600 and s.nginx.send_timeout >= 600
    assert [k.name for k in s.auth.keys] == ["alice"]
    assert s.auth.keys[0].key.get_secret_value() == KEY
    assert KEY not in repr(s) and KEY not in str(s.model_dump())


def test_key_from_secrets_file_and_env_taking_precedence(tmp_path: Path) -> None:
    secrets = tmp_path / "secrets.json"
    secrets.write_text(
        json.dumps({"api_keys": {"alice": "file-key-0123456789", "ci-bot": "ci-key-0123456789abc"}})
    )
    secrets.chmod(0o600)
    s = settings(tmp_path, auth_key_names=["alice", "ci-bot"], auth_secrets_file=str(secrets))
    assert {k.name: k.key.get_secret_value() for k in s.auth.keys} == {
        "alice": KEY,
        "ci-bot": "ci-key-0123456789abc",
    }


@pytest.mark.parametrize(
    "data",
    [
        {"ollama_env": {"OLLAMA_KEEP_ALIVE": "-1", "OLLAMA_FLASH_ATTENTION": "true", "OLLAMA_NOPRUNE": "0"}},
        {"ollama_env": {"OLLAMA_KEEP_ALIVE": "1h30m", "OLLAMA_LOAD_TIMEOUT": "600"}},
        {
            "ollama_origins": [
                "https://app.example.com",
                "https://*.example.org",
                "chrome-extension://abc",
                "app://*",
            ]
        },
        {"firewall_enabled": False, "firewall_client_subnets": [], "firewall_admin_subnets": []},
        {"auth_enabled": False, "auth_key_names": []},
        {"nginx_enabled": False, "ollama_listen": "0.0.0.0:11434", "auth_key_names": []},
        {"ollama_listen": "[::1]:11500", "nginx_https_port": 8443, "nginx_http_port": 8080},
        {"nginx_server_names": ["gpu7.lan", "10.0.0.7", "fe80::1"], "tls_extra_sans": ["ollama.example.net"]},
        {"firewall_client_subnets": ["10.0.0.0/8", "fd00::/8"], "firewall_admin_subnets": ["10.9.0.1/32"]},
        {"ssh_user": "admin", "lab_slot": 0},  # keys of other prefixes are not ours to judge
    ],
)
def test_good_input_validates(tmp_path: Path, data: dict[str, Any]) -> None:
    s = settings(tmp_path, **data)
    for key, value in data.items():
        section, _, field = key.partition("_")
        if section in ("ollama", "nginx", "auth", "tls"):
            assert getattr(getattr(s, section), field) == value


def test_origins_and_extra_env_reach_the_dropin_environment_in_a_stable_order(tmp_path: Path) -> None:
    s = settings(
        tmp_path,
        ollama_origins=["https://a.lan", "https://*.b.lan"],
        ollama_env={"OLLAMA_NUM_PARALLEL": 2, "HTTPS_PROXY": "http://proxy.lan:3128"},
    )
    assert list(s.ollama.environment().items()) == [
        ("OLLAMA_HOST", "127.0.0.1:11434"),
        ("OLLAMA_MODELS", "/usr/share/ollama/.ollama/models"),
        ("OLLAMA_ORIGINS", "https://a.lan,https://*.b.lan"),
        ("OLLAMA_NO_CLOUD", "1"),
        ("HTTPS_PROXY", "http://proxy.lan:3128"),
        ("OLLAMA_NUM_PARALLEL", "2"),
    ]


def test_custom_model_from_a_listed_gguf(tmp_path: Path) -> None:
    gguf = tmp_path / "tiny.gguf"
    gguf.write_bytes(b"GGUF")
    s = settings(
        tmp_path,
        models_gguf={"tiny": str(gguf)},
        models_custom=[
            {"name": "vehicle-assistant", "base": "tiny", "system": "Be brief.", "parameters": {"x": 1}}
        ],
    )
    assert s.models.names() == ["tiny:latest", "vehicle-assistant:latest"]


@pytest.mark.parametrize(
    ("name", "listed"),
    [
        ("tiny", "tiny:latest"),
        ("llama3.2:1b", "llama3.2:1b"),
        ("library/llama3.2", "llama3.2:latest"),
        ("registry.ollama.ai/library/llama3.2:1b", "llama3.2:1b"),
        ("team/model", "team/model:latest"),
        ("10.213.22.1:8080/library/tiny", "10.213.22.1:8080/library/tiny:latest"),
        ("http://10.213.22.1:8080/library/tiny:v1", "10.213.22.1:8080/library/tiny:v1"),
    ],
)
def test_model_names_as_ollama_lists_them(name: str, listed: str) -> None:
    assert listed_name(name) == listed


def test_pulls_from_listed_insecure_registries_only(tmp_path: Path) -> None:
    s = settings(tmp_path, models_insecure_registries=["10.213.22.1:8080"])
    assert s.models.pulls_insecurely("10.213.22.1:8080/library/tiny:latest")
    assert s.models.pulls_insecurely("http://10.213.22.1:8080/library/tiny")
    assert not s.models.pulls_insecurely("10.213.22.1:9090/library/tiny")
    assert not s.models.pulls_insecurely("library/tiny")
    assert not s.models.pulls_insecurely("tiny")


def test_pinned_digests_are_checked_and_found_by_version_and_archive(tmp_path: Path) -> None:
    digest = "ab" * 32
    s = settings(tmp_path, ollama_sha256={"0.24.0/ollama-linux-amd64.tar.zst": digest})
    assert s.ollama.pinned_sha256 == digest
    assert settings(tmp_path, ollama_sha256={"0.24.0/ollama-linux-amd64.tgz": digest}).ollama.pins == {}
    assert settings(tmp_path, ollama_version="0.24.1").ollama.pinned_sha256 is None
    with pytest.raises(
        SettingsError, match=r"ollama_sha256: .*write it like '0.24.0/ollama-linux-amd64.tar.zst'"
    ):
        settings(tmp_path, ollama_sha256={"v0.24.0": digest})
    with pytest.raises(SettingsError, match=r"is not a sha256"):
        settings(tmp_path, ollama_sha256={"0.24.0/ollama-linux-amd64.tgz": "abc"})
