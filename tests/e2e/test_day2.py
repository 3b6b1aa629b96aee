"""Day 2 on the lab: changing a serving fleet safely.

- a no-change re-run reports 0 changed operations on every host, its client check included;
- a release that cannot start (a valid checksum, a binary that exits 1) rolls back by itself;
- a deploy cut off right after the release switch, or right after new keys went live, is finished by the
  next run: it restarts Ollama (the new version serves) and reloads nginx (the removed key gets 401);
- a second deploy is refused while another holds a host's deploy lock, and a dead holder's lock is taken.

Upgrades use a second release built from the same source and labelled 0.24.1 (a link step, seconds).
"""

from __future__ import annotations

import json
import os
import secrets
import signal
import ssl
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from verify_fleet import API_KEYS, SITE, DeployedFleet, deploy_fleet, statuses

from ollama_fleet.lab.artifacts import ensure_relabelled_release, publish_release, unpublish_release
from ollama_fleet.lab.paths import repo_root
from ollama_fleet.lab.state import LabState

pytestmark = pytest.mark.e2e

PYINFRA = str(Path(sys.executable).parent / "pyinfra")
BASE, UPGRADE = "0.24.0", "0.24.1"
LOCK = "/run/ollama-fleet/deploy.lock"
FAST_RERUN = "Host as its last verified deploy left it (found while planning)"


@pytest.fixture(scope="module")
def fleet(lab: LabState) -> DeployedFleet:
    return deploy_fleet(lab)


@pytest.fixture(scope="module")
def upgrade() -> Path:
    return ensure_relabelled_release(UPGRADE, base=BASE)


def from_controller(release: Path, version: str) -> list[str]:
    return [
        "--data", "ollama_source=controller",
        "--data", f"ollama_controller_dir={release}",
        "--data", f"ollama_version={version}",
    ]  # fmt: skip


def api_version(fleet: DeployedFleet, host: str) -> str:
    body = fleet.ssh_ok(host, "curl -fsS --max-time 5 http://127.0.0.1:11434/api/version")
    return str(json.loads(body)["version"])


def changed_operations(stdout: str) -> dict[str, list[str]]:
    """Operation name -> hosts it changed, from `pyinfra --json` (every operation, checks included)."""
    operations = json.loads(stdout)["results"]["operations"]
    return {op["name"]: op["success"] for op in operations if op["success"]}


HOLD_DIR = "/var/lib/ollama-fleet-test"  # on the host's disk: the controller writes it through the overlay
HOLD_WRAPPER = f"""#!/bin/sh
# ollama-fleet e2e (sshd ForceCommand): once the host is in the state {HOLD_DIR}/cut-off tests, every new
# command is held, never run; the test then kills the deploy that sent it.
if [ -s {HOLD_DIR}/cut-off ] && sh {HOLD_DIR}/cut-off; then
    touch {HOLD_DIR}/held
    while [ -e {HOLD_DIR}/cut-off ]; do sleep 0.2; done
    exit 111
fi
exec /bin/sh -c "$SSH_ORIGINAL_COMMAND"
"""


def deploy_cut_off_when(fleet: DeployedFleet, host: str, state: str, *args: str) -> str:
    """Run the deploy and cut it off on `host` as soon as the host is in `state` (a shell test, run there):
    from then on the host's sshd holds every new command, so nothing the deploy would do next runs; once
    a command is held, pyinfra is killed. Waiting on that state, not on pyinfra's output, makes the cut
    land at the same place however fast the run goes."""
    root = Path(fleet.lab.host(host).root)
    hold = root / HOLD_DIR.lstrip("/")
    hold.mkdir(parents=True, exist_ok=True)
    (hold / "wrapper").write_text(HOLD_WRAPPER)
    (hold / "wrapper").chmod(0o755)
    sshd_conf = root / "etc/ssh/sshd_config.d/zz-ollama-fleet-test-hold.conf"
    sshd_conf.write_text(f"ForceCommand {HOLD_DIR}/wrapper\n")
    fleet.ssh_ok(host, "systemctl reload ssh")
    (hold / "cut-off").write_text(state + "\n")
    argv = [PYINFRA, "-y", fleet.lab.inventory_path, "deploys/ollama.py", *args]
    env = {**os.environ, "PYINFRA_PROGRESS": "off"}
    with tempfile.TemporaryFile("w+") as out:
        proc = subprocess.Popen(
            argv, cwd=repo_root(), env=env, stdout=out, stderr=subprocess.STDOUT, text=True
        )
        try:
            deadline = time.monotonic() + 600
            while not (hold / "held").exists() and proc.poll() is None:
                assert time.monotonic() < deadline, "the deploy never reached the state to cut it off at"
                time.sleep(0.1)
            held = (hold / "held").exists()
            proc.send_signal(signal.SIGKILL)
            proc.wait(timeout=60)
        finally:
            (hold / "cut-off").unlink(missing_ok=True)  # the held commands exit without running
            sshd_conf.unlink(missing_ok=True)
            (hold / "held").unlink(missing_ok=True)
        out.seek(0)
        output = out.read()
    fleet.ssh_ok(host, "systemctl reload ssh")
    assert held and proc.returncode == -signal.SIGKILL, output[-3000:]
    return output


