"""How the fleet's costs grow with its size: 1 / 8 / 32 / 64 lab hosts in one run.

For each size N, a fresh lab of N hosts (its own slot, default 10, taken down after), then:
- a facts-only pyinfra run of the same hosts (`pyinfra INV fact server.Hostname`): the baseline, since
  connecting and one command per host is the least any pyinfra run pays;
- the first deploy from bare hosts; the no-change fast re-run; the whole re-run (deploy_fast_rerun false),
  each also as a ratio to the facts-only run;
- `verify --quick` and the full `verify`;
- `rollout --batch 25%` of a setting change (nginx_read_timeout), canary first.
For each: wall seconds, the controller's CPU seconds per host (the pyinfra or ollama-fleet process and its
children) and its peak RSS, and the hosts' CPU seconds (the lab cgroups', the mirror excluded). The lab's
hosts share this machine's cores with the controller, so host-side CPU grows with N by construction; the
controller's CPU per host is the figure that must stay flat.

`--plan-only` plans the whole site against pyinfra's @fake hosts (`pyinfra --dry`, no host, no root) at each
size: the controller's planning cost alone, without SSH or hosts.

    sudo .venv/bin/python benchmarks/scale_bench.py [--sizes 1,8,32,64] [--slot 10]
    .venv/bin/python benchmarks/scale_bench.py --plan-only [--sizes 8,64,256]
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
PYINFRA = str(BIN / "pyinfra")
FLEET = str(BIN / "ollama-fleet")
CGROUP = Path("/sys/fs/cgroup/unified")


@dataclass
class Cost:
    wall_s: float
    controller_cpu_s: float
    controller_rss_mb: float
    host_cpu_s: float
    load: float = 0.0  # the 1-minute load average when the run ended
    exit_status: int = 0  # a run that failed (may_fail) is printed as such


def median_cost(costs: Sequence[Cost]) -> Cost:
    """The run of median wall time (its own CPU, RSS and load with it)."""
    return sorted(costs, key=lambda c: c.wall_s)[len(costs) // 2]


def host_cpu_seconds(slot: int) -> float:
    """CPU the lab's hosts used so far: every host's cgroup of the slot (not its package mirror)."""
    root = CGROUP / f"ollama-fleet-lab{slot}"
    total = 0
    for host in root.glob(f"lab{slot}-*"):
        for line in (host / "cpu.stat").read_text().splitlines():
            if line.startswith("usage_usec "):
                total += int(line.split()[1])
    return total / 1e6


def hosts_pss_mb(slot: int) -> float:
    """Memory the lab's hosts use (proportional set size of every process in their cgroups)."""
    total_kb = 0
    for procs in (CGROUP / f"ollama-fleet-lab{slot}").glob(f"lab{slot}-*/**/cgroup.procs"):
        for pid in procs.read_text().split():
            try:
                rollup = Path(f"/proc/{pid}/smaps_rollup").read_text()
            except OSError:
                continue
            match = re.search(r"^Pss:\s+(\d+)", rollup, re.M)
            total_kb += int(match.group(1)) if match else 0
    return total_kb / 1024


def measured(
    argv: Sequence[str], slot: int | None, env: dict[str, str] | None = None, may_fail: bool = False
) -> Cost:
    """Run `argv` to its end; its wall time, its CPU and peak RSS (with its children), the hosts' CPU."""
    hosts_before = host_cpu_seconds(slot) if slot is not None else 0.0
    start = time.perf_counter()
    with tempfile.TemporaryFile("w+") as out:
        proc = subprocess.Popen(argv, cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT, text=True)
        _, status, usage = os.wait4(proc.pid, 0)
        proc.returncode = os.waitstatus_to_exitcode(status)
        wall = time.perf_counter() - start
        if proc.returncode != 0 and not may_fail:
            out.seek(0)
            raise SystemExit(f"{' '.join(argv[:4])} ... failed ({proc.returncode}):\n{out.read()[-4000:]}")
    hosts_after = host_cpu_seconds(slot) if slot is not None else 0.0
    cpu = usage.ru_utime + usage.ru_stime
    load = os.getloadavg()[0]
    return Cost(wall, cpu, usage.ru_maxrss / 1024, hosts_after - hosts_before, load, proc.returncode)


