"""The deploy's plan and its guarantees, run through the real `pyinfra` CLI against pyinfra's @fake connector.

@fake hosts answer every command from canned responses and touch nothing, so these tests need no host
and send no traffic. The full site is only ever run with --dry (its last step checks hosts over HTTPS);
single operations are executed on fake hosts to see exactly which commands they would run.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest

from ollama_fleet.operations.secrets import FileDigest
from ollama_fleet.pki import FleetCA

pytestmark = pytest.mark.unit

REPO = Path(__file__).resolve().parents[2]
PYINFRA = str(Path(sys.executable).parent / "pyinfra")
KEY = "planTESTkey0123456789abcdefXYZ"
EXISTING_DIRS = [
    "/etc/systemd/system",
    "/etc/systemd/system/ollama.service.d",
    "/etc/ollama-fleet/tls",
    "/usr/local/bin",
    "/usr/local/lib/ollama-fleet",
]
DIR_STAT = (
    "user=root group=root mode=drwxr-xr-x atime=1700000000 mtime=1700000000 ctime=1700000000 size=4096 'd'"
)


OS_RELEASE_COMMAND = "ls -pdL *-release"
"""pyinfra's LinuxDistribution fact lists /etc/*-release with this."""


def os_release(**fields: str) -> list[str]:
    """What LinuxDistribution's command prints for a host whose /etc/os-release has `fields`."""
    return ["/etc/os-release", *(f'{key}="{value}"' for key, value in fields.items()), "---"]


DEBIAN_12 = os_release(PRETTY_NAME="Debian GNU/Linux 12 (bookworm)", ID="debian", VERSION_ID="12")


def fake_facts(os_release_lines: list[str] = DEBIAN_12, **extra: Any) -> dict[Any, Any]:
    """Canned answers of a bare Debian host; unmatched commands succeed with no output (nothing exists)."""
    dirs = "|".join(re.escape(d) for d in EXISTING_DIRS)
    return {
        **extra,
        OS_RELEASE_COMMAND: os_release_lines,
        "uname -s": "Linux",
        "command -v useradd": "/usr/sbin/useradd",
        re.compile(rf"^! \(test -e ({dirs}) "): DIR_STAT,
    }


def host_data(tmp_path: Path, index: int, **overrides: Any) -> dict[str, Any]:
    return {
        "fake_delay": 0,
        "fake_delay_jitter": 0,
        "fake_responses": fake_facts(),
        "ssh_hostname": f"10.213.250.{10 + index}",
        "nginx_server_names": [f"h{index}.fleet.lan"],
        "auth_key_names": ["team"],
        "firewall_client_subnets": ["10.213.250.0/24"],
        "firewall_admin_subnets": ["10.213.250.0/24"],
        "tls_ca_dir": str(tmp_path / "pki"),
        "ollama_source": "mirror",
        "ollama_mirror_url": "http://10.213.250.1:8080/ollama",
        "ollama_check_url": False,  # no traffic: nothing serves 10.213.250.1
        **overrides,
    }


def write_inventory(tmp_path: Path, hosts: dict[str, dict[str, Any]]) -> Path:
    inventory = tmp_path / "fleet.py"
    lines = ["import re", "", "hosts = ["]
    lines += [f"    ({f'@fake/{name}'!r}, {data!r})," for name, data in hosts.items()]
    inventory.write_text("\n".join([*lines, "]", ""]))
    return inventory


def pyinfra(*args: str) -> subprocess.CompletedProcess[str]:
    """The real CLI, from the repo root (so group_data/all.py applies), with the API key in the env."""
    env = {**os.environ, "OLLAMA_FLEET_API_KEY_TEAM": KEY, "PYINFRA_PROGRESS": "off"}
    return subprocess.run(
        [PYINFRA, *args], cwd=REPO, env=env, capture_output=True, text=True, timeout=300, check=False
    )


def fleet(tmp_path: Path, count: int = 2, **per_host: dict[str, Any]) -> Path:
    names = [f"h{i}" for i in range(1, count + 1)]
    return write_inventory(
        tmp_path, {n: host_data(tmp_path, i, **per_host.get(n, {})) for i, n in enumerate(names, 1)}
    )


def plan(tmp_path: Path, inventory: Path) -> list[dict[str, Any]]:
    result = pyinfra("--dry", "--json", str(inventory), "deploys/ollama.py")
    assert result.returncode == 0, result.stderr
    operations: list[dict[str, Any]] = json.loads(result.stdout)["plan"]
    return operations