def fast_rerun_hosts(stdout: str) -> list[str]:
    """The hosts that took the fast re-run (as their last verified deploy left them)."""
    operations = json.loads(stdout)["results"]["operations"]
    return sorted(h for op in operations if op["name"] == FAST_RERUN for h in op["no_change"])


def test_a_no_change_rerun_changes_nothing_its_check_included(fleet: DeployedFleet) -> None:
    fleet.deploy()  # records each host as verified, whatever ran before on this lab
    done = fleet.deploy("--json")
    assert done.returncode == 0, done.stderr[-3000:]
    assert changed_operations(done.stdout) == {}
    assert fast_rerun_hosts(done.stdout) == sorted(fleet.hosts)  # one state read, not forty operations
    assert "quick client check (0 operation(s) changed this host)" in done.stderr
    for host in fleet.hosts:
        assert fleet.ssh(host, f"test -e {LOCK}").returncode == 1, f"{host}: the lock was not released"


def test_an_unreachable_host_fails_alone_and_the_others_take_the_fast_rerun(
    fleet: DeployedFleet, lab: LabState
) -> None:
    """A host at an address of the lab's bridge where nothing answers (.200: the lab's hosts start at .11)
    fails to connect, named with its address, without holding the run: every other host still takes the
    fast re-run, since its digest holds only the hosts its own deploy reads."""
    fleet.deploy()  # every host recorded as verified
    gone = f"{lab.plan.hosts_prefix}.200"
    inventory = Path(lab.inventory_path).with_name(Path(lab.inventory_path).stem + "_unreachable.py")
    extra = f'\nunreachable = [("lab-gone", {{"ssh_hostname": "{gone}", **_ssh, **_lab}})]\n'
    inventory.write_text(Path(lab.inventory_path).read_text() + extra)
    try:
        done = fleet.run([PYINFRA, "-y", str(inventory), "deploys/ollama.py", "--json"], timeout=300)
    finally:
        inventory.unlink()
    assert done.returncode != 0, done.stderr[-3000:]
    assert "[lab-gone] Could not connect" in done.stderr and gone in done.stderr, done.stderr[-3000:]
    assert fast_rerun_hosts(done.stdout) == sorted(fleet.hosts)
    assert changed_operations(done.stdout) == {}


def test_a_host_changed_by_hand_gets_the_whole_deploy_and_the_others_the_fast_rerun(
    fleet: DeployedFleet,
) -> None:
    edited, dropin = fleet.hosts[1], "/etc/systemd/system/ollama.service.d/override.conf"
    fleet.ssh_ok(edited, f"echo '# edited by hand' >> {dropin}")
    done = fleet.deploy("--json")
    assert done.returncode == 0, done.stderr[-3000:]
    changed = changed_operations(done.stdout)
    assert changed[f"Ollama service | Install {dropin}"] == [edited]
    assert changed["Ollama service | Restart ollama after a change"] == [edited]
    assert all(hosts == [edited] for hosts in changed.values()), changed
    assert fast_rerun_hosts(done.stdout) == sorted(h for h in fleet.hosts if h != edited)
    assert "edited by hand" not in fleet.ssh_ok(edited, f"cat {dropin}")
    again = fleet.deploy("--json")
    assert changed_operations(again.stdout) == {} and fast_rerun_hosts(again.stdout) == sorted(fleet.hosts)


