"""The lab's pure parts: address plan, cgroups, rendered files, mirror routing (no root, no hosts)."""

from __future__ import annotations

import hashlib
import http.client
import json
import re
import subprocess
import sys
import threading
from collections.abc import Iterator
from http.server import ThreadingHTTPServer
from pathlib import Path

import pytest

from ollama_fleet.lab import cgroups, hosts, mirror, network, rootfs, sysctls
from ollama_fleet.lab.inventory import (
    LAB_KEY_NAMES,
    LAB_ORIGIN,
    lab_settings,
    render_inventory,
    render_ssh_config,
)
from ollama_fleet.lab.paths import repo_root
from ollama_fleet.lab.plan import SlotPlan
from ollama_fleet.lab.releases import ReleaseError, parse_releases, release_of_host
from ollama_fleet.lab.state import HostState, LabState
from ollama_fleet.settings import settings_for_host

pytestmark = pytest.mark.unit


def make_state(slot: int, count: int, tmp_path: Path) -> LabState:
    plan = SlotPlan(slot)
    return LabState(
        slot=slot,
        hosts=[HostState(h.name, h.machine, h.ip, f"/r/{h.machine}", []) for h in plan.hosts(count)],
        key_path=str(tmp_path / "id_ed25519"),
        ssh_config_path=str(tmp_path / "ssh_config"),
        inventory_path=str(tmp_path / "lab.py"),
        outsider_netns=plan.netns,
        outsider_ip=plan.outsider_ip,
        mirror_url=plan.mirror_base_url,
        base_rootfs="/base",
        runtime_dir="/runtime",
        cgroup_roots=[],
    )


# --- address plan ---


def test_slot_zero_is_the_documented_lab_network() -> None:
    plan = SlotPlan(0)
    assert (plan.hosts_subnet, plan.gateway_ip) == ("10.213.0.0/24", "10.213.0.1")
    assert (plan.outsider_subnet, plan.outsider_ip) == ("10.213.1.0/24", "10.213.1.2")
    assert [h.ip for h in plan.hosts(3)] == ["10.213.0.11", "10.213.0.12", "10.213.0.13"]
    assert [h.name for h in plan.hosts(3)] == ["lab-1", "lab-2", "lab-3"]
    assert plan.mirror_base_url == "http://10.213.0.1:8080"
    assert plan.apt_source_line == "deb [trusted=yes] http://10.213.0.1:8080/debian ./"


def test_slots_get_disjoint_subnets_and_names() -> None:
    three, four = SlotPlan(3), SlotPlan(4)
    assert (three.hosts_subnet, three.outsider_subnet) == ("10.213.6.0/24", "10.213.7.0/24")
    assert four.hosts_subnet == "10.213.8.0/24"
    names = lambda p: {p.bridge, p.outsider_bridge, p.outsider_veth, p.netns, p.nft_table, p.cgroup_name}  # noqa: E731
    assert not names(three) & names(four)
    assert three.host(1).machine != four.host(1).machine


def test_interface_names_fit_the_kernel_limit() -> None:
    plan = SlotPlan(127)
    veth_of_last_host = f"vb-{plan.host(240).machine}"
    for name in (
        plan.bridge,
        plan.outsider_bridge,
        plan.outsider_veth,
        plan.outsider_veth_peer,
        veth_of_last_host,
    ):
        assert len(name) <= 15, name
    assert plan.host(240).ip == "10.213.254.250"


@pytest.mark.parametrize("slot", [-1, 128])
def test_out_of_range_slot_is_refused(slot: int) -> None:
    with pytest.raises(ValueError, match="slot"):
        SlotPlan(slot)


@pytest.mark.parametrize("count", [0, 241])
def test_out_of_range_host_count_is_refused(count: int) -> None:
    with pytest.raises(ValueError, match="hosts"):
        SlotPlan(0).hosts(count)


def test_inotify_is_raised_only_for_many_hosts() -> None:
    assert sysctls.wanted_for(15) == {"net.ipv4.ip_forward": "1"}
    assert sysctls.wanted_for(16)["fs.inotify.max_user_instances"] == "8192"


# --- cgroups ---

