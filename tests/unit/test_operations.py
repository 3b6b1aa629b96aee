"""The custom operations' pure parts: fact parsers, decisions, their shell scripts run locally in tmp dirs."""

from __future__ import annotations

import hashlib
import ipaddress
import os
import re
import shlex
import shutil
import socket
import subprocess
import tarfile
from io import BytesIO
from pathlib import Path
from types import SimpleNamespace

import pytest

from ollama_fleet.operations import accounts, connection, models, nginx, release, secrets, ufw
from ollama_fleet.operations.addresses import StableIpv6Addresses

pytestmark = pytest.mark.unit


def sh(script: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """Run a command the way pyinfra does on a host: `sh -c`."""
    return subprocess.run(["sh", "-c", script], capture_output=True, text=True, env=env, check=False)


# --- release -------------------------------------------------------------------------------------------


def test_versions_sort_numerically_with_release_candidates_first() -> None:
    versions = ["0.24.0", "0.9.1", "0.24.1", "0.24.1-rc2", "0.100.0"]
    assert sorted(versions, key=release.version_key) == ["0.9.1", "0.24.0", "0.24.1-rc2", "0.24.1", "0.100.0"]


@pytest.mark.parametrize(
    ("installed", "current", "keep", "removed"),
    [
        (["0.23.0", "0.24.0", "0.25.0"], "0.25.0", 2, ["0.23.0"]),
        (["0.23.0", "0.24.0", "0.25.0"], "0.23.0", 2, ["0.24.0"]),  # after a rollback: current stays
        (["0.23.0", "0.24.0", "0.25.0"], "0.24.0", 1, ["0.23.0", "0.25.0"]),
        (["0.24.0"], "0.24.0", 1, []),
        (["0.23.0", "0.24.0"], None, 1, ["0.23.0"]),
    ],
)
def test_old_versions_removed_never_the_current_one(
    installed: list[str], current: str | None, keep: int, removed: list[str]
) -> None:
    assert release.versions_to_remove(installed, current, keep) == removed


def test_releases_fact_parses_versions_current_and_foreign_dirs() -> None:
    fact = release.OllamaReleases()
    parsed = fact.process(["current 0.24.0", "version 0.23.0 aaa", "version 0.24.0 bbb", "foreign 0.22.0"])
    assert parsed == {
        "current": "0.24.0",
        "versions": {"0.23.0": {release.MAIN: "aaa"}, "0.24.0": {release.MAIN: "bbb"}},
        "foreign": ["0.22.0"],
    }
    assert fact.process(["current "])["current"] is None


def _tgz(path: Path, with_binary: bool = True) -> Path:
    with tarfile.open(path, "w:gz") as archive:
        files = {"./lib/ollama/libggml.so": b"lib"}
        if with_binary:
            files["./bin/ollama"] = b"#!/bin/sh\necho ollama\n"
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size, info.mode, info.uid = len(data), 0o755, 4242
            archive.addfile(info, BytesIO(data))
    return path


def _staged(tmp_path: Path, sums_line: str | None = None, with_binary: bool = True) -> tuple[Path, Path]:
    stage = tmp_path / "staging" / "0.24.0"
    stage.mkdir(parents=True)
    archive = _tgz(stage / "ollama-linux-amd64.tgz", with_binary)
    digest = hashlib.sha256(archive.read_bytes()).hexdigest()
    line = sums_line if sums_line is not None else f"{digest}  ./ollama-linux-amd64.tgz"
    (stage / "sha256sum.txt").write_text(f"{'1' * 64}  ./ollama-darwin.tgz\n{line}\n")
    return archive, stage / "sha256sum.txt"


@pytest.mark.parametrize("prefix", ["./", "*", ""])
def test_verify_accepts_the_listed_checksum(tmp_path: Path, prefix: str) -> None:
    archive, sums = _staged(tmp_path)
    digest = hashlib.sha256(archive.read_bytes()).hexdigest()
    sums.write_text(f"{digest}  {prefix}ollama-linux-amd64.tgz\n")
    assert sh(release.verify_script(str(archive), str(sums))).returncode == 0


def test_verify_mismatch_fails_and_deletes_the_download(tmp_path: Path) -> None:
    archive, sums = _staged(tmp_path, sums_line=f"{'0' * 64}  ./ollama-linux-amd64.tgz")
    result = sh(release.verify_script(str(archive), str(sums)))
    assert result.returncode == 1
    assert "checksum mismatch for ollama-linux-amd64.tgz" in result.stderr
    assert "left untouched" in result.stderr
    assert not archive.parent.exists()


def test_verify_fails_when_the_archive_is_not_listed(tmp_path: Path) -> None:
    archive, sums = _staged(tmp_path, sums_line="")
    result = sh(release.verify_script(str(archive), str(sums)))
    assert result.returncode == 1
    assert "not listed in sha256sum.txt" in result.stderr


def test_unpack_renames_a_complete_version_into_place_with_its_checksum(tmp_path: Path) -> None:
    archive, _ = _staged(tmp_path)
    install = tmp_path / "opt-ollama"
    assert sh(release.unpack_script(str(archive), str(install), "0.24.0")).returncode == 0
    version = install / "0.24.0"
    assert os.access(version / "bin" / "ollama", os.X_OK)
    assert (version / "lib" / "ollama" / "libggml.so").read_bytes() == b"lib"
    digest = hashlib.sha256(archive.read_bytes()).hexdigest()
    assert (version / release.MARKER).read_text() == f"{digest}  ollama-linux-amd64.tgz\n"
    assert (version / "bin" / "ollama").stat().st_uid == os.getuid()  # --no-same-owner
    assert sorted(p.name for p in install.iterdir()) == ["0.24.0"]  # no temp dir left


@pytest.mark.skipif(shutil.which("zstd") is None, reason="zstd is not installed on this controller")
def test_unpack_handles_tar_zst(tmp_path: Path) -> None:
    archive, _ = _staged(tmp_path)
    raw = subprocess.run(["gzip", "-dc", str(archive)], capture_output=True, check=True).stdout
    zst = archive.with_name("ollama-linux-amd64.tar.zst")
    zst.write_bytes(subprocess.run(["zstd", "-q", "-c"], input=raw, capture_output=True, check=True).stdout)
    install = tmp_path / "opt-ollama"
    assert sh(release.unpack_script(str(zst), str(install), "0.24.0")).returncode == 0
    assert os.access(install / "0.24.0" / "bin" / "ollama", os.X_OK)


def test_unpack_refuses_an_archive_without_the_binary(tmp_path: Path) -> None:
    archive, _ = _staged(tmp_path, with_binary=False)
    install = tmp_path / "opt-ollama"
    result = sh(release.unpack_script(str(archive), str(install), "0.24.0"))
    assert result.returncode == 1
    assert "no bin/ollama" in result.stderr
    assert not (install / "0.24.0").exists()


# --- ufw -----------------------------------------------------------------------------------------------

SHOW_ADDED = [
    "ufw allow from 10.0.0.0/24 to any port 22 proto tcp comment 'ollama-fleet'",
    "ufw allow from 10.0.1.0/24 to any port 443 proto tcp comment 'ollama-fleet'",
    "ufw allow 8080/tcp",  # someone else's: never ours to delete
    "ufw allow from 10.0.9.0/24 to any port 22 proto tcp comment 'admin vpn'",
    "ufw allow from fd00::/64 to any port 443 proto tcp comment 'ollama-fleet'",
]


def test_only_tagged_rules_are_ours() -> None:
    assert ufw.tagged_rules(SHOW_ADDED) == {
        ufw.Rule("10.0.0.0/24", 22),
        ufw.Rule("10.0.1.0/24", 443),
        ufw.Rule("fd00::/64", 443),
    }


def test_show_added_fact_keeps_rule_lines_only() -> None:
    lines = ["Added user rules (see 'ufw status' for running firewall):", *SHOW_ADDED]
    assert ufw.UfwAddedRules().process(lines) == SHOW_ADDED
    assert (
        ufw.UfwAddedRules().process(["Added user rules (see 'ufw status' for running firewall):", "(None)"])
        == []
    )


def test_rule_spec_is_a_ufw_command_tagged_as_ours() -> None:
    spec = ufw.Rule("10.0.0.0/24", 22).spec()
    assert spec == "allow from 10.0.0.0/24 to any port 22 proto tcp comment ollama-fleet"
    printed = "ufw " + spec.replace("comment ollama-fleet", "comment 'ollama-fleet'")  # as ufw prints it
    assert ufw.tagged_rules([printed]) == {ufw.Rule("10.0.0.0/24", 22)}


def test_ufw_state_fact() -> None:
    state = ufw.Ufw().process(
        ["Status: active", 'DEFAULT_INPUT_POLICY="DROP"', 'DEFAULT_OUTPUT_POLICY="ACCEPT"', "IPV6=yes"]
    )
    assert state == {"active": True, "incoming": "DROP", "outgoing": "ACCEPT", "ipv6": True}
    assert ufw.Ufw().process(["Status: inactive"])["active"] is False
    assert ufw.Ufw().process(["Status: active", "IPV6=no"])["ipv6"] is False


def test_stable_ipv6_addresses_leave_out_temporary_and_deprecated_ones() -> None:
    listed = [
        "2: host0    inet6 fd0a:d5::11/64 scope global \\       valid_lft forever preferred_lft forever",
        "2: host0    inet6 2001:db8::5a1:1/64 scope global temporary dynamic \\       valid_lft 86000sec",
        "2: host0    inet6 2001:db8::99/64 scope global deprecated dynamic \\       valid_lft 100sec",
        "2: host0    inet6 2001:db8::a00:27ff:fe4e:66a1/64 scope global dynamic mngtmpaddr \\       valid",
    ]
    assert StableIpv6Addresses().process(listed) == ["2001:db8::a00:27ff:fe4e:66a1", "fd0a:d5::11"]
    assert StableIpv6Addresses().process([]) == []


def test_rules_for_every_subnet_and_port() -> None:
    nets = [ipaddress.ip_network("10.0.0.0/24"), ipaddress.ip_network("10.0.1.0/24")]
    assert ufw.rules_for(nets, [443, 80]) == [
        ufw.Rule("10.0.0.0/24", 443),
        ufw.Rule("10.0.0.0/24", 80),
        ufw.Rule("10.0.1.0/24", 443),
        ufw.Rule("10.0.1.0/24", 80),
    ]


@pytest.mark.parametrize(
    ("address", "inside"),
    [("10.213.2.1", True), ("10.213.3.2", False), ("::ffff:10.213.2.1", True), ("fd00::1", False)],
)
def test_address_in_admin_subnets(address: str, inside: bool) -> None:
    assert ufw.address_in(address, [ipaddress.ip_network("10.213.2.0/24")]) is inside


def test_ssh_client_address_from_own_environment() -> None:
    command = ufw.SshClient().command()
    out = sh(command, env={"PATH": os.environ["PATH"], "SSH_CLIENT": "10.213.2.1 50000 2222"}).stdout
    assert ufw.SshClient().process(out.splitlines()) == ufw.SshPeer("10.213.2.1", 2222)


def test_ssh_client_address_found_in_a_parent_when_sudo_dropped_it() -> None:
    """sudo resets the environment: the address is then read from the parent process (sudo itself)."""
    command = ufw.SshClient().command()
    inner = f"env -u SSH_CLIENT sh -c {shlex.quote(command)}; true"  # `; true`: the outer sh stays the parent
    env = {"PATH": os.environ["PATH"], "SSH_CLIENT": "10.213.2.7 50000 22"}
    out = subprocess.run(["sh", "-c", inner], env=env, capture_output=True, text=True, check=True).stdout
    assert ufw.SshClient().process(out.splitlines()) == ufw.SshPeer("10.213.2.7", 22)


# --- models --------------------------------------------------------------------------------------------

PULL_OK = [
    '{"status":"pulling manifest"}',
    '{"status":"pulling abc","digest":"sha256:abc","total":1048576}',
    '{"status":"pulling abc","digest":"sha256:abc","total":1048576,"completed":125829}',
    '{"status":"pulling abc","digest":"sha256:abc","total":1048576,"completed":157286}',
    '{"status":"pulling abc","digest":"sha256:abc","total":1048576,"completed":1048576}',
    '{"status":"verifying sha256 digest"}',
    '{"status":"success"}',
]


def _progress(lines: list[str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["sh", "-c", models.pull_progress_awk("tiny:latest", 600)],
        input="\n".join(lines) + "\n",
        capture_output=True,
        text=True,
    )


def test_pull_progress_prints_one_line_per_status_and_ten_percent() -> None:
    result = _progress(PULL_OK)
    assert result.returncode == 0
    assert result.stdout.splitlines() == [
        "pulling manifest",
        "pulling abc 0% (0.0 of 1.0 MB)",
        "pulling abc 10% (0.1 of 1.0 MB)",
        "pulling abc 100% (1.0 of 1.0 MB)",
        "verifying sha256 digest",
        "success",
    ]


def test_pull_progress_shows_a_layers_rate_once_a_second_has_passed() -> None:
    first = '{"status":"pulling abc","digest":"sha256:abc","total":10485760,"completed":1048576}'
    half = '{"status":"pulling abc","digest":"sha256:abc","total":10485760,"completed":5242880}'
    feed = f"echo '{first}'; sleep 2.1; echo '{half}'; echo '{{\"status\":\"success\"}}'"
    result = subprocess.run(
        ["sh", "-c", f"({feed}) | {models.pull_progress_awk('tiny:latest', 600)}"],
        capture_output=True,
        text=True,
        check=True,
    )
    start, later, _ = result.stdout.splitlines()
    assert start == "pulling abc 10% (1.0 of 10.0 MB)"  # no rate before a second has passed
    rate = re.fullmatch(r"pulling abc 50% \(5\.0 of 10\.0 MB, (\d+\.\d) MB/s\)", later)
    assert rate and 1.0 <= float(rate.group(1)) <= 2.0  # 4 MB in 2 or 3 whole seconds of awk's clock


def test_pull_asks_for_plain_http_only_when_insecure() -> None:
    secure = models.pull_command("http://127.0.0.1:11434", "llama3.2:1b")
    insecure = models.pull_command(
        "http://127.0.0.1:11434", "10.0.0.5:8080/library/tiny:latest", insecure=True
    )
    assert """-d '{"model": "llama3.2:1b", "stream": true}' |""" in secure
    assert (
        """-d '{"model": "10.0.0.5:8080/library/tiny:latest", "stream": true, "insecure": true}' |"""
        in insecure
    )


def test_pull_fails_on_an_error_line_or_without_success() -> None:
    failed = _progress(
        ['{"status":"pulling manifest"}', '{"error":"pull model manifest: file does not exist"}']
    )
    assert failed.returncode == 1
    assert "file does not exist" in failed.stdout
    assert _progress(PULL_OK[:-1]).returncode == 1


def _fed_every_tenth_of_a_second(lines: list[str], stall: int) -> subprocess.CompletedProcess[str]:
    feed = "; ".join(f"echo '{line}'; sleep 0.1" for line in lines)
    return subprocess.run(
        ["sh", "-c", f"({feed}) | {models.pull_progress_awk('lab/stalls:latest', stall)}"],
        capture_output=True,
        text=True,
        timeout=60,
    )


def _layer(completed: int) -> str:
    return f'{{"status":"pulling abc","digest":"sha256:abc","total":4194304,"completed":{completed}}}'


def test_pull_fails_when_its_bytes_stop_growing_while_ollama_keeps_sending_progress() -> None:
    # Ollama's progress every 60 ms, the bytes stuck at 2 MB: the stream is alive, the pull is not.
    stuck = [_layer(1048576), *[_layer(2097152)] * 60, '{"status":"success"}']
    result = _fed_every_tenth_of_a_second(stuck, stall=2)
    assert result.returncode == 1
    assert "success" not in result.stdout  # it failed before the feed ended
    assert re.fullmatch(
        r"ollama-fleet: pulling lab/stalls:latest stalled: 2\.0 of 4\.0 MB done \(pulling abc\), "
        r"no byte more for [23] s \(models_pull_stall_timeout\)\n",
        result.stderr,
    ), result.stderr


def test_pull_that_keeps_moving_or_changes_phase_is_not_stalled() -> None:
    growing = [_layer(n * 65536) for n in range(1, 41)]  # 4 s, a little more each line
    # Each new status (the next layer, then the digest check) starts its own clock.
    phases = ['{"status":"pulling def","digest":"sha256:def","total":10,"completed":10}']
    ok = _fed_every_tenth_of_a_second([*growing, *phases, '{"status":"success"}'], stall=2)
    assert ok.returncode == 0, ok.stderr
    assert ok.stderr == ""


def test_a_failed_pull_names_the_model_ollamas_reason_and_the_bytes_done() -> None:
    failed = _progress([_layer(2097152), '{"error":"max retries exceeded: connection reset"}'])
    assert failed.returncode == 1
    assert failed.stderr == (
        "ollama-fleet: pulling tiny:latest failed: max retries exceeded: connection reset "
        "(pulling abc: 2.0 of 4.0 MB done)\n"
    )
    cut = _progress([_layer(2097152)])
    assert "failed: the progress stream ended without success (pulling abc: 2.0 of 4.0 MB done)" in cut.stderr


def test_pull_command_gives_up_on_a_silent_stream_no_sooner_than_on_stalled_bytes() -> None:
    assert "--speed-time 600 " in models.pull_command("http://127.0.0.1:11434", "tiny", stall_seconds=30)
    assert "--speed-time 900 " in models.pull_command("http://127.0.0.1:11434", "tiny", stall_seconds=900)
    assert "-v stall=30 " in models.pull_command("http://127.0.0.1:11434", "tiny", stall_seconds=30)


def test_models_fact_reads_tags_or_reports_the_api_down() -> None:
    tags = (
        '{"models":[{"name":"tiny:latest","digest":"d1"},{"name":"vehicle-assistant:latest","digest":"d2"}]}'
    )
    assert models.OllamaModels().process([tags]) == {"tiny:latest": "d1", "vehicle-assistant:latest": "d2"}
    assert models.OllamaModels().process(["curl: (7) Failed to connect", "unreachable"]) is None


def test_model_records_are_keyed_by_file_safe_names() -> None:
    name = models.record_name("library/llama3.2:1b")
    assert "/" not in name and ":" not in name
    records = models.ModelRecords().process([f"{name}.sha256 abc", "tiny%3Alatest.sha256 def"])
    assert records == {name: "abc", "tiny%3Alatest": "def"}


def test_custom_model_digest_follows_its_base_gguf() -> None:
    modelfile = "FROM tiny\nSYSTEM hi\n"
    assert models.modelfile_digest(modelfile, "base1") != models.modelfile_digest(modelfile, "base2")
    assert models.modelfile_digest(modelfile) == models.modelfile_digest(modelfile)


def test_controller_file_digest(tmp_path: Path) -> None:
    gguf = tmp_path / "m.gguf"
    gguf.write_bytes(b"GGUF" * 1000)
    assert models.file_sha256(gguf) == hashlib.sha256(b"GGUF" * 1000).hexdigest()


# --- secrets -------------------------------------------------------------------------------------------


def test_secret_prints_as_a_digest_only() -> None:
    secret = secrets.Secret("topSECRETvalue123456")
    for text in (str(secret), repr(secret), f"{secret}", str([secret]), str({"k": secret})):
        assert "topSECRETvalue123456" not in text
    assert secret.reveal() == "topSECRETvalue123456"


def test_file_digest_fact_and_match() -> None:
    state = secrets.FileDigest().process(["640 root www-data", f"{'a' * 64}  /etc/nginx/x.conf"])
    assert state == {"sha256": "a" * 64, "mode": 0o640, "user": "root", "group": "www-data"}
    assert secrets.file_matches(state, "a" * 64, "root", "www-data", 0o640)
    assert not secrets.file_matches(state, "a" * 64, "root", "www-data", 0o644)
    assert not secrets.file_matches(None, "a" * 64, "root", "www-data", 0o640)
    assert secrets.FileDigest().process([]) is None


# --- nginx staging -------------------------------------------------------------------------------------

KEY = "fakeKEYforTHEshim0123456789"


def _nginx_tree(root: Path) -> Path:
    """A small /etc/nginx like Debian's: absolute includes, and a default site enabled by absolute link."""
    ngx = root / "etc-nginx"
    (ngx / "sites-available").mkdir(parents=True)
    (ngx / "sites-enabled").mkdir()
    (ngx / "nginx.conf").write_text(f"events {{}}\nhttp {{\n    include {ngx}/sites-enabled/*;\n}}\n")
    (ngx / "sites-available" / "default").write_text("server { listen 80 default_server; }\n")
    (ngx / "sites-enabled" / "default").symlink_to(ngx / "sites-available" / "default")
    return ngx


def _shim_nginx(bin_dir: Path, fail: bool) -> None:
    """A stand-in `nginx -t -q -c FILE`: fails unless every include (followed through links) is staged."""
    bin_dir.mkdir()
    shim = bin_dir / "nginx"
    failure = f'echo "nginx: [emerg] unknown directive \\"{KEY}\\" in $keys:2" >&2; exit 1' if fail else ""
    shim.write_text(
        "#!/bin/sh\n"
        'conf="$4"; staging=$(dirname "$conf")\n'
        'for f in $(grep -ho "include [^;]*" "$conf" | cut -d" " -f2); do\n'
        '  case "$f" in "$staging"/*) ;; *) echo "include outside staging: $f" >&2; exit 2;; esac\n'
        "done\n"
        'site=$(readlink "$staging/sites-enabled/ollama-fleet.conf")\n'
        'case "$site" in "$staging"/*) ;; *) echo "site link outside staging: $site" >&2; exit 3;; esac\n'
        'keys=$(grep -o "include [^;]*" "$site" | cut -d" " -f2)\n'
        'case "$keys" in "$staging"/*) ;; *) echo "keys include outside staging: $keys" >&2; exit 4;; esac\n'
        'test -f "$keys" || exit 5\n'
        'test ! -e "$staging/sites-enabled/default" || { echo "default site still enabled" >&2; exit 6; }\n'
        f"{failure}\n"
    )
    shim.chmod(0o755)


def _stage(tmp_path: Path, fail: bool) -> tuple[nginx.SitePaths, Path, subprocess.CompletedProcess[str]]:
    ngx = _nginx_tree(tmp_path)
    paths = nginx.SitePaths(str(ngx), "ollama-fleet")
    work = tmp_path / "work"
    (work / "new").mkdir(parents=True)
    (work / "new" / "site.conf").write_text(
        f"map $x $y {{ include {paths.keys}; }}\nserver {{ listen 443; }}\n"
    )
    (work / "new" / "api-keys.conf").write_text(f'"~{KEY}" 1;\n')
    shutil.copytree(ngx, work / "staging", symlinks=True)
    _shim_nginx(tmp_path / "bin", fail)
    env = {"PATH": f"{tmp_path / 'bin'}:{os.environ['PATH']}"}
    staged = sh(nginx.stage_script(paths, str(work)), env)
    assert staged.returncode == 0, staged.stderr
    return paths, work, sh(nginx.validate_script(paths, str(work)), env)


def test_staging_copy_resolves_every_include_inside_itself(tmp_path: Path) -> None:
    paths, _, result = _stage(tmp_path, fail=False)
    assert result.returncode == 0, result.stderr
    # the live tree is untouched until go-live
    assert not Path(paths.site).exists()
    assert Path(paths.default_site).is_symlink()


def test_rejected_config_masks_key_text_removes_the_copy_and_keeps_live(tmp_path: Path) -> None:
    paths, work, result = _stage(tmp_path, fail=True)
    assert result.returncode == 1
    assert KEY not in result.stdout + result.stderr
    assert '"(hidden)"' in result.stderr
    assert "live configuration is unchanged" in result.stderr
    assert not work.exists()
    assert not Path(paths.site).exists()
    assert Path(paths.default_site).is_symlink()


def test_go_live_installs_files_link_and_disables_the_default_site(tmp_path: Path) -> None:
    paths, work, _ = _stage(tmp_path, fail=False)
    assert sh(nginx.go_live_script(paths, str(work))).returncode == 0
    assert Path(paths.site).read_text() == (work / "new" / "site.conf").read_text()
    assert Path(paths.site).stat().st_mode & 0o777 == 0o644
    assert Path(paths.keys).stat().st_mode & 0o777 == 0o600
    assert os.readlink(paths.enabled) == paths.site
    assert not Path(paths.default_site).exists()
    assert not list(Path(paths.nginx_dir).rglob(".*.new"))


def test_go_live_writes_the_gateway_members_and_removes_the_hosts_gone(tmp_path: Path) -> None:
    paths, work, _ = _stage(tmp_path, fail=False)
    members_dir = f"{paths.nginx_dir}/ollama-fleet/gateway-members"
    Path(members_dir).mkdir(parents=True)
    (Path(members_dir) / "gone.conf").write_text("server 10.0.0.9:443;\n")
    (work / "new" / "members").mkdir()
    (work / "new" / "members" / "a.conf").write_text("server 10.0.0.2:443 down;\n")
    staged = sh(nginx.stage_script(paths, str(work), members_dir=members_dir))
    assert staged.returncode == 0, staged.stderr
    staged_dir = work / "staging" / "ollama-fleet" / "gateway-members"
    assert sorted(p.name for p in staged_dir.iterdir()) == ["a.conf"]  # validated as it will be live
    assert sh(nginx.go_live_script(paths, str(work), [f"{members_dir}/a.conf"], members_dir)).returncode == 0
    assert sorted(p.name for p in Path(members_dir).iterdir()) == ["a.conf"]
    assert (Path(members_dir) / "a.conf").read_text() == "server 10.0.0.2:443 down;\n"
    assert (Path(members_dir) / "a.conf").stat().st_mode & 0o777 == 0o644


def test_a_drain_stages_its_members_over_the_live_ones(tmp_path: Path) -> None:
    paths, work, _ = _stage(tmp_path, fail=False)
    members_dir = f"{paths.nginx_dir}/ollama-fleet/gateway-members"
    live = work / "staging" / "ollama-fleet" / "gateway-members"
    live.mkdir(parents=True)
    (live / "other.conf").write_text("server 10.0.0.3:443;\n")
    (work / "new" / "members").mkdir()
    (work / "new" / "members" / "a.conf").write_text("server 10.0.0.2:443 down;\n")
    script = nginx.stage_script(
        paths, str(work), with_site=False, members_dir=members_dir, replace_members=False
    )
    assert sh(script).returncode == 0
    staged = sorted(p.name for p in live.iterdir())
    assert staged == ["a.conf", "other.conf"]  # the live site may still include a host the plan lost


def test_a_pinned_digest_is_checked_instead_of_sha256sum_txt(tmp_path: Path) -> None:
    archive, sums = _staged(tmp_path)
    genuine = hashlib.sha256(archive.read_bytes()).hexdigest()
    sums.write_text(f"{genuine}  ./ollama-linux-amd64.tgz\n")
    assert sh(release.verify_script(str(archive), str(sums), pinned=genuine)).returncode == 0
    # a tampered archive with a sha256sum.txt recomputed to match it: refused by the pin
    archive.write_bytes(archive.read_bytes() + b"tampered")
    sums.write_text(f"{hashlib.sha256(archive.read_bytes()).hexdigest()}  ./ollama-linux-amd64.tgz\n")
    assert sh(release.verify_script(str(archive), str(sums))).returncode == 0  # sha256sum.txt alone: passes
    result = sh(release.verify_script(str(archive), str(sums), pinned=genuine))
    assert result.returncode == 1
    assert f"expected {genuine} (ollama_sha256), got" in result.stderr
    assert not archive.parent.exists()


FOREIGN = [
    "ufw allow 443",
    "ufw allow 80,443/tcp",
    "ufw allow from 10.0.1.0/25 to any port 443 proto tcp",  # inside the client subnet: fine
    "ufw allow from 10.0.0.0/8 to any port 22 proto tcp comment 'old vpn'",
    "ufw allow OpenSSH",
    "ufw allow from 192.168.7.0/24",  # every port
    "ufw allow 8000:12000/tcp",  # holds Ollama's port
    "ufw allow 8080/tcp",  # not a port we guard
    "ufw allow out 443/tcp",  # outgoing: not ours to judge
    "ufw deny 443",
]
GUARDED = {
    11434: ("ollama_listen", []),
    443: ("firewall_client_subnets", [ipaddress.ip_network("10.0.1.0/24")]),
    80: ("", []),
    22: ("firewall_admin_subnets", [ipaddress.ip_network("10.0.9.0/24")]),
}


def test_foreign_rules_that_open_guarded_ports_wider_are_named() -> None:
    lines = [*FOREIGN, *SHOW_ADDED]
    found = {rule.line: ufw.too_wide(rule, GUARDED) for rule in ufw.foreign_allows(lines)}
    assert {line: problems for line, problems in found.items() if problems} == {
        "ufw allow 443": ["port 443 to any (wider than firewall_client_subnets)"],
        "ufw allow 80,443/tcp": [
            "port 80 to any (which must stay closed)",
            "port 443 to any (wider than firewall_client_subnets)",
        ],
        "ufw allow from 10.0.0.0/8 to any port 22 proto tcp comment 'old vpn'": [
            "port 22 to 10.0.0.0/8 (wider than firewall_admin_subnets)"
        ],
        "ufw allow OpenSSH": ["port 22 to any (wider than firewall_admin_subnets)"],
        "ufw allow from 192.168.7.0/24": [
            "port 22 to 192.168.7.0/24 (wider than firewall_admin_subnets)",
            "port 80 to 192.168.7.0/24 (which must stay closed)",
            "port 443 to 192.168.7.0/24 (wider than firewall_client_subnets)",
            "port 11434 to 192.168.7.0/24 (which must stay closed)",
        ],
        "ufw allow 8000:12000/tcp": ["port 11434 to any (which must stay closed)"],
    }
    assert "ufw allow out 443/tcp" not in found and "ufw deny 443" not in found


def test_a_foreign_rule_is_deleted_with_the_words_that_added_it() -> None:
    (rule,) = ufw.foreign_allows(["ufw allow from 10.0.0.0/8 to any port 22 proto tcp comment 'old vpn'"])
    assert (
        rule.delete_command() == "ufw delete allow from 10.0.0.0/8 to any port 22 proto tcp comment 'old vpn'"
    )


def test_the_system_account_fact_reads_getent_and_id_on_this_machine() -> None:
    command = accounts.SystemAccount().command(user="root")
    output = subprocess.run(["sh", "-c", command], capture_output=True, text=True, check=True).stdout
    root = accounts.SystemAccount().process(output.splitlines())
    assert root is not None and root.home == "/root" and root.group == "root" and "root" in root.groups
    missing = subprocess.run(
        ["sh", "-c", accounts.SystemAccount().command(user="no-such-user-here")],
        capture_output=True,
        text=True,
    )
    assert missing.returncode == 0 and accounts.SystemAccount().process(missing.stdout.splitlines()) is None


def test_the_system_account_is_made_or_fixed_with_one_command_and_left_alone_when_right() -> None:
    def commands(have: accounts.Account | None) -> list[str]:
        return accounts.account_commands(
            "ollama", "ollama", ["render", "video"], "/usr/share/ollama", "/bin/false", have
        )

    assert commands(None) == [
        "useradd --system --gid ollama --groups render,video --home-dir /usr/share/ollama --create-home "
        "--shell /bin/false ollama"
    ]
    right = accounts.Account(
        "/usr/share/ollama", "/bin/false", "ollama", frozenset({"ollama", "render", "video", "extra"})
    )
    assert commands(right) == []  # groups it has beyond the wanted ones are kept
    wrong = accounts.Account("/home/ollama", "/bin/sh", "users", frozenset({"users", "video"}))
    assert commands(wrong) == [
        "usermod --gid ollama --home /usr/share/ollama --shell /bin/false --append --groups render ollama"
    ]


def _host_with_socket(sock: object) -> object:
    transport = SimpleNamespace(sock=sock)
    client = SimpleNamespace(get_transport=lambda: transport)
    return SimpleNamespace(connector=SimpleNamespace(client=client))


def test_commands_go_out_at_once_on_the_hosts_ssh_socket() -> None:
    with socket.create_server(("127.0.0.1", 0)) as srv, socket.create_connection(srv.getsockname()) as sock:
        assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) == 0
        assert connection.without_nagle(_host_with_socket(sock))  # type: ignore[arg-type]
        assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) != 0


def test_a_connection_without_a_tcp_socket_is_left_as_it_is() -> None:
    assert not connection.without_nagle(_host_with_socket(object()))  # type: ignore[arg-type]  # ProxyJump
    assert not connection.without_nagle(SimpleNamespace(connector=object()))  # type: ignore[arg-type]  # @local
