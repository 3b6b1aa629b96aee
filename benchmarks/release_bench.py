"""What installing a release costs the uplink: bytes fetched from the release page, and wall time, for one
upgrade of --hosts fleets, each host fetching from the page vs through the fleet's seed (the models seed,
which fetches each archive once and serves it on the LAN). Figures are ratios measured in the same run: bytes
as a multiple of the release's size (target: 1x with a seed, N x without), time seed / direct.

The release is the lab build relabelled 0.24.7 with a generated `-rocm` overlay of --overlay-mb incompressible
bytes (a realistic download: the real main archive is ~1.7 GB, the real -rocm more). Brings up its own lab
slot (default 11) with the largest fleet, deploys it, measures each size on its first N hosts, and leaves it
down.
The lab's hosts share this machine's cores and its one bridge: the seed serves every other host at once, so
its wall time is an upper bound of what a LAN with a switch would give.

    python benchmarks/release_bench.py [--hosts 1,3,8] [--overlay-mb 300] [--slot 11]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

from ollama_fleet.lab import artifacts, lifecycle
from ollama_fleet.lab.state import LabState

REPO = Path(__file__).resolve().parents[1]
PYINFRA = str(Path(sys.executable).parent / "pyinfra")
LABEL = "0.24.7"
STORE = "/var/lib/ollama-fleet/releases"


def deploy(lab: LabState, *extra: str) -> float:
    env = {**os.environ, "PYINFRA_PROGRESS": "off"}
    start = time.perf_counter()
    done = subprocess.run(
        [PYINFRA, "-y", lab.inventory_path, "deploys/ollama.py", *extra],
        cwd=REPO, env=env, capture_output=True, text=True, check=False,
    )  # fmt: skip
    if done.returncode != 0:
        raise SystemExit(f"deploy {' '.join(extra)} failed:\n{done.stderr[-4000:]}")
    return time.perf_counter() - start


def ssh(lab: LabState, host: str, command: str) -> None:
    subprocess.run(lab.ssh_command(host, command), check=True, capture_output=True)


def page_bytes(log: Path, start: int, sizes: dict[str, int]) -> int:
    """Bytes the page sent for the label's archives since `start` (whole-file GETs: nothing to resume)."""
    with log.open("rb") as read:
        read.seek(start)
        lines = read.read().decode(errors="replace").splitlines()
    total = 0
    for line in lines:
        match = re.search(rf'"GET /ollama/v{re.escape(LABEL)}/(\S+) HTTP', line)
        if match and '" 200 ' in line and match.group(1) in sizes:
            total += sizes[match.group(1)]
    return total


def upgrade(lab: LabState, hosts: list[str], seeded: bool) -> tuple[float, int]:
    """Wall time and page bytes of upgrading `hosts` (none has the label) to the label with its overlay."""
    for host in hosts:
        ssh(lab, host, f"rm -rf /opt/ollama/{LABEL} {STORE}")
    log = Path(lab.key_path).parent / "logs" / "mirror.log"
    sums = artifacts.read_sums(artifacts.pages_dir() / f"v{LABEL}")
    sizes = {name: (artifacts.pages_dir() / f"v{LABEL}" / name).stat().st_size for name in sums}
    start = log.stat().st_size
    limit = [arg for host in hosts for arg in ("--limit", host)]  # pyinfra takes one name per --limit
    extra = [*limit, "--data", f"ollama_version={LABEL}", "--data", 'ollama_overlays=["rocm"]']
    if seeded:
        extra += [
            "--data", f"models_seed_host={hosts[0]}",
            "--data", f"models_lan_subnets={json.dumps([lab.plan.hosts_subnet])}",
        ]  # fmt: skip
    seconds = deploy(lab, *extra)
    fetched = page_bytes(log, start, sizes)
    if fetched == 0:
        raise SystemExit(f"the upgrade of {', '.join(hosts)} fetched nothing from the page")
    deploy(lab, *limit)  # back to the lab's own release, without a seed
    return seconds, fetched


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--hosts", default="1,3,8", help="comma list of fleet sizes (%(default)s)")
    parser.add_argument("--overlay-mb", type=int, default=300)
    parser.add_argument("--slot", type=int, default=11)
    args = parser.parse_args()
    counts = [int(n) for n in args.hosts.split(",")]

    build = artifacts.ensure_relabelled_release(LABEL)
    page = artifacts.publish_release(build, LABEL, overlays=("rocm",), overlay_size=args.overlay_mb << 20)
    release = sum((page / name).stat().st_size for name in artifacts.read_sums(page))
    print(f"release {LABEL}: main + -rocm = {release / 1e6:.0f} MB on the lab's page")
    lab = lifecycle.up(max(counts), args.slot, log=False)
    try:
        deploy(lab)  # from bare hosts, on the lab's own release
        names = [host.name for host in lab.hosts]
        for count in counts:
            hosts = names[:count]
            direct_s, direct_b = upgrade(lab, hosts, seeded=False)
            seed_s, seed_b = upgrade(lab, hosts, seeded=True)
            print(
                f"  {count} host(s): page bytes direct {direct_b / release:.2f}x the release, "
                f"through the seed {seed_b / release:.2f}x; wall time direct {direct_s:.1f} s, "
                f"seed {seed_s:.1f} s = {seed_s / direct_s:.2f}x"
            )
    finally:
        lifecycle.down(args.slot, log=False)
        artifacts.unpublish_release(LABEL)
    return 0


if __name__ == "__main__":
    sys.exit(main())