HYBRID_MOUNTINFO = """\
30 24 0:26 / /sys/fs/cgroup ro,nosuid - tmpfs tmpfs ro,mode=755
31 30 0:27 / /sys/fs/cgroup/unified rw,nosuid - cgroup2 cgroup2 rw,nsdelegate
32 30 0:28 / /sys/fs/cgroup/systemd rw,nosuid - cgroup cgroup rw,xattr,name=systemd
35 30 0:31 / /sys/fs/cgroup/cpu,cpuacct rw,nosuid - cgroup cgroup rw,cpu,cpuacct
36 30 0:32 / /sys/fs/cgroup/memory rw,nosuid - cgroup cgroup rw,memory
"""


def test_hybrid_layout_yields_unified_named_systemd_and_memory() -> None:
    found = {(h.label, str(h.mount)) for h in cgroups.parse_hierarchies(HYBRID_MOUNTINFO)}
    assert found == {
        ("unified", "/sys/fs/cgroup/unified"),
        ("name=systemd", "/sys/fs/cgroup/systemd"),
        ("memory", "/sys/fs/cgroup/memory"),
    }


def test_pure_v2_layout_yields_one_hierarchy() -> None:
    text = "29 23 0:26 / /sys/fs/cgroup rw,nosuid - cgroup2 cgroup2 rw,nsdelegate,memory_recursiveprot\n"
    assert [(h.label, str(h.mount)) for h in cgroups.parse_hierarchies(text)] == [
        ("unified", "/sys/fs/cgroup")
    ]


def test_own_path_per_hierarchy() -> None:
    proc = "9:name=systemd:/\n4:memory:/process_api/abc\n1:cpu,cpuacct:/x\n0::/user.slice\n"
    assert cgroups.own_path("memory", proc) == "/process_api/abc"
    assert cgroups.own_path("name=systemd", proc) == "/"
    assert cgroups.own_path("unified", proc) == "/user.slice"
    assert cgroups.own_path("memory", "0::/\n") == "/"


def test_this_machine_exposes_a_hierarchy_the_lab_can_use() -> None:
    labels = {h.label for h in cgroups.hierarchies()}
    assert "unified" in labels or "name=systemd" in labels


# --- files written into hosts ---


def test_host_network_config_has_no_default_route() -> None:
    plan = SlotPlan(2)
    text = hosts.networkd_config(plan.host(3), plan)
    assert "Address=10.213.4.13/24" in text
    assert "Address=fd0a:d5:0:4::13/64" in text  # the lab's ULA, on-link only
    assert "Destination=10.213.0.0/16\nGateway=10.213.4.1" in text
    assert "\nGateway=" not in text.split("[Route]")[0]


def test_etc_hosts_names_self_and_peers() -> None:
    plan = SlotPlan(0)
    everyone = plan.hosts(3)
    lines = hosts.etc_hosts(everyone[1], plan, everyone).splitlines()
    assert "127.0.1.1 lab-2" in lines
    assert {"10.213.0.11 lab-1", "10.213.0.13 lab-3"} <= set(lines)
    assert "10.213.0.12 lab-2" not in lines


def test_nft_forward_chain_drops_all_but_lab_to_lab() -> None:
    text = network.nft_ruleset(SlotPlan(1))
    assert "table inet ollama_fleet_lab1" in text
    assert "hook forward priority 0; policy drop;" in text
    assert "ip saddr 10.213.0.0/16 ip daddr 10.213.0.0/16 accept" in text
    assert "ip6 saddr fd0a:d5::/48 ip6 daddr fd0a:d5::/48 accept" in text


def test_ipv6_plan_mirrors_the_ipv4_one() -> None:
    plan = SlotPlan(5)
    assert (plan.hosts_subnet6, plan.gateway_ip6, plan.host(1).ip6) == (
        "fd0a:d5:0:a::/64",
        "fd0a:d5:0:a::1",
        "fd0a:d5:0:a::11",
    )


# --- inventory and ssh_config ---


def pyinfra_view(inventory: Path) -> dict[str, tuple[list[str], dict[str, object]]]:
    """Each host's groups and data as pyinfra itself loads the file (`debug-inventory` connects nowhere).
    In a subprocess: importing pyinfra_cli monkey-patches the interpreter with gevent."""
    out = subprocess.run(
        [str(Path(sys.executable).parent / "pyinfra"), inventory.name, "debug-inventory"],
        cwd=inventory.parent,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        check=True,
        timeout=120,
    ).stdout  # pyinfra prints the report on stderr
    view = {}
    for name, groups, data in re.findall(
        r"^\[(\S+)\] \n--> Groups: ([^\n]*)\n--> Data:\n(\{.*?^\})", out, re.M | re.S
    ):
        view[name] = (groups.split(", "), json.loads(data))
    return view


