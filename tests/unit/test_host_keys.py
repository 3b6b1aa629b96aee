"""`ollama-fleet hosts forget`: which known_hosts file and entries a host's key is pinned under, and their
removal with the real ssh-keygen (plain and hashed entries), leaving every other host's key in place."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from ollama_fleet.host_keys import forget, pinned, report

pytestmark = pytest.mark.unit

REPO = Path(__file__).resolve().parents[2]


def host_key_line(tmp_path: Path, names: str, label: str) -> str:
    key = tmp_path / f"key-{label}"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)], check=True)
    kind, body = (key.with_suffix(".pub")).read_text().split()[:2]
    return f"{names} {kind} {body}\n"


def test_a_host_is_pinned_by_name_and_address_in_the_inventory_file() -> None:
    pin = pinned("gpu-1", {"ssh_hostname": "10.0.0.5", "ssh_known_hosts_file": "/srv/fleet/known_hosts"})
    assert pin.known_hosts == Path("/srv/fleet/known_hosts")
    assert pin.entries == ("gpu-1", "10.0.0.5")
    assert pin.strict == "accept-new"  # pyinfra's default


def test_defaults_and_ports() -> None:
    pin = pinned("gpu-1", {"ssh_port": 2222})
    assert pin.known_hosts == Path("~/.ssh/known_hosts").expanduser()
    assert pin.entries == ("[gpu-1]:2222",)
    assert pinned("lab-1", {"ssh_known_hosts_file": "/dev/null"}).known_hosts is None


def test_forget_removes_only_that_hosts_entries(tmp_path: Path) -> None:
    known_hosts = tmp_path / "known_hosts"
    old = host_key_line(tmp_path, "10.0.0.5", "old")
    other = host_key_line(tmp_path, "10.0.0.6", "other")
    by_name = host_key_line(tmp_path, "gpu-1", "name")
    known_hosts.write_text(old + other + by_name)
    pin = pinned("gpu-1", {"ssh_hostname": "10.0.0.5", "ssh_known_hosts_file": str(known_hosts)})
    assert forget(pin) == ["gpu-1", "10.0.0.5"]
    assert known_hosts.read_text() == other
    assert not known_hosts.with_name("known_hosts.old").exists()  # it would still hold the old key
    assert forget(pin) == []
    assert "holds no key for gpu-1, 10.0.0.5; nothing to forget" in report(pin, [])


def test_forget_finds_hashed_entries(tmp_path: Path) -> None:
    known_hosts = tmp_path / "known_hosts"
    known_hosts.write_text(host_key_line(tmp_path, "10.0.0.5", "old") + host_key_line(tmp_path, "x", "x"))
    subprocess.run(["ssh-keygen", "-H", "-f", str(known_hosts)], check=True, capture_output=True)
    pin = pinned("gpu-1", {"ssh_hostname": "10.0.0.5", "ssh_known_hosts_file": str(known_hosts)})
    assert forget(pin) == ["10.0.0.5"]
    assert len(known_hosts.read_text().splitlines()) == 1


def test_report_says_what_the_next_deploy_does() -> None:
    pin = pinned("gpu-1", {"ssh_hostname": "10.0.0.5", "ssh_known_hosts_file": "/k"})
    assert report(pin, ["10.0.0.5"]) == (
        "gpu-1: removed its old SSH host key (10.0.0.5) from /k; "
        "the next deploy pins its new key and deploys it like a new host"
    )
    strict = pinned("gpu-1", {"ssh_known_hosts_file": "/k", "ssh_strict_host_key_checking": "yes"})
    assert "add its new key there yourself" in report(strict, ["gpu-1"])
    assert "not pinned" in report(pinned("lab-1", {"ssh_known_hosts_file": "/dev/null"}), [])


def test_the_command_reads_the_inventory_and_refuses_unknown_names(tmp_path: Path) -> None:
    known_hosts = tmp_path / "known_hosts"
    known_hosts.write_text(
        host_key_line(tmp_path, "10.0.0.5", "old") + host_key_line(tmp_path, "10.0.0.6", "b")
    )
    inventory = tmp_path / "inventory.py"
    inventory.write_text(
        f"_pin = {{'ssh_known_hosts_file': {str(known_hosts)!r}}}\n"
        "fleet = [('gpu-1', {'ssh_hostname': '10.0.0.5', **_pin}),\n"
        "         ('gpu-2', {'ssh_hostname': '10.0.0.6', **_pin})]\n"
    )

    def hosts_forget(*names: str) -> subprocess.CompletedProcess[str]:
        argv = [sys.executable, "-m", "ollama_fleet.cli", "hosts", "forget", str(inventory), *names]
        return subprocess.run(argv, cwd=tmp_path, capture_output=True, text=True, check=False)

    unknown = hosts_forget("gpu-9")
    assert unknown.returncode == 2
    assert "gpu-9 not in the inventory" in unknown.stderr
    done = hosts_forget("gpu-1")
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith(f"gpu-1: removed its old SSH host key (10.0.0.5) from {known_hosts}")
    assert known_hosts.read_text().startswith("10.0.0.6 ")