def changed_inventory(inventory: str) -> str:
    """The lab's inventory with one setting changed on every host (a rollout's reason to run)."""
    text = Path(inventory).read_text()
    changed = re.sub(r"^(_lab = \{)", r"\1'nginx_read_timeout': 960, ", text, count=1, flags=re.M)
    assert changed != text, "the lab inventory no longer has its _lab dict"
    path = Path(inventory).with_name(Path(inventory).stem + "_changed.py")
    path.write_text(changed)
    return str(path)


def with_unreachable_host(inventory: str, slot: int) -> str:
    """The lab's inventory plus one host at an address of the lab's bridge where nothing answers."""
    text = Path(inventory).read_text()
    gone = f'\nunreachable = [("lab-gone", {{"ssh_hostname": "10.213.{2 * slot}.250", **_ssh, **_lab}})]\n'
    path = Path(inventory).with_name(Path(inventory).stem + "_unreachable.py")
    path.write_text(text + gone)
    return str(path)


def lab_rows(
    size: int, slot: int, skip: Sequence[str] = ()
) -> tuple[list[tuple[str, Cost]], dict[str, float]]:
    from ollama_fleet.lab import lifecycle

    env = {**os.environ, "PYINFRA_PROGRESS": "off"}
    start = time.perf_counter()
    lab = lifecycle.up(size, slot, log=False)
    extra = {"lab up s": time.perf_counter() - start}
    # A fleet CA left by an earlier lab of this slot may sign only for that lab's hosts.
    shutil.rmtree(REPO / ".lab" / f"slot{slot}" / "pki", ignore_errors=True)
    inventory = lab.inventory_path
    deploy = [PYINFRA, "-y", inventory, "deploys/ollama.py"]
    rows = Rows(size, extra)
    try:
        facts = [PYINFRA, "-y", inventory, "fact", "server.Hostname"]
        measured(facts, slot, env)  # the first connection to each host (host keys, caches) is not timed
        # Measured even when a host fails its client check (a loaded machine's timeouts): the rows say so.
        first = measured(deploy, slot, env, may_fail=True)
        extra["hosts' memory MB/host"] = hosts_pss_mb(slot) / size
        measured(deploy, slot, env, may_fail=True)  # finishes what a loaded first deploy left undone
        # The baseline and the fast re-run interleaved, three each, medians: a shared machine's load moves.
        pairs = [(measured(facts, slot, env), measured(deploy, slot, env, may_fail=True)) for _ in range(3)]
        rows.append(("facts only (baseline)", median_cost([f for f, _ in pairs])))
        rows.append(("first deploy, bare hosts", first))
        rows.append(("no-change re-run (fast)", median_cost([d for _, d in pairs])))
        gone = [PYINFRA, "-y", with_unreachable_host(inventory, slot), "deploys/ollama.py"]
        rows.append(("  the same, +1 unreachable host", measured(gone, slot, env, may_fail=True)))
        whole = [*deploy, "--data", "deploy_fast_rerun=false"]
        rows.append(("whole re-run", measured(whole, slot, env, may_fail=True)))
        rows.append(
            ("verify --quick", measured([FLEET, "verify", "--quick", inventory], slot, env, may_fail=True))
        )
        if "verify" not in skip:
            rows.append(("verify (full)", measured([FLEET, "verify", inventory], slot, env, may_fail=True)))
        if "rollout" not in skip:
            changed = changed_inventory(inventory)
            # A rollout state left by an earlier lab of this slot (another host list) refuses a new rollout.
            (REPO / ".fleet" / f"rollout-{Path(changed).stem}.json").unlink(missing_ok=True)
            rollout = [FLEET, "rollout", changed, "--batch", "25%"]
            rows.append(("rollout --batch 25%, a change", measured(rollout, slot, env, may_fail=True)))
    finally:
        for derived in Path(inventory).parent.glob(Path(inventory).stem + "_*.py"):
            derived.unlink()
        start = time.perf_counter()
        lifecycle.down(slot, log=False)
        extra["lab down s"] = time.perf_counter() - start
    return rows.rows, extra