def test_verify_quick_leaves_out_generation_and_firewall_probes(fleet: DeployedFleet) -> None:
    code, report = fleet.verify("--quick")
    assert code == 0, report
    for checks in statuses(report).values():
        assert set(checks) == {"tls", "root", "auth", "scopes", "version", "models", "cors"}


def test_a_release_that_cannot_start_rolls_back_by_itself(fleet: DeployedFleet, tmp_path: Path) -> None:
    broken = tmp_path / "broken"
    (broken / "bin").mkdir(parents=True)
    (broken / "lib" / "ollama").mkdir(parents=True)
    (broken / "bin" / "ollama").write_text("#!/bin/sh\necho 'this release cannot start' >&2\nexit 1\n")
    (broken / "bin" / "ollama").chmod(0o755)
    release = tmp_path / "release"
    release.mkdir()
    archive = release / "ollama-linux-amd64.tar.zst"
    subprocess.run(["tar", "--zstd", "-cf", str(archive), "-C", str(broken), "bin", "lib"], check=True)
    subprocess.run(f"sha256sum {archive.name} > sha256sum.txt", shell=True, cwd=release, check=True)
    canary = fleet.hosts[0]

    done = fleet.deploy("--limit", canary, *from_controller(release, "0.24.9"))

    output = done.stdout + done.stderr
    assert done.returncode != 0
    assert "Ollama 0.24.9 did not come up: ollama.service crashed" in output, output[-3000:]
    assert f"rolled back to {BASE}, which serves again" in output
    assert fleet.ssh_ok(canary, "readlink /opt/ollama/current").strip() == BASE
    assert api_version(fleet, canary) == BASE
    fleet.ssh_ok(canary, "rm -rf /opt/ollama/0.24.9")
    code, report = fleet.verify()
    assert code == 0, report


@pytest.fixture
def upgraded_host(fleet: DeployedFleet, upgrade: Path) -> Iterator[str]:
    host = fleet.hosts[1]
    yield host
    back = fleet.deploy("--limit", host)  # the inventory's own version again
    assert back.returncode == 0, back.stdout[-3000:] + back.stderr[-3000:]
    assert api_version(fleet, host) == BASE
    fleet.ssh_ok(host, f"rm -rf /opt/ollama/{UPGRADE}")


def test_a_deploy_killed_after_the_switch_is_finished_by_the_next_run(
    fleet: DeployedFleet, upgrade: Path, upgraded_host: str
) -> None:
    host = upgraded_host
    switched = f'[ "$(readlink /opt/ollama/current)" = {UPGRADE} ]'
    deploy_cut_off_when(fleet, host, switched, "--limit", host, *from_controller(upgrade, UPGRADE))
    assert fleet.ssh_ok(host, "readlink /opt/ollama/current").strip() == UPGRADE
    assert api_version(fleet, host) == BASE  # switched, never restarted

    done = fleet.deploy("--limit", host, *from_controller(upgrade, UPGRADE))

    output = done.stdout + done.stderr
    assert done.returncode == 0, output[-3000:]
    assert f"ollama must restart: it runs /opt/ollama/{BASE}/bin/ollama" in output
    assert "taking over the stale deploy lock" in output  # the killed run's lock
    assert api_version(fleet, host) == UPGRADE


@pytest.fixture
def rotated_key(fleet: DeployedFleet) -> Iterator[tuple[str, str]]:
    """The lab's "ci" key replaced by a new value; the old one listed as revoked. Restored afterwards."""
    secrets_file = Path(fleet.lab.key_path).parent / "secrets.json"
    saved = secrets_file.read_text()
    data = json.loads(saved)
    old, new = data["api_keys"]["ci"], "rotated-" + secrets.token_urlsafe(24)
    data["api_keys"]["ci"] = new
    data["revoked_api_keys"] = [old]
    secrets_file.write_text(json.dumps(data))  # the file keeps its mode
    try:
        yield old, new
    finally:
        secrets_file.write_text(saved)
        restored = fleet.deploy()
        assert restored.returncode == 0, restored.stdout[-3000:] + restored.stderr[-3000:]


