"""How long `ollama-fleet verify` takes on a deployed fleet, as ratios to baselines measured in this run.

- fleet: all hosts checked in parallel (as `verify` does) vs the baseline of one host after another;
- per check: its median share of one host's verification time (where the time goes);
- stream: time to the first chunk as a fraction of the time to the last (unbuffered: far below 0.5).

    python benchmarks/verify_bench.py INVENTORY [--group-data DIR] [--rounds 3] [--timeout 30]

The fleet must be deployed and healthy (run `ollama-fleet verify` first). Only the inventory's hosts are
contacted. Loading the inventory gevent-patches this process, exactly as `verify` runs.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections import defaultdict

from ollama_fleet.verify.checks import check_host
from ollama_fleet.verify.fleet import verify_fleet
from ollama_fleet.verify.targets import Target, load_targets


def sequential(targets: list[Target], timeout: float) -> float:
    started = time.perf_counter()
    for target in targets:
        check_host(target, timeout)
    return time.perf_counter() - started


def main() -> None:
    formatter = argparse.RawDescriptionHelpFormatter
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=formatter)
    parser.add_argument("inventory")
    parser.add_argument("--group-data", action="append", default=[])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--timeout", type=float, default=30.0)
    args = parser.parse_args()
    targets = load_targets(args.inventory, group_data=args.group_data)

    parallel_times, sequential_times = [], []
    check_seconds: dict[str, list[float]] = defaultdict(list)
    host_seconds: list[float] = []
    first_share: list[float] = []
    failures = 0
    for _ in range(args.rounds):
        report = verify_fleet(targets, args.timeout)
        parallel_times.append(report.seconds)
        failures += len(report.failures())
        for host in report.hosts:
            host_seconds.append(sum(r.seconds for r in host.results))
            for result in host.results:
                check_seconds[result.check].append(result.seconds)
                if result.check == "stream" and result.ok:
                    first_share.append(float(result.metrics["first_ms"]) / float(result.metrics["last_ms"]))
        sequential_times.append(sequential(targets, args.timeout))

    parallel, serial = statistics.median(parallel_times), statistics.median(sequential_times)
    per_host = statistics.median(host_seconds)
    print(f"hosts: {len(targets)}, rounds: {args.rounds}, failed checks seen: {failures}")
    print(f"fleet, parallel:            {parallel:6.2f} s  = {parallel / serial:.2f} x one-after-another")
    print(f"fleet, one after another:   {serial:6.2f} s  (baseline)")
    print(f"one host (median):          {per_host:6.2f} s")
    for check, seconds in check_seconds.items():
        median = statistics.median(seconds)
        print(f"  {check:<10} {median:6.2f} s  = {median / per_host:.2f} of a host's time")
    if first_share:
        print(
            f"stream first chunk / last chunk: median {statistics.median(first_share):.3f}, "
            f"max {max(first_share):.3f} (buffered: ~1.0)"
        )


if __name__ == "__main__":
    main()