class Rows:
    """Each row printed as soon as it is measured (a long run cut short keeps what it measured)."""

    def __init__(self, size: int, extra: dict[str, float]) -> None:
        self.size, self.extra, self.rows = size, extra, []  # type: ignore[var-annotated]
        print(f"\n{size} host(s): measuring", flush=True)

    def append(self, row: tuple[str, Cost]) -> None:
        self.rows.append(row)
        label, c = row
        label += f" (FAILED, exit {c.exit_status})" if c.exit_status else ""
        print(
            f"  {label}: {c.wall_s:.1f} s, controller CPU {c.controller_cpu_s:.1f} s, peak RSS "
            f"{c.controller_rss_mb:.0f} MB, hosts' CPU {c.host_cpu_s:.1f} s, load {c.load:.1f}; {self.extra}",
            flush=True,
        )


def plan_rows(size: int) -> list[tuple[str, Cost]]:
    sys.path.insert(0, str(REPO / "tests" / "unit"))
    from test_plan import KEY, fleet

    env = {**os.environ, "OLLAMA_FLEET_API_KEY_TEAM": KEY, "PYINFRA_PROGRESS": "off"}
    with tempfile.TemporaryDirectory() as tmp:
        inventory = fleet(Path(tmp), size, h1={"gateway_enabled": True})
        cost = measured([PYINFRA, "--dry", str(inventory), "deploys/ollama.py"], None, env)
    return [("plan the site, @fake hosts", cost)]


def print_table(size: int, rows: list[tuple[str, Cost]], extra: dict[str, float]) -> None:
    baseline = rows[0][1].wall_s if rows[0][0].startswith("facts") else None
    print(f"\n{size} host(s)" + "".join(f"; {k} {v:.1f}" for k, v in extra.items()))
    print(f"{'run':<32}{'wall s':>8}{'x facts':>8}{'ctl CPU ms/host':>16}{'ctl RSS MB':>11}", end="")
    print(f"{'RSS MB/host':>12}{'host CPU s':>11}{'load':>6}")
    for label, c in rows:
        label += " (FAILED)" if c.exit_status else ""
        ratio = f"{c.wall_s / baseline:8.2f}" if baseline else f"{'':>8}"
        print(
            f"{label:<32}{c.wall_s:8.1f}{ratio}{c.controller_cpu_s / size * 1000:16.0f}"
            f"{c.controller_rss_mb:11.0f}{c.controller_rss_mb / size:12.2f}{c.host_cpu_s:11.1f}{c.load:6.1f}",
            flush=True,
        )


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--sizes", default="1,8,32,64", help="host counts, comma-separated (%(default)s)")
    parser.add_argument("--slot", type=int, default=10, help="lab slot used and taken down (%(default)s)")
    parser.add_argument(
        "--skip", default="", help="comma-separated: verify (the full one), rollout (the longest, host-bound)"
    )
    parser.add_argument("--plan-only", action="store_true", help="plan against @fake hosts: no lab, no root")
    args = parser.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    if not args.plan_only:
        from ollama_fleet.lab import artifacts

        artifacts.ensure_ollama_release()
    for size in sizes:
        if args.plan_only:
            print_table(size, plan_rows(size), {})
        else:
            print_table(size, *lab_rows(size, args.slot, args.skip.split(",")))
    return 0


if __name__ == "__main__":
    sys.exit(main())
