"""A gateway over 1,000 hosts: its site's size, `nginx -t` and a reload, measured with a real nginx.

The site is the one the deploy renders into a gateway host's nginx (render_nginx_site over gateway_plan),
for fleets of 8 and of `--hosts` hosts, each host serving one of `--models` models (so one pool per model
plus the all-hosts pool, every host in two pools), with one member file per host as the deploy writes
them. It runs in this machine's nginx (Debian 12's 1.22, as on the lab's hosts), in a temporary prefix on
loopback with a master process and one worker; no traffic leaves loopback. Printed per fleet size: the
controller's planning and rendering time, the site's and member files' size, `nginx -t`, and a reload
(`nginx -s reload`, until a new worker process is up and the gateway port answers; the old one finishes
its requests meanwhile).

    .venv/bin/python benchmarks/gateway_size_bench.py [--hosts 1000] [--models 4]
"""

from __future__ import annotations

import argparse
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests" / "unit"))

from test_gateway_render import _gateway_prefix, host_settings  # noqa: E402
from test_render import _binary, _free_port  # noqa: E402

from ollama_fleet.gateway import gateway_plan  # noqa: E402
from ollama_fleet.pki import FleetCA  # noqa: E402
from ollama_fleet.settings import FleetSettings  # noqa: E402


def fleet(tmp: Path, hosts: int, models: int, port: int, gateway_port: int) -> dict[str, Any]:
    members: dict[str, FleetSettings] = {
        f"gpu-{i}": host_settings(f"gpu-{i}", tmp, nginx_https_port=443, models_pull=[f"model-{i % models}"])
        for i in range(hosts)
    }
    gateway = host_settings(
        "gw", tmp, gateway_enabled=True, nginx_https_port=port, gateway_port=gateway_port,
        gateway_server_names=["localhost"],
    )  # fmt: skip
    return {**members, "gw": gateway}


def addresses(names: list[str]) -> dict[str, str]:
    """10.100.0.0/16 for the members (nginx -t and a reload do not dial them), loopback for the gateway."""
    return {name: f"10.100.{i // 250}.{i % 250 + 1}" for i, name in enumerate(names)} | {"gw": "127.0.0.6"}


def worker_pids(master: int) -> set[int]:
    found = subprocess.run(["pgrep", "-P", str(master)], capture_output=True, text=True, check=False)
    return {int(pid) for pid in found.stdout.split()}


def answers(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return True
    except OSError:
        return False


def measure(hosts: int, models: int, ca: FleetCA) -> dict[str, float]:
    with tempfile.TemporaryDirectory() as directory:
        tmp = Path(directory)
        port, gateway_port = _free_port(), _free_port()
        started = time.perf_counter()
        settings = fleet(tmp, hosts, models, port, gateway_port)
        settings_s = time.perf_counter() - started
        started = time.perf_counter()
        plan = gateway_plan(settings, addresses(list(settings)))
        conf = _gateway_prefix(tmp, settings["gw"], ca, plan, "")
        render_s = time.perf_counter() - started
        text = conf.read_text().replace(
            "daemon off;\nmaster_process off;", "daemon off;\nworker_processes 1;"
        )
        conf.write_text(text)
        site_kb = (tmp / "site.conf").stat().st_size / 1024
        member_files = list((tmp / "members").iterdir())
        members_kb = sum(f.stat().st_size for f in member_files) / 1024
        nginx = [_binary("nginx"), "-p", str(tmp), "-c", str(conf)]
        started = time.perf_counter()
        tested = subprocess.run([*nginx, "-t"], capture_output=True, text=True, check=False)
        test_s = time.perf_counter() - started
        if tested.returncode != 0:
            raise SystemExit(f"nginx -t failed at {hosts} hosts:\n{tested.stderr[-3000:]}")
        master = subprocess.Popen(nginx, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            deadline = time.monotonic() + 60
            while not (answers(gateway_port) and worker_pids(master.pid)):
                if time.monotonic() > deadline or master.poll() is not None:
                    raise SystemExit(
                        f"nginx did not start at {hosts} hosts: {(tmp / 'error.log').read_text()}"
                    )
                time.sleep(0.05)
            old = worker_pids(master.pid)
            started = time.perf_counter()
            os.kill(master.pid, signal.SIGHUP)  # what `nginx -s reload` and `systemctl reload nginx` send
            while True:
                now = worker_pids(master.pid)
                if now - old and answers(gateway_port):
                    break
                if time.perf_counter() - started > 120:
                    raise SystemExit(f"no reload at {hosts} hosts within 120 s")
                time.sleep(0.01)
            reload_s = time.perf_counter() - started
        finally:
            master.terminate()
            master.wait(timeout=30)
    return {
        "settings s": settings_s,
        "plan+render s": render_s,
        "site KiB": site_kb,
        "pools": len(plan.pools),
        "member files": len(member_files),
        "members KiB": members_kb,
        "nginx -t s": test_s,
        "reload s": reload_s,
    }


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--hosts", type=int, default=1000)
    parser.add_argument("--models", type=int, default=4)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as pki:
        ca = FleetCA.load_or_create(Path(pki))
        rows = {n: measure(n, args.models, ca) for n in (8, args.hosts)}
    labels = list(rows[8])
    print(f"gateway site, {args.models} models (a pool each + all hosts), nginx {nginx_version()}")
    print(f"{'hosts':>6}" + "".join(f"{label:>14}" for label in labels))
    for n, row in rows.items():
        print(f"{n:>6}" + "".join(f"{row[label]:>14.2f}" for label in labels))
    return 0


def nginx_version() -> str:
    done = subprocess.run([_binary("nginx"), "-v"], capture_output=True, text=True, check=False)
    return done.stderr.strip().split("/")[-1]


if __name__ == "__main__":
    sys.exit(main())