def test_a_rotated_key_with_an_interrupted_reload_is_refused_after_the_next_run(
    fleet: DeployedFleet, rotated_key: tuple[str, str]
) -> None:
    old, new = rotated_key
    host = fleet.hosts[2]
    fleet.ssh_ok(host, f"mkdir -p {HOLD_DIR} && cp {API_KEYS} {HOLD_DIR}/keys.before")
    # The new keys file is live and the site's operation is done (its staging copy removed): cut there.
    live = f"! cmp -s {API_KEYS} {HOLD_DIR}/keys.before && [ ! -e /var/lib/ollama-fleet/nginx ]"
    deploy_cut_off_when(fleet, host, live, "--limit", host)

    def answers(key: str) -> int:
        trust = ssl.create_default_context(cafile=str(fleet.ca_file))
        url = f"https://{fleet.address(host)}/v1/models"
        return httpx.get(url, headers={"Authorization": f"Bearer {key}"}, verify=trust).status_code

    assert (answers(old), answers(new)) == (200, 401)  # the new keys file is live but not loaded
    code, report = fleet.verify("--quick", "--hosts", host)
    assert code == 1 and statuses(report)[host]["auth"] == "fail"  # verify sees the revoked key work

    done = fleet.deploy("--limit", host)

    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "nginx must reload: its workers started before" in done.stderr
    assert (answers(old), answers(new)) == (401, 200)
    code, report = fleet.verify("--hosts", host)
    assert code == 0, report


def test_a_second_deploy_waits_for_the_holder_of_the_lock(fleet: DeployedFleet) -> None:
    host = fleet.hosts[0]
    holder = subprocess.Popen(["sleep", "600"])  # stands in for a deploy running on this controller
    try:
        who = f"{os.uname().nodename} pid={holder.pid} user=ops since=now run=other"
        fleet.ssh_ok(host, f"mkdir -p {LOCK} && printf '%s\\n' '{who}' > {LOCK}/holder")
        done = fleet.deploy("--limit", host, "--data", "nginx_read_timeout=1234")
        output = done.stdout + done.stderr
        assert done.returncode != 0
        assert f"another deploy holds the deploy lock {LOCK} (held by {who}, last heartbeat " in output
        assert "1234s" not in fleet.ssh_ok(host, f"cat {SITE}")  # refused before any change
    finally:
        holder.kill()
        holder.wait()
    done = fleet.deploy("--limit", host)  # the holder is gone: its lock is stale
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert f"its deploy (pid {holder.pid} on this controller) no longer runs" in done.stderr
    assert fleet.ssh(host, f"test -e {LOCK}").returncode == 1


# --- ollama-fleet rollout / rollback -------------------------------------------------------------------


def rollout(
    fleet: DeployedFleet, *args: str, inventory: str | None = None
) -> tuple[int, dict[str, Any], str]:
    argv = [sys.executable, "-m", "ollama_fleet.cli", "rollout", inventory or fleet.lab.inventory_path]
    done = fleet.run([*argv, "--canary", "lab_canary", "--json", *args], timeout=1800)
    assert done.returncode in (0, 1), done.stderr[-3000:]
    return done.returncode, json.loads(done.stdout), done.stderr


def outcomes(report: dict[str, Any]) -> dict[str, tuple[str, str, str]]:
    """host -> (result, version before, version after)."""
    return {h["host"]: (h["result"], h["version_before"], h["version_after"]) for h in report["hosts"]}


def pinned(tmp_path: Path, version: str) -> str:
    group_data = tmp_path / f"pin-{version}"
    group_data.mkdir()
    (group_data / "all.py").write_text(f'ollama_version = "{version}"\n')
    return str(group_data)


@pytest.fixture
def broken_release(tmp_path: Path) -> Iterator[str]:
    """A release 0.24.9 on the lab mirror whose binary exits 1 (its checksum is valid)."""
    release = tmp_path / "broken-release"
    release.mkdir()
    tree = tmp_path / "tree"
    (tree / "bin").mkdir(parents=True)
    (tree / "lib" / "ollama").mkdir(parents=True)
    (tree / "bin" / "ollama").write_text("#!/bin/sh\nexit 1\n")
    (tree / "bin" / "ollama").chmod(0o755)
    subprocess.run(
        ["tar", "--zstd", "-cf", str(release / "ollama-linux-amd64.tar.zst"), "-C", str(tree), "bin", "lib"],
        check=True,
    )
    subprocess.run(
        "sha256sum ollama-linux-amd64.tar.zst > sha256sum.txt", shell=True, cwd=release, check=True
    )
    release.chmod(0o755)
    tmp_path.chmod(0o755)
    publish_release(release, "0.24.9")
    yield "0.24.9"
    unpublish_release("0.24.9")


