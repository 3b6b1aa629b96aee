"""The deploy's cost on a lab fleet: first deploy from bare hosts, the no-change re-run, and a serial rollout,
each as a ratio to the first deploy measured in this run (the machine is shared and noisy).

Brings up its own lab slot (default 10) so it never touches anyone's lab, and leaves it down.

    python benchmarks/deploy_bench.py [--hosts 3] [--slot 10]
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

from ollama_fleet.lab import artifacts, lifecycle

PYINFRA = str(Path(sys.executable).parent / "pyinfra")


def timed_deploy(inventory: str, *extra: str) -> float:
    start = time.perf_counter()
    done = subprocess.run(
        [PYINFRA, "-y", inventory, "deploys/ollama.py", *extra],
        cwd=Path(__file__).resolve().parents[1],
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode != 0:
        raise SystemExit(f"deploy failed:\n{done.stdout[-3000:]}{done.stderr[-3000:]}")
    return time.perf_counter() - start


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--hosts", type=int, default=3)
    parser.add_argument("--slot", type=int, default=10)
    args = parser.parse_args()

    artifacts.ensure_ollama_release()
    lab = lifecycle.up(args.hosts, args.slot, log=False)
    try:
        first = timed_deploy(lab.inventory_path)
        again = timed_deploy(lab.inventory_path)
        serial = timed_deploy(lab.inventory_path, "--serial", "--fail-percent", "0")
    finally:
        lifecycle.down(args.slot, log=False)

    print(f"deploy of {args.hosts} lab hosts (each includes the final client-side verification)")
    print(f"{'run':<34}{'seconds':>9}{'x first':>9}")
    for label, seconds in (
        ("first deploy, bare hosts", first),
        ("re-run, no change (parallel)", again),
        ("re-run, no change (--serial)", serial),
    ):
        print(f"{label:<34}{seconds:>9.1f}{seconds / first:>9.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
