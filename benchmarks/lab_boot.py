"""`lab up` to all hosts SSH-ready (and `systemctl is-system-running` = running) for 1, 3 and 8 hosts, memory
per idle host and `lab down` time, each as a ratio to the 1-host lab measured in this run.

Caches (base rootfs, mirror .debs) are made warm first and timed separately; the figures are then the cost
of the lab itself. Runs in its own slot (default 9) so it never touches anyone's lab, and leaves it down.

    python benchmarks/lab_boot.py [--sizes 1,3,8] [--repeats 2] [--idle 10] [--slot 9]
"""

from __future__ import annotations

import argparse
import statistics
import time
from dataclasses import dataclass
from pathlib import Path

from ollama_fleet.lab import cgroups, lifecycle, mirror, rootfs

MB = 1024 * 1024


@dataclass
class Run:
    hosts: int
    up_s: float
    boot_s: float
    down_s: float
    usage_mb: float
    """Mean memory charged per idle host (memory.usage_in_bytes / memory.current: includes page cache)."""
    anon_mb: float
    """Mean anonymous memory per idle host (total_rss / anon)."""


def one_run(hosts: int, slot: int, idle: float) -> Run:
    start = time.perf_counter()
    lab = lifecycle.up(hosts, slot, log=False)
    up_s = time.perf_counter() - start
    try:
        time.sleep(idle)  # let boot-time work finish so the figure is an idle host
        paths = [[Path(p) for p in host.cgroups] for host in lab.hosts]
        usage = [cgroups.memory_bytes(p) or 0 for p in paths]
        anon = [cgroups.memory_anon_bytes(p) or 0 for p in paths]
    finally:
        start = time.perf_counter()
        lifecycle.down(slot, log=False)
        down_s = time.perf_counter() - start
    return Run(
        hosts, up_s, lab.timings["boot_to_ssh_ready_s"], down_s, statistics.mean(usage) / MB,
        statistics.mean(anon) / MB,
    )  # fmt: skip


def median_run(hosts: int, slot: int, idle: float, repeats: int) -> Run:
    runs = [one_run(hosts, slot, idle) for _ in range(repeats)]
    return Run(
        hosts,
        statistics.median(r.up_s for r in runs),
        statistics.median(r.boot_s for r in runs),
        statistics.median(r.down_s for r in runs),
        statistics.median(r.usage_mb for r in runs),
        statistics.median(r.anon_mb for r in runs),
    )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--sizes", default="1,3,8")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--idle", type=float, default=10.0, help="seconds idle before reading memory")
    parser.add_argument("--slot", type=int, default=9)
    args = parser.parse_args()
    sizes = [int(size) for size in args.sizes.split(",")]

    start = time.perf_counter()
    base = rootfs.ensure_base()
    mirror.ensure_debs(base)
    print(f"caches (base rootfs + mirror .debs) ready in {time.perf_counter() - start:.2f}s (warm when ~0)")

    runs = [median_run(size, args.slot, args.idle, args.repeats) for size in sizes]
    baseline = runs[0]
    print(f"\nmedian of {args.repeats} runs per size; ratios are to the {baseline.hosts}-host lab\n")
    header = (
        f"{'hosts':>5} {'up->ready s':>11} {'x base':>7} {'s/host':>7} {'boot s':>7} {'down s':>7} "
        f"{'x base':>7} {'MB/host':>8} {'anon MB/host':>12} {'x base':>7}"
    )
    print(header)
    for run in runs:
        print(
            f"{run.hosts:>5} {run.up_s:>11.2f} {run.up_s / baseline.up_s:>7.2f} {run.up_s / run.hosts:>7.2f} "
            f"{run.boot_s:>7.2f} {run.down_s:>7.2f} {run.down_s / baseline.down_s:>7.2f} "
            f"{run.usage_mb:>8.1f} {run.anon_mb:>12.1f} {run.anon_mb / baseline.anon_mb:>7.2f}"
        )
    last = runs[-1]
    marginal = (last.up_s - baseline.up_s) / max(1, last.hosts - baseline.hosts)
    print(
        f"\nmarginal cost of one more host: {marginal:.2f}s of `up` "
        f"({marginal / baseline.up_s:.2f} x the 1-host lab)"
    )


if __name__ == "__main__":
    main()