@pytest.fixture
def fleet_back_on_base(fleet: DeployedFleet, upgrade: Path) -> Iterator[None]:
    yield
    done = fleet.deploy()
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    for host in fleet.hosts:
        fleet.ssh_ok(host, f"rm -rf /opt/ollama/{UPGRADE} /opt/ollama/0.24.9")


def test_a_rollout_of_a_release_that_cannot_start_halts_at_the_canary_then_resumes_with_a_good_one(
    fleet: DeployedFleet, upgrade: Path, broken_release: str, fleet_back_on_base: None, tmp_path: Path
) -> None:
    state = str(tmp_path / "rollout.json")
    canary, *rest = fleet.hosts

    code, report, log = rollout(
        fleet, "--batch", "1", "--state", state, "--group-data", pinned(tmp_path, broken_release)
    )

    assert code == 1
    assert report["status"] == "halted" and report["halt_reason"] == f"batch 1 failed on {canary}"
    result = outcomes(report)
    assert result[canary] == ("failed", BASE, BASE)
    canary_reason = next(h["reason"] for h in report["hosts"] if h["host"] == canary)
    assert (
        f"Ollama {broken_release} did not come up" in canary_reason
        and f"rolled back to {BASE}" in canary_reason
    )
    assert all(result[host][0] == "untouched" for host in rest)
    for host in rest:
        assert broken_release not in fleet.ssh_ok(host, "ls /opt/ollama")  # never changed
    code_verify, verified = fleet.verify()
    assert code_verify == 0, verified  # the whole fleet serves

    # the operator pins a good release and resumes: the halted batch is retried, then the rest
    code, report, log = rollout(
        fleet, "--resume", "--batch", "1", "--state", state, "--group-data", pinned(tmp_path, UPGRADE)
    )

    assert code == 0, log[-3000:]
    assert report["status"] == "done"
    assert outcomes(report) == {host: ("ok", BASE, UPGRADE) for host in fleet.hosts}
    assert "batch 3/3" in log and "batch 1/3" in log


def test_an_unreachable_host_halts_the_rollout_naming_it(fleet: DeployedFleet, tmp_path: Path) -> None:
    down = fleet.hosts[1]
    inventory = tmp_path / "fleet.py"
    inventory.write_text(
        Path(fleet.lab.inventory_path).read_text()
        + f"\nlab_rest = [(n, {{**d, 'ssh_port': 1}}) if n == {down!r} else (n, d) for n, d in lab_rest]\n"
        + "lab_hosts = lab_canary + lab_rest\n"
    )

    code, report, _ = rollout(fleet, "--state", str(tmp_path / "state.json"), inventory=str(inventory))

    assert code == 1
    assert report["halt_reason"].startswith(f"{down} is unreachable: SSH {fleet.address(down)}:1")
    assert outcomes(report)[fleet.hosts[0]][0] == "ok"
    assert outcomes(report)[down][0] == "untouched" and outcomes(report)[fleet.hosts[2]][0] == "untouched"


def test_rollback_goes_back_one_release_and_refuses_when_there_is_none(
    fleet: DeployedFleet, upgrade: Path, fleet_back_on_base: None, tmp_path: Path
) -> None:
    host = fleet.hosts[2]
    up = fleet.run(
        [
            PYINFRA,
            "-y",
            "--group-data",
            pinned(tmp_path, UPGRADE),
            "--limit",
            host,
            fleet.lab.inventory_path,
            "deploys/ollama.py",
        ],
        timeout=900,
    )
    assert up.returncode == 0, up.stderr[-3000:]
    assert api_version(fleet, host) == UPGRADE

    argv = [sys.executable, "-m", "ollama_fleet.cli", "rollback", fleet.lab.inventory_path, "--hosts", host]
    back = fleet.run(argv)
    assert back.returncode == 0, back.stderr[-3000:]
    assert f"{host}: rolled back ({UPGRADE} -> {BASE})" in back.stdout
    assert api_version(fleet, host) == BASE

    again = fleet.run(argv)
    assert again.returncode == 1
    assert f"no release older than {BASE} is installed" in again.stdout
    assert api_version(fleet, host) == BASE