def test_inventory_loads_in_pyinfra_with_groups_and_lab_data(tmp_path: Path) -> None:
    state = make_state(0, 3, tmp_path)
    path = tmp_path / "lab.py"
    model = tmp_path / "tiny.gguf"
    path.write_text(render_inventory(state, model))
    view = pyinfra_view(path)
    assert sorted(view) == ["lab-1", "lab-2", "lab-3"]
    assert {"lab_canary", "lab_hosts"} <= set(view["lab-1"][0])
    assert "lab_rest" not in view["lab-1"][0]
    for name in ("lab-2", "lab-3"):
        assert {"lab_rest", "lab_hosts"} <= set(view[name][0])
        assert "lab_canary" not in view[name][0]
    data = view["lab-3"][1]
    assert data["ssh_hostname"] == "10.213.0.13"
    assert data["ssh_user"] == "root"
    assert data["ssh_key"] == state.key_path
    assert data["ssh_known_hosts_file"] == "/dev/null"
    assert data["ssh_strict_host_key_checking"] == "no"
    for key, value in lab_settings(SlotPlan(0), Path(state.key_path).parent, model).items():
        assert data[key] == value


def test_lab_settings_point_at_the_slot_mirror_and_subnets(tmp_path: Path) -> None:
    settings = lab_settings(SlotPlan(2), tmp_path, tmp_path / "tiny.gguf")
    assert "ollama_source" not in settings  # the real fleets' code path: only the release page's URL differs
    assert settings["ollama_release_url"] == "http://10.213.4.1:8080/ollama"
    assert settings["firewall_client_subnets"] == ["10.213.4.0/24", "fd0a:d5:0:4::/64"]
    assert settings["firewall_admin_subnets"] == ["10.213.4.0/24"]
    assert settings["lab_outsider_ip"] == "10.213.5.2"
    assert settings["tls_ca_dir"] == str(tmp_path / "pki")
    assert settings["auth_secrets_file"] == str(tmp_path / "secrets.json")


def test_lab_settings_are_a_complete_valid_fleet(tmp_path: Path) -> None:
    """`pyinfra -y inventories/lab.py deploys/ollama.py` needs nothing beyond what the lab writes."""
    model = tmp_path / "tiny.gguf"
    model.write_bytes(b"GGUF")
    keys = {name: f"lab-{name}-0123456789abcdef" for name in LAB_KEY_NAMES}
    (tmp_path / "secrets.json").write_text(json.dumps({"api_keys": keys}))
    (tmp_path / "secrets.json").chmod(0o600)  # as `lab up` makes it
    data = {**group_defaults(), **lab_settings(SlotPlan(0), tmp_path, model)}
    s = settings_for_host("lab-1", data, environ={})
    assert [k.key.get_secret_value() for k in s.auth.keys] == list(keys.values())
    assert s.models.names() == ["tiny:latest", "vehicle-assistant:latest"]
    assert s.ollama.download_base == "http://10.213.0.1:8080/ollama/v0.24.0"
    assert s.ollama.origins == [LAB_ORIGIN]


def group_defaults() -> dict[str, object]:
    """The repo's group_data/all.py, as pyinfra would load it."""
    namespace: dict[str, object] = {}
    exec((repo_root() / "group_data" / "all.py").read_text(), namespace)
    return {k: v for k, v in namespace.items() if not k.startswith("_")}


def ssh_effective(config: Path, host: str) -> dict[str, str]:
    """What ssh itself makes of the config for a host (`ssh -G` connects nowhere)."""
    out = subprocess.run(["ssh", "-G", "-F", str(config), host], capture_output=True, text=True, check=True)
    return dict(line.split(" ", 1) for line in out.stdout.splitlines() if " " in line)


