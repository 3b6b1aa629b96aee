"""How long the full client check takes on a deployed fleet, as ratios to baselines measured in this run.

Each round runs, interleaved (so the machine's load hits every mode alike):

- host, side by side: the full check of the first host as `verify` and the deploy run it (checks side by side,
  dropped ports proven after a positive control);
- host, old way (baseline): the same checks one after another, each dropped port waited out for 2 s once
  (what the check did before);
- host, --quick: the quick check of the same host (no generation, no dropped port);
- fleet, side by side / old way: every host in parallel, as `verify` does, each host checked either way.

It prints medians, the ratios, each check's median seconds side by side, and the load average before and
after (the machine is shared: compare the ratios, not the seconds, with other runs).

    python benchmarks/verify_bench.py INVENTORY [--group-data DIR] [--rounds 3] [--timeout 30]

The fleet must be deployed and healthy (run `ollama-fleet verify` first). Only the inventory's hosts are
contacted. Loading the inventory gevent-patches this process, exactly as `verify` runs.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from collections import defaultdict
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager

from ollama_fleet.verify import probes
from ollama_fleet.verify.checks import check_host
from ollama_fleet.verify.context import CheckResult
from ollama_fleet.verify.targets import load_targets


@contextmanager
def old_dropped_port_waits() -> Iterator[None]:
    """Every dropped port waited out for RAW_PORT_TIMEOUT, once, as before the positive control."""
    saved = probes.CLOSED_PORT_FLOOR, probes.CLOSED_PORT_TRIES
    probes.CLOSED_PORT_FLOOR, probes.CLOSED_PORT_TRIES = probes.RAW_PORT_TIMEOUT, 1
    try:
        yield
    finally:
        probes.CLOSED_PORT_FLOOR, probes.CLOSED_PORT_TRIES = saved


def timed(run: Callable[[], list[list[CheckResult]]]) -> tuple[float, list[list[CheckResult]]]:
    started = time.perf_counter()
    results = run()
    return time.perf_counter() - started, results


def main() -> None:
    formatter = argparse.RawDescriptionHelpFormatter
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=formatter)
    parser.add_argument("inventory")
    parser.add_argument("--group-data", action="append", default=[])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--timeout", type=float, default=30.0)
    args = parser.parse_args()
    targets = load_targets(args.inventory, group_data=args.group_data)
    first = targets[0]

    def host(concurrent: bool, quick: bool = False) -> list[list[CheckResult]]:
        return [check_host(first, args.timeout, quick=quick, concurrent=concurrent)]

    def fleet(concurrent: bool) -> list[list[CheckResult]]:
        with ThreadPoolExecutor(max_workers=len(targets)) as pool:
            return list(pool.map(lambda t: check_host(t, args.timeout, concurrent=concurrent), targets))

    def old(run: Callable[[], list[list[CheckResult]]]) -> Callable[[], list[list[CheckResult]]]:
        def wrapped() -> list[list[CheckResult]]:
            with old_dropped_port_waits():
                return run()

        return wrapped

    modes: dict[str, Callable[[], list[list[CheckResult]]]] = {
        "host, side by side": lambda: host(True),
        "host, old way": old(lambda: host(False)),
        "host, --quick": lambda: host(True, quick=True),
        f"fleet of {len(targets)}, side by side": lambda: fleet(True),
        f"fleet of {len(targets)}, old way": old(lambda: fleet(False)),
    }
    load_before = os.getloadavg()
    seconds: dict[str, list[float]] = defaultdict(list)
    check_seconds: dict[str, list[float]] = defaultdict(list)
    failures: dict[str, int] = defaultdict(int)
    for _ in range(args.rounds):
        for mode, run in modes.items():
            elapsed, results = timed(run)
            seconds[mode].append(elapsed)
            failures[mode] += sum(not r.ok for host_results in results for r in host_results)
            if mode == "host, side by side":
                for result in results[0]:
                    check_seconds[result.check].append(result.seconds)
    load_after = os.getloadavg()

    median = {mode: statistics.median(values) for mode, values in seconds.items()}
    print(f"host: {first.name}; fleet: {len(targets)} hosts; rounds: {args.rounds}, interleaved")
    print(f"load average (1, 5, 15 min) before: {load_before}, after: {load_after}, on {os.cpu_count()} CPUs")
    for mode in modes:
        print(f"  {mode:<26} median {median[mode]:6.2f} s  failed checks seen: {failures[mode]}")
    host_ratio = median["host, side by side"] / median["host, old way"]
    fleet_ratio = (
        median[f"fleet of {len(targets)}, side by side"] / median[f"fleet of {len(targets)}, old way"]
    )
    print(f"full check of one host, side by side / old way: {host_ratio:.2f}x")
    quick_ratio = median["host, side by side"] / median["host, --quick"]
    print(f"full check of one host, side by side / --quick: {quick_ratio:.2f}x")
    print(f"fleet, side by side / old way:                  {fleet_ratio:.2f}x")
    print("each check side by side (median seconds from its start to its end):")
    for check, values in check_seconds.items():
        print(f"  {check:<10} {statistics.median(values):6.2f} s")


if __name__ == "__main__":
    main()