def by_name(operations: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {op["name"].split(" | ")[-1]: op for op in operations}


# --- the site plan -------------------------------------------------------------------------------------


def test_bare_hosts_get_every_concern_in_dependency_order(tmp_path: Path) -> None:
    operations = plan(tmp_path, fleet(tmp_path))
    names = [op["name"] for op in operations]
    groups = [name.split(" | ")[0] for name in names if " | " in name]
    order = list(dict.fromkeys(groups))
    # (no models are listed by default, so the models deploy adds nothing here)
    assert order[:7] == [
        "ufw firewall",
        "Install Ollama",
        "Ollama service",
        "TLS certificate",
        "nginx proxy",
        "Per-request metrics (mtail)",
        "Ollama health timer",
    ]
    ops = by_name(operations)
    for name in (
        "Allow SSH from admin subnets and the API from client subnets (rules tagged ollama-fleet)",
        "Enable ufw",
        "Download, verify and unpack Ollama 0.24.0",
        "Switch /opt/ollama/current to 0.24.0",
        "Install /etc/systemd/system/ollama.service.d/override.conf",
        "Install /etc/ollama-fleet/tls/fullchain.pem and /etc/ollama-fleet/tls/privkey.pem (secret) together",
        "Install the ollama-fleet site after nginx -t on a staging copy",
    ):
        assert ops[name]["hosts_with_change"] == ["@fake/h1", "@fake/h2"], name
    # restarts and reloads only ever happen through `_if=`: conditional, never unconditional
    for name in ("Reload systemd units", "Restart ollama after a change", "Reload nginx after a change"):
        assert ops[name]["hosts_with_change"] == [], name
        assert ops[name]["hosts_with_conditional_change"] == ["@fake/h1", "@fake/h2"], name
    # the rules are added before ufw is enabled
    assert names.index(next(n for n in names if "Allow SSH" in n)) < names.index("ufw firewall | Enable ufw")


def test_models_plan_follows_settings(tmp_path: Path) -> None:
    gguf = tmp_path / "tiny.gguf"
    gguf.write_bytes(b"GGUF-not-really")
    models = {
        "models_gguf": {"tiny": str(gguf)},
        "models_pull": ["llama3.2:1b"],
        "models_custom": [{"name": "vehicle-assistant", "base": "tiny", "system": "Cars only."}],
        "models_prune": True,
    }
    ops = by_name(plan(tmp_path, fleet(tmp_path, count=1, h1=models)))
    for name in (
        "Create model tiny:latest from tiny.gguf",
        "Pull model llama3.2:1b",
        "Create model vehicle-assistant:latest from its Modelfile",
        "Remove unlisted models",
    ):
        assert name in ops


def test_disabling_nginx_and_firewall_leaves_them_out(tmp_path: Path) -> None:
    off = {"nginx_enabled": False, "firewall_enabled": False, "auth_enabled": False}
    groups = {op["name"].split(" | ")[0] for op in plan(tmp_path, fleet(tmp_path, count=1, h1=off))}
    assert not groups & {"ufw firewall", "TLS certificate", "nginx proxy"}
    assert {"Install Ollama", "Ollama service"} <= groups


# --- secrets never shown -------------------------------------------------------------------------------


def test_api_key_and_tls_key_never_reach_any_output(tmp_path: Path) -> None:
    inventory = fleet(tmp_path)
    outputs = {
        "--dry --diff -vvv": pyinfra("--dry", "--diff", "-vvv", str(inventory), "deploys/ollama.py"),
        "--dry --json": pyinfra("--dry", "--json", str(inventory), "deploys/ollama.py"),
        "--json --debug-operations": pyinfra(
            "--json", "--debug-operations", str(inventory), "deploys/ollama.py"
        ),
        "--dry --debug-facts": pyinfra("--dry", "--debug-facts", str(inventory), "deploys/ollama.py"),
    }
    private_key = (tmp_path / "pki" / "hosts" / quote("@fake/h1", safe="") / "privkey.pem").read_text()
    key_body = [line for line in private_key.splitlines() if line and not line.startswith("-----")]
    assert key_body, "the host key was issued on the controller"
    for label, result in outputs.items():
        assert result.returncode == 0, (label, result.stderr)
        text = result.stdout + result.stderr
        assert KEY not in text, label
        assert "PRIVATE KEY" not in text, label
        assert not any(line in text for line in key_body), label
    # --diff really was on: the unit's text is shown, the secrets are not
    diff = outputs["--dry --diff -vvv"].stderr + outputs["--dry --diff -vvv"].stdout
    assert "Will create" in diff and "ExecStart=/usr/local/bin/ollama serve" in diff


def provided_tls(tmp_path: Path, cert_pem: str, key_pem: str) -> dict[str, Any]:
    """Host data for tls_mode "provided" with these PEMs written on the controller."""
    (tmp_path / "cert.pem").write_text(cert_pem)
    (tmp_path / "key.pem").write_text(key_pem)
    return {
        "tls_mode": "provided",
        "tls_cert_file": str(tmp_path / "cert.pem"),
        "tls_key_file": str(tmp_path / "key.pem"),
    }


def test_provided_certificate_is_uploaded_without_showing_its_key(tmp_path: Path) -> None:
    cert_pem, key_pem = FleetCA.load_or_create(tmp_path / "their-ca").issue("h1.fleet.lan", ["h1.fleet.lan"])
    inventory = fleet(tmp_path, count=1, h1=provided_tls(tmp_path, cert_pem, key_pem))
    ops = by_name(plan(tmp_path, inventory))
    assert ops[
        "Install /etc/ollama-fleet/tls/fullchain.pem and /etc/ollama-fleet/tls/privkey.pem (secret) together"
    ]["hosts_with_change"] == ["@fake/h1"]
    assert "Install /etc/ollama-fleet/tls/ca.pem" not in ops  # no fleet CA in this mode
    assert not (tmp_path / "pki").exists()  # and none was created
    result = pyinfra("--dry", "--diff", "-vvv", str(inventory), "deploys/ollama.py")
    assert result.returncode == 0, result.stderr
    body = [line for line in key_pem.splitlines() if not line.startswith("-----")]
    assert not any(line in result.stdout + result.stderr for line in body)


# --- settings checked for every host before any operation ----------------------------------------------


@pytest.mark.parametrize(
    ("key", "value", "expected"),
    [
        ("ollama_env", {"OLLAMA_MAX_VRAM": "8G"}, "OLLAMA_MAX_VRAM"),
        ("firewall_client_subnets", ["10.0.0.0/33"], "10.0.0.0/33"),
        ("ollama_listen", "0.0.0.0:11434", "127.0.0.1:11434"),
        ("nginx_read_timeout", 60, "600"),
    ],
)
def test_bad_settings_on_the_last_host_change_no_host(
    tmp_path: Path, key: str, value: Any, expected: str
) -> None:
    inventory = fleet(tmp_path, count=3, h3={key: value})
    result = pyinfra("-y", "-vv", str(inventory), "deploys/ollama.py")
    assert result.returncode != 0
    message = result.stderr[result.stderr.index("settings are invalid") :]
    assert "nothing was changed on any host" in message
    assert "'@fake/h3'" in message and key in message and expected in message
    assert "@fake/h1" not in message and "@fake/h2" not in message
    # not one command (fact or change) ran on any host, and execution never began
    assert ">>>" not in result.stderr
    assert "Beginning operation run" not in result.stderr


def test_deploy_refuses_when_its_ssh_connection_is_outside_the_admin_subnets(tmp_path: Path) -> None:
    outsider = {"fake_responses": fake_facts(SSH_CLIENT="192.168.50.7 50000 22")}
    inventory = fleet(tmp_path, count=2, h2=outsider)
    result = pyinfra("-y", str(inventory), "deploys/ollama.py")
    assert result.returncode != 0
    assert "@fake/h2: this deploy connects from 192.168.50.7" in result.stderr
    assert "firewall_admin_subnets" in result.stderr
    assert "Beginning operation run" not in result.stderr


def test_deploy_refuses_when_its_ssh_connection_came_in_on_another_port(tmp_path: Path) -> None:
    on_2222 = {"fake_responses": fake_facts(SSH_CLIENT="10.213.250.1 50000 2222")}
    inventory = fleet(tmp_path, count=2, h2=on_2222)
    result = pyinfra("-y", str(inventory), "deploys/ollama.py")
    assert result.returncode != 0
    assert "@fake/h2: this deploy's SSH connection arrives on port 2222, but firewall_ssh_port is 22" in (
        result.stderr
    )
    assert "Set firewall_ssh_port = 2222" in result.stderr
    assert "Beginning operation run" not in result.stderr


# --- single operations executed on fake hosts ----------------------------------------------------------


def run_operation(tmp_path: Path, code: str, responses: dict[Any, Any]) -> list[str]:
    """Execute a tiny deploy on one fake host; the commands it ran (facts excluded)."""
    deploy = tmp_path / "deploy_op.py"
    deploy.write_text(code)
    inventory = write_inventory(
        tmp_path, {"op": {"fake_delay": 0, "fake_delay_jitter": 0, "fake_responses": fake_facts(**responses)}}
    )
    result = pyinfra("-y", "-vv", str(inventory), str(deploy))
    assert result.returncode == 0, result.stderr
    commands, fact_lines = [], ("Loaded fact",)
    lines = result.stderr.splitlines()
    for index, line in enumerate(lines):
        if ">>> " in line and not any(marker in lines[index + 1] for marker in fact_lines):
            commands.append(line.split(">>> ", 1)[1])
    return commands


UFW_RULES = """
from ollama_fleet.operations import ufw
ufw.tagged_rules_exactly(name="rules", rules=[ufw.Rule("10.0.0.0/24", 22), ufw.Rule("10.0.1.0/24", 443)])
"""
SHOW_ADDED = "Added user rules (see 'ufw status' for running firewall):"


def test_ufw_rules_add_missing_then_delete_stale_and_ignore_foreign(tmp_path: Path) -> None:
    added = [
        SHOW_ADDED,
        "ufw allow from 10.0.0.0/24 to any port 22 proto tcp comment 'ollama-fleet'",
        "ufw allow from 10.9.0.0/24 to any port 443 proto tcp comment 'ollama-fleet'",
        "ufw allow 8080/tcp",
    ]
    commands = run_operation(tmp_path, UFW_RULES, {"ufw show added": added})
    assert commands == [
        "ufw allow from 10.0.1.0/24 to any port 443 proto tcp comment ollama-fleet",
        "ufw delete allow from 10.9.0.0/24 to any port 443 proto tcp comment ollama-fleet",
    ]


def test_ufw_rules_in_place_run_nothing(tmp_path: Path) -> None:
    added = [
        SHOW_ADDED,
        "ufw allow from 10.0.1.0/24 to any port 443 proto tcp comment 'ollama-fleet'",
        "ufw allow from 10.0.0.0/24 to any port 22 proto tcp comment 'ollama-fleet'",
        "ufw allow 8080/tcp",
    ]
    assert run_operation(tmp_path, UFW_RULES, {"ufw show added": added}) == []


RELEASE = """
from pathlib import Path
from ollama_fleet.operations import release
release.release_installed(
    name="install", version="0.24.0", install_dir="/opt/ollama", staging_dir="/var/lib/ollama-fleet/staging",
    archive_name=["ollama-linux-amd64.tar.zst", "ollama-linux-amd64-rocm.tar.zst"],
    download_base=["http://10.213.250.2:11435/ollama-fleet/releases/v0.24.0", "http://10.213.250.1:8080/v0.24.0"],
)
release.current_release(name="switch", version="0.24.0", install_dir="/opt/ollama")
"""


def test_release_and_its_overlay_are_verified_before_they_are_unpacked_and_switched(tmp_path: Path) -> None:
    commands = run_operation(tmp_path, RELEASE, {})

    def step(*parts: str) -> int:
        return next(i for i, c in enumerate(commands) if all(part in c for part in parts))

    # The downloads run with their output shown (progress), which the fake connector does not echo: their
    # script is tested for real in test_release_page.py.
    steps = [
        step("rm -f /var/lib/ollama-fleet/staging/0.24.0/sha256sum.txt"),
        step("expected=", "ollama-linux-amd64.tar.zst"),
        step("expected=", "ollama-linux-amd64-rocm.tar.zst"),
        step("tar --zstd -x", "amd64.tar.zst -C /opt/ollama/.unpack-0.24.0 && tar --zstd", "rocm.tar.zst -C"),
        step("mv -T /opt/ollama/.current-new /opt/ollama/current"),
    ]
    assert steps == sorted(steps)


def test_installed_release_runs_nothing(tmp_path: Path) -> None:
    marker = f"{'a' * 64}  ollama-linux-amd64.tar.zst {'b' * 64}  ollama-linux-amd64-rocm.tar.zst"
    installed = {"readlink current": ["current 0.24.0", f"version 0.24.0 {marker}"]}
    assert run_operation(tmp_path, RELEASE, installed) == []


def test_a_release_without_its_overlay_is_unpacked_again(tmp_path: Path) -> None:
    """A card added: the serving version gets its overlay on the next deploy (a whole new copy)."""
    installed = {"readlink current": ["current 0.24.0", f"version 0.24.0 {'a' * 64}"]}
    commands = run_operation(tmp_path, RELEASE, installed)
    assert any("rocm.tar.zst -C /opt/ollama/.unpack-0.24.0" in c for c in commands)
    assert any("mv -T /opt/ollama/0.24.0 /opt/ollama/.replaced-0.24.0" in c for c in commands)


PRUNE = """
from ollama_fleet.operations import release
release.old_releases_removed(
    name="prune", install_dir="/opt/ollama", keep=2, current="0.24.1",
    store_dir="/var/lib/ollama-fleet/releases",
)
"""


def test_a_seed_prunes_the_archives_it_kept_with_their_release(tmp_path: Path) -> None:
    installed = [f"version {v} {'a' * 64}" for v in ("0.23.0", "0.24.0", "0.24.1")]
    commands = run_operation(tmp_path, PRUNE, {"readlink current": ["current 0.24.1", *installed]})
    assert commands == ["rm -rf /opt/ollama/0.23.0 /var/lib/ollama-fleet/releases/v0.23.0"]


SECRET = """
from ollama_fleet.operations.secrets import Secret, secret_file
secret_file(name="key", secret=Secret("fakeSECRETvalue0123456789"), dest="/etc/x/key.pem", mode=0o600)
"""


def test_secret_upload_shows_no_content_and_is_never_world_readable(tmp_path: Path) -> None:
    commands = run_operation(tmp_path, SECRET, {})
    assert not any("fakeSECRETvalue" in c for c in commands)
    temp = "/etc/x/.key.pem.ollama-fleet-new"
    assert commands[1] == f"rm -f {temp} && install -m 600 /dev/null {temp}"
    # under sudo, SFTP stages it in the login user's own 0700 directory, not /tmp/pyinfra-*
    assert commands[2] == (
        'rm -rf /run/ollama-fleet-uploads && install -d -m 700 -o "${SUDO_USER:-$(id -un)}" '
        "/run/ollama-fleet-uploads"
    )
    assert commands[3] == "rm -rf /run/ollama-fleet-uploads"  # right after the upload (not printed)
    assert commands[-1] == f"mv -f {temp} /etc/x/key.pem"


# --- day 2: the lock, the checks and the prune ----------------------------------------------------------


def test_the_lock_brackets_the_run_and_old_releases_go_only_after_the_client_check(tmp_path: Path) -> None:
    operations = plan(tmp_path, fleet(tmp_path))
    names = [op["name"].split(" | ")[-1] for op in operations]
    # first the GPU driver check (gpu_vendor), which changes nothing and fails a host before the lock
    # the deploy's record for Prometheus (host_state.DEPLOY_TEXTFILE) is written by the lock's commands
    assert names[:3] == [
        "Check the GPU driver (gpu_vendor)",
        "Take the deploy lock",
        "Install ufw",
    ]
    assert names[-4:] == [
        "Check the host like a client (ollama-fleet verify)",
        "Keep 2 Ollama versions",
        "Record the verified state for the next run",
        "Release the deploy lock",
    ]
    assert names.index("Restart ollama after a change") < names.index(
        "Check that Ollama 0.24.0 serves (else roll back)"
    )
    # the lock, the serving check and the client check read or bookkeep; in a plan they change nothing
    ops = by_name(operations)
    for name in (
        "Check the GPU driver (gpu_vendor)",
        "Take the deploy lock",
        "Check that Ollama 0.24.0 serves (else roll back)",
        "Check the host like a client (ollama-fleet verify)",
        "Release the deploy lock",
    ):
        assert ops[name]["hosts_with_change"] == [], name


def test_a_provided_key_of_another_certificate_stops_the_run_before_any_change(tmp_path: Path) -> None:
    ca = FleetCA.load_or_create(tmp_path / "their-ca")
    cert_pem, _ = ca.issue("h1.fleet.lan", ["h1.fleet.lan"])
    _, other_key = ca.issue("h2.fleet.lan", ["h2.fleet.lan"])
    inventory = fleet(tmp_path, count=1, h1=provided_tls(tmp_path, cert_pem, other_key))
    result = pyinfra("--dry", str(inventory), "deploys/ollama.py")
    assert result.returncode != 0
    assert "@fake/h1: TLS: tls_cert_file" in result.stderr
    assert "the key does not belong to the certificate (their public keys differ)" in result.stderr
    body = [line for line in other_key.splitlines() if not line.startswith("-----")]
    assert not any(line in result.stdout + result.stderr for line in body)


CERT_AND_KEY = """
from ollama_fleet.operations.secrets import Secret, certificate_and_key
certificate_and_key(
    name="pair", cert="CERT", key=Secret("fakeSECRETkey0123456789"),
    cert_path="/t/cert.pem", key_path="/t/key.pem",
)
"""


def test_certificate_and_key_go_live_in_one_command_after_both_are_staged(tmp_path: Path) -> None:
    commands = run_operation(tmp_path, CERT_AND_KEY, {})
    assert not any("fakeSECRETkey" in c for c in commands)
    assert (
        commands[-1]
        == "mv -f /t/.cert.pem.ollama-fleet-new /t/cert.pem && mv -f /t/.key.pem.ollama-fleet-new /t/key.pem"
    )
    assert "chmod 600 /t/.key.pem.ollama-fleet-new" in commands[-2]
    assert not any(c.startswith("mv ") for c in commands[:-1])


# --- the gateway ---------------------------------------------------------------------------------------


def gateway_fleet(tmp_path: Path, **per_host: dict[str, Any]) -> Path:
    inventory = fleet(tmp_path, **per_host)
    inventory.write_text(inventory.read_text() + 'gateway = ["@fake/h1"]\n')
    return inventory


def test_a_host_of_the_gateway_group_gets_the_gateway_planned_from_every_hosts_models(tmp_path: Path) -> None:
    inventory = gateway_fleet(tmp_path, h1={"models_pull": ["tiny"]}, h2={"models_pull": ["tiny", "big"]})
    result = pyinfra("--dry", "--json", str(inventory), "deploys/ollama.py")
    assert result.returncode == 0, result.stderr
    assert "[@fake/h1] gateway on port 8443: 2 host(s), 2 model(s), a pool each" in result.stderr
    assert "[@fake/h2] gateway" not in result.stderr
    site = next(op for op in json.loads(result.stdout)["plan"] if "ollama-fleet site" in op["name"])
    assert (
        "nginx proxy | Install the ollama-fleet site and gateway after nginx -t on a staging copy"
        in (site["names"])
    )


def test_a_gateway_over_a_host_of_another_ca_stops_the_run_before_any_change(tmp_path: Path) -> None:
    inventory = gateway_fleet(tmp_path, h2={"tls_ca_dir": str(tmp_path / "other-pki")})
    result = pyinfra("--dry", str(inventory), "deploys/ollama.py")
    assert result.returncode != 0
    assert "host '@fake/h2': the gateway '@fake/h1' checks its certificate against the fleet CA" in (
        result.stdout + result.stderr
    )


TEXT_FILE = """
from ollama_fleet.operations.textfile import text_file
text_file(name="unit", text="[Unit]\\n", dest="/etc/x/a.service", mode=0o644)
"""


def test_a_text_file_is_read_with_one_command_and_written_beside_its_path_then_renamed(
    tmp_path: Path,
) -> None:
    new = run_operation(tmp_path, TEXT_FILE, {})
    temp = "/etc/x/.a.service.ollama-fleet-new"
    assert new[0] == "mkdir -p /etc/x"
    assert new[-1] == f"chown root:root {temp} && chmod 644 {temp} && mv -f {temp} /etc/x/a.service"
    sha = hashlib.sha256(b"[Unit]\n").hexdigest()
    digest = FileDigest().command(path="/etc/x/a.service")
    assert run_operation(tmp_path, TEXT_FILE, {digest: f"644 root root\n{sha}  /etc/x/a.service"}) == []
    assert run_operation(tmp_path, TEXT_FILE, {digest: f"600 root root\n{sha}  /etc/x/a.service"}) == [
        "chown root:root /etc/x/a.service && chmod 644 /etc/x/a.service"
    ]


# --- GPU hosts -------------------------------------------------------------------------------------------


def recorded_detection(tree: str) -> str:
    """What the GPU detection script prints on a recorded tree (tests/unit/gpu_trees)."""
    from ollama_fleet.gpu import DETECT_SCRIPT

    root = Path(__file__).parent / "gpu_trees" / tree
    return subprocess.run(
        ["sh", "-c", DETECT_SCRIPT], env={"GPU_ROOT": str(root), "PATH": "/usr/bin:/bin"},
        capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip


def gpu_host(tmp_path: Path, tree: str, **data: Any) -> dict[str, Any]:
    responses = fake_facts(**{"/sys/bus/pci/devices/": recorded_detection(tree)})
    return {"fake_responses": responses, **data}


def test_an_amd_host_gets_the_gpu_drop_in_and_a_cpu_host_none(tmp_path: Path) -> None:
    operations = by_name(plan(tmp_path, fleet(tmp_path, h1=gpu_host(tmp_path, "amd"))))
    dropin = "Install /etc/systemd/system/ollama.service.d/gpu.conf (ollama.service's GPU drop-in)"
    assert operations[dropin]["hosts_with_change"] == ["@fake/h1"]
    # h2 has no GPU: the removal of a file it never had changes nothing
    removal = "Remove /etc/systemd/system/ollama.service.d/gpu.conf (no GPU for it)"
    assert operations[removal]["hosts_with_change"] == []
    assert "Install /etc/systemd/system/ollama-gpu-nodes.service (NVIDIA uvm and device nodes unit)" not in (
        operations
    )


@pytest.mark.parametrize(
    ("tree", "settings_overlays", "archives"),
    [
        ("amd", [], ["ollama-linux-amd64.tar.zst", "ollama-linux-amd64-rocm.tar.zst"]),
        ("amd", ["rocm"], ["ollama-linux-amd64.tar.zst", "ollama-linux-amd64-rocm.tar.zst"]),
        ("nvidia-535", [], ["ollama-linux-amd64.tar.zst"]),
        ("none", [], ["ollama-linux-amd64.tar.zst"]),
    ],
)
def test_a_host_whose_recorded_facts_say_amd_gets_the_rocm_overlay_in_its_release(
    tmp_path: Path, tree: str, settings_overlays: list[str], archives: list[str]
) -> None:
    from ollama_fleet import gpu
    from ollama_fleet.deploys.install import release_wanted
    from ollama_fleet.settings import settings_for_host

    report = gpu.parse_report(recorded_detection(tree).splitlines())
    setup = gpu.gpu_setup("auto", report, "amd64")
    data = {**host_data(tmp_path, 1), "ollama_overlays": settings_overlays}
    s = settings_for_host("h1", data, {"OLLAMA_FLEET_API_KEY_TEAM": KEY})
    assert release_wanted(s, setup["overlays"]).archive_names == archives


def test_an_nvidia_host_gets_the_uvm_unit_and_modules_load(tmp_path: Path) -> None:
    operations = by_name(plan(tmp_path, fleet(tmp_path, count=1, h1=gpu_host(tmp_path, "nvidia-535"))))
    for name in (
        "Install /etc/systemd/system/ollama-gpu-nodes.service (NVIDIA uvm and device nodes unit)",
        "Install /etc/modules-load.d/ollama-fleet-nvidia.conf (NVIDIA modules loaded at boot)",
        "Install /etc/systemd/system/ollama.service.d/gpu.conf (ollama.service's GPU drop-in)",
    ):
        assert operations[name]["hosts_with_change"] == ["@fake/h1"], name


def test_a_host_declared_nvidia_without_the_driver_fails_in_the_first_operation(tmp_path: Path) -> None:
    """Only h1 (gpu_vendor nvidia, nouveau bound) has a command in the check, which comes before the lock;
    the e2e tier (test_gpu_lab) runs it and sees the host fail unchanged."""
    inventory = fleet(
        tmp_path, h1=gpu_host(tmp_path, "nvidia-nouveau", gpu_vendor="nvidia"), h2=gpu_host(tmp_path, "none")
    )
    operations = plan(tmp_path, inventory)
    first = operations[0]
    assert first["name"] == "Check the GPU driver (gpu_vendor)"
    assert first["hosts_with_change"] == ["@fake/h1"]
    # under auto the same host deploys as a CPU host: the check has nothing to run
    auto = plan(tmp_path, fleet(tmp_path, h1=gpu_host(tmp_path, "nvidia-nouveau")))
    assert auto[0]["name"] == "Check the GPU driver (gpu_vendor)" and auto[0]["hosts_with_change"] == []


# --- the host's operating system -----------------------------------------------------------------------

DEBIAN_13 = os_release(PRETTY_NAME="Debian GNU/Linux 13 (trixie)", ID="debian", VERSION_ID="13")
UBUNTU_2204 = os_release(PRETTY_NAME="Ubuntu 22.04.5 LTS", ID="ubuntu", VERSION_ID="22.04")
UBUNTU_2404 = os_release(PRETTY_NAME="Ubuntu 24.04.3 LTS", ID="ubuntu", VERSION_ID="24.04")


def on_os(lines: list[str], **extra: Any) -> dict[str, Any]:
    return {"fake_responses": fake_facts(os_release_lines=lines, **extra)}


@pytest.mark.parametrize(
    ("lines", "named"),
    [
        (os_release(PRETTY_NAME="Red Hat Enterprise Linux 9.4 (Plow)", ID="rhel", VERSION_ID="9.4"),
         "Red Hat Enterprise Linux 9.4 (Plow)"),
        (os_release(PRETTY_NAME="Alpine Linux v3.20", ID="alpine", VERSION_ID="3.20.3"),
         "Alpine Linux v3.20"),
        (os_release(PRETTY_NAME="Debian GNU/Linux 11 (bullseye)", ID="debian", VERSION_ID="11"),
         "Debian GNU/Linux 11 (bullseye)"),
    ],
)  # fmt: skip
def test_a_host_on_an_unsupported_os_stops_the_run_before_any_change(
    tmp_path: Path, lines: list[str], named: str
) -> None:
    inventory = fleet(tmp_path, count=3, h3=on_os(lines))
    result = pyinfra("-y", str(inventory), "deploys/ollama.py")
    assert result.returncode != 0
    assert f"@fake/h3: {named} is not supported; supported: Debian 12 or 13 (tested)" in result.stderr
    assert "Ubuntu 24.04" in result.stderr
    assert "@fake/h1:" not in result.stderr and "@fake/h2:" not in result.stderr
    assert "Beginning operation run" not in result.stderr


def test_debian_13_and_ubuntu_24_04_hosts_get_the_same_plan_as_debian_12(tmp_path: Path) -> None:
    inventory = fleet(tmp_path, count=3, h2=on_os(DEBIAN_13), h3=on_os(UBUNTU_2404))
    operations = plan(tmp_path, inventory)
    nginx = by_name(operations)["Install nginx and libnginx-mod-http-js"]
    assert nginx["hosts_with_change"] == ["@fake/h1", "@fake/h2", "@fake/h3"]


def test_ubuntu_22_04_refuses_what_needs_njs_before_any_change(tmp_path: Path) -> None:
    inventory = fleet(tmp_path, count=2, h2=on_os(UBUNTU_2204))
    result = pyinfra("-y", str(inventory), "deploys/ollama.py")
    assert result.returncode != 0
    assert "@fake/h2: Ubuntu 22.04.5 LTS has no libnginx-mod-http-js (njs) package" in result.stderr
    assert "refusing cloud models (ollama_cloud false)" in result.stderr  # the defaults need njs
    assert "per-request metrics (metrics_enabled)" in result.stderr
    assert "Beginning operation run" not in result.stderr


def test_ubuntu_22_04_deploys_without_njs_features_or_with_njs_installed_by_hand(tmp_path: Path) -> None:
    without_njs = {**on_os(UBUNTU_2204), "ollama_cloud": True, "metrics_enabled": False}
    njs_by_hand = on_os(UBUNTU_2204, **{"dpkg -l": ["ii  libnginx-mod-http-js  0.8.9-1  amd64  njs"]})
    operations = plan(tmp_path, fleet(tmp_path, count=2, h1=without_njs, h2=njs_by_hand))
    njs_module = by_name(operations)["Install /usr/share/ollama-fleet/nginx-model-allow-list.js"]
    assert njs_module["hosts_with_change"] == ["@fake/h2"]