@pytest.mark.parametrize("target", ["lab-2", "10.213.0.12"])
def test_ssh_config_as_ssh_reads_it(tmp_path: Path, target: str) -> None:
    state = make_state(0, 3, tmp_path)
    config = tmp_path / "ssh_config"
    config.write_text(render_ssh_config(state, str(tmp_path)))
    effective = ssh_effective(config, target)
    assert effective["hostname"] == "10.213.0.12"
    assert effective["user"] == "root"
    assert effective["identityfile"] == state.key_path
    assert effective["stricthostkeychecking"] == "false"
    assert effective["userknownhostsfile"] == "/dev/null"
    assert effective["controlmaster"] == "auto"
    assert effective["controlpersist"] == "60"
    assert re.fullmatch(rf"{re.escape(str(tmp_path))}/cm-[0-9a-f]{{40}}", effective["controlpath"])


def test_ssh_config_leaves_other_hosts_alone(tmp_path: Path) -> None:
    config = tmp_path / "ssh_config"
    config.write_text(render_ssh_config(make_state(0, 2, tmp_path), str(tmp_path)))
    effective = ssh_effective(config, "10.213.0.13")
    assert effective.get("controlmaster") != "auto"


# --- mirror ---


def test_release_file_hashes_the_packages_index() -> None:
    packages = "Package: zstd\nVersion: 1.5\n\n"
    text = mirror.release_text(packages, "Thu, 01 Jan 2026 00:00:00 GMT")
    digest = hashlib.sha256(packages.encode()).hexdigest()
    assert f" {digest} {len(packages)} Packages" in text


def test_resolve_maps_routes_and_refuses_escapes(tmp_path: Path) -> None:
    table = {"/debian/": tmp_path / "repo", "/ollama/": tmp_path / "ollama"}
    assert mirror.resolve("/debian/Packages", table) == tmp_path / "repo" / "Packages"
    assert mirror.resolve("/debian/./Packages?x=1", table) == tmp_path / "repo" / "Packages"
    assert mirror.resolve("/ollama/v0.24.0/ollama-linux-amd64.tgz", table) == (
        tmp_path / "ollama/v0.24.0/ollama-linux-amd64.tgz"
    )
    assert mirror.resolve("/debian/../../etc/passwd", table) is None
    assert mirror.resolve("/debian/%2e%2e/%2e%2e/etc/passwd", table) is None
    assert mirror.resolve("/etc/passwd", table) is None
    assert mirror.resolve("/", table) is None


@pytest.fixture
def mirror_server(tmp_path: Path) -> Iterator[tuple[str, int]]:
    (tmp_path / "repo").mkdir()
    (tmp_path / "repo" / "Packages").write_text("Package: zstd\n")
    (tmp_path / "ollama" / "v0.24.0").mkdir(parents=True)
    (tmp_path / "ollama" / "v0.24.0" / "sha256sum.txt").write_text("abc  ollama-linux-amd64.tgz\n")
    table = {"/debian/": tmp_path / "repo", "/ollama/": tmp_path / "ollama", "/models/": tmp_path / "none"}
    handler = type("Handler", (mirror.MirrorHandler,), {"table": table, "log_message": lambda *a: None})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield "127.0.0.1", server.server_address[1]
    server.shutdown()
    server.server_close()


def fetch(address: tuple[str, int], path: str) -> tuple[int, bytes]:
    connection = http.client.HTTPConnection(*address, timeout=5)
    connection.request("GET", path)
    response = connection.getresponse()
    return response.status, response.read()


def test_server_serves_routes_and_404s_the_rest(mirror_server: tuple[str, int]) -> None:
    assert fetch(mirror_server, "/debian/Packages") == (200, b"Package: zstd\n")
    assert fetch(mirror_server, "/ollama/v0.24.0/sha256sum.txt")[0] == 200
    assert fetch(mirror_server, "/models/tiny-llama.gguf")[0] == 404
    assert fetch(mirror_server, "/debian/../../../etc/passwd")[0] == 404
    assert fetch(mirror_server, "/")[0] == 404


def test_server_process_check_rejects_other_processes() -> None:
    assert not mirror.is_server_process(1, "10.213.0.1")


def test_old_bases_are_pruned_and_the_current_one_kept(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("OLLAMA_FLEET_CACHE", str(tmp_path))
    for name in ("0ld0ld0ld0ld0ld0", "current", ".build-current-1", ".lock"):
        (tmp_path / "rootfs" / name).mkdir(parents=True)
    assert rootfs.prune_unused_bases(keep=tmp_path / "rootfs" / "current") == [
        tmp_path / "rootfs" / "0ld0ld0ld0ld0ld0"
    ]
    assert sorted(p.name for p in (tmp_path / "rootfs").iterdir()) == [".build-current-1", ".lock", "current"]


def test_every_releases_current_base_is_kept(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OLLAMA_FLEET_CACHE", str(tmp_path))
    bookworm, trixie = (tmp_path / "rootfs" / rootfs.recipe_hash(r) for r in ("bookworm", "trixie"))
    for base in (bookworm, trixie, tmp_path / "rootfs" / "0ld0ld0ld0ld0ld0"):
        base.mkdir(parents=True)
    assert rootfs.prune_unused_bases(keep=trixie) == [tmp_path / "rootfs" / "0ld0ld0ld0ld0ld0"]
    assert bookworm.is_dir() and trixie.is_dir()


def test_each_release_has_its_own_base_repository_and_apt_source(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("OLLAMA_FLEET_CACHE", str(tmp_path))
    assert rootfs.recipe("trixie")["suite"] == "trixie"
    assert rootfs.recipe_hash("bookworm") != rootfs.recipe_hash("trixie")
    assert "trixie trixie-updates main" in mirror.debian_sources("trixie")
    assert "trixie-security main" in mirror.debian_sources("trixie")
    routes = mirror.routes()
    assert routes["/debian/"] == tmp_path / "debs" / mirror.debs_recipe_hash("bookworm")
    assert routes["/debian-trixie/"] == tmp_path / "debs" / mirror.debs_recipe_hash("trixie")
    assert mirror.debs_recipe_hash("bookworm") != mirror.debs_recipe_hash("trixie")
    plan = SlotPlan(0)
    assert plan.apt_source_line_for("bookworm") == plan.apt_source_line
    assert plan.apt_source_line_for("trixie") == "deb [trusted=yes] http://10.213.0.1:8080/debian-trixie ./"


def test_releases_alternate_over_the_hosts_and_unknown_ones_are_refused() -> None:
    assert parse_releases(None) == parse_releases("") == ["bookworm"]
    mixed = parse_releases("bookworm, trixie")
    assert [release_of_host(mixed, i) for i in (1, 2, 3, 4)] == ["bookworm", "trixie", "bookworm", "trixie"]
    assert [release_of_host(["trixie"], i) for i in (1, 2)] == ["trixie", "trixie"]
    with pytest.raises(ReleaseError, match="unknown lab release bullseye: the lab boots bookworm"):
        parse_releases("trixie,bullseye")


def test_base_recipe_hash_changes_with_the_package_list(monkeypatch: pytest.MonkeyPatch) -> None:
    before = rootfs.recipe_hash()
    monkeypatch.setattr(rootfs, "INCLUDE", (*rootfs.INCLUDE, "less"))
    assert rootfs.recipe_hash() != before


def test_each_release_has_its_vagrant_box_and_mirror_repository(tmp_path: Path) -> None:
    from ollama_fleet.lab import vagrant_fleet

    assert vagrant_fleet.box_name("bookworm") == vagrant_fleet.BOX_NAME == "ollama-fleet/debian12-lab"
    assert vagrant_fleet.box_name("trixie") == "ollama-fleet/debian13-lab"
    plan = SlotPlan(7)
    env = vagrant_fleet.vagrant_env(plan, 2, tmp_path / "key", "trixie")
    assert env["OLLAMA_FLEET_LXC_BOX"] == "ollama-fleet/debian13-lab"
    assert env["OLLAMA_FLEET_APT_SOURCE"] == plan.apt_source_line_for("trixie")
    assert env["OLLAMA_FLEET_APT_SOURCE"].endswith("/debian-trixie ./")
    default = vagrant_fleet.vagrant_env(plan, 2, tmp_path / "key")
    assert default["OLLAMA_FLEET_APT_SOURCE"] == plan.apt_source_line
    # The Vagrantfile's own default box is the default release's.
    assert (
        f'"OLLAMA_FLEET_LXC_BOX", "{default["OLLAMA_FLEET_LXC_BOX"]}"'
        in (repo_root() / "Vagrantfile").read_text()
    )
