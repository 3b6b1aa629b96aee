"""Day-2 figures on a lab fleet, each a ratio to a baseline measured in the same run (the machine is noisy).

1. no-change re-run / facts-only pyinfra run (`pyinfra INV fact server.Os`), for each --hosts count: the
   fast re-run (hosts as their last verified deploy left them) and the whole one (every operation asked),
   each split into pyinfra start-up + connect, planning, and executing operations;
2. rollout of a version upgrade (canary 1, batches of --batch) / one parallel deploy of the same upgrade;
3. a failing upgrade on one host (a release whose binary exits 1): time from the start of its restart to
   the host serving the old version again, and the whole failing run / a no-change run of that host.

Brings up its own lab slot (default 10) so it never touches anyone's lab, and leaves it down.

    python benchmarks/day2_bench.py [--hosts 3,8] [--batch 3] [--slot 10]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from ollama_fleet.lab import artifacts, lifecycle
from ollama_fleet.localfiles import sha256_of

REPO = Path(__file__).resolve().parents[1]
PYINFRA = str(Path(sys.executable).parent / "pyinfra")
BASE, UPGRADE, BROKEN = "0.24.0", "0.24.1", "0.24.9"
WHOLE = ("--data", "deploy_fast_rerun=false")
RUNS = 7  # each figure a median: one run varies by a third on this shared machine
PHASES = ("--> Preparing operation", "--> Beginning operation run", "--> Results")


def run(argv: list[str], ok: bool = True) -> tuple[float, list[tuple[float, str]]]:
    """Seconds, and each stderr line with the time it arrived (seconds from the start)."""
    env = {**os.environ, "PYINFRA_PROGRESS": "off"}
    start = time.perf_counter()
    proc = subprocess.Popen(
        argv, cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True
    )
    assert proc.stderr is not None
    lines = [(time.perf_counter() - start, line.rstrip()) for line in proc.stderr]
    code = proc.wait()
    seconds = time.perf_counter() - start
    if ok and code != 0:
        raise SystemExit(f"{' '.join(argv[:4])} failed:\n" + "\n".join(t for _, t in lines[-40:]))
    return seconds, lines


def deploy(inventory: str, *extra: str, ok: bool = True) -> tuple[float, list[tuple[float, str]]]:
    return run([PYINFRA, "-y", *extra, inventory, "deploys/ollama.py"], ok=ok)


def median_of(count: int, measure: Callable[[], float]) -> float:
    return statistics.median(measure() for _ in range(count))


def phases(lines: list[tuple[float, str]], total: float) -> str:
    marks = [next((t for t, text in lines if text.startswith(p)), total) for p in PHASES]
    start, plan, execute = marks[0], marks[1] - marks[0], marks[2] - marks[1]
    return f"start+connect {start:.2f} s, plan {plan:.2f} s, operations {execute:.2f} s"


def pin(directory: Path, version: str) -> str:
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "all.py").write_text(f'ollama_version = "{version}"\n')
    return str(directory)


def broken_release(directory: Path) -> Path:
    """A release whose bin/ollama exits 1, with a valid sha256sum.txt."""
    directory.mkdir(parents=True, exist_ok=True)
    script = directory / "ollama"
    script.write_text("#!/bin/sh\nexit 1\n")
    script.chmod(0o755)
    archive = directory / "ollama-linux-amd64.tar.zst"
    with tarfile.open(directory / "release.tar", "w") as tar:
        tar.add(script, "bin/ollama")
        lib = tarfile.TarInfo("lib/ollama")
        lib.type, lib.mode = tarfile.DIRTYPE, 0o755
        tar.addfile(lib)
    subprocess.run(
        ["zstd", "-q", "--rm", "-f", str(directory / "release.tar"), "-o", str(archive)], check=True
    )
    digest = sha256_of(archive)
    (directory / "sha256sum.txt").write_text(f"{digest}  ./ollama-linux-amd64.tar.zst\n")
    script.unlink()
    directory.chmod(0o755)
    return directory


def rerun_figures(inventory: str, hosts: int) -> None:
    facts = median_of(RUNS, lambda: run([PYINFRA, "-y", inventory, "fact", "server.Os"])[0])
    for label, extra in (("fast", ()), ("whole (deploy_fast_rerun=false)", WHOLE)):
        rerun, lines = sorted(deploy(inventory, *extra) for _ in range(RUNS))[RUNS // 2]  # the median
        print(
            f"  {hosts} hosts: no-change re-run, {label}: {rerun:.2f} s / facts-only {facts:.2f} s "
            f"= {rerun / facts:.1f}x"
        )
        print(f"    {phases(lines, rerun)}")


def rollout_figures(inventory: str, hosts: int, batch: str, work: Path) -> None:
    upgrade, base = pin(work / "up", UPGRADE), pin(work / "base", BASE)
    parallel, _ = deploy(inventory, "--group-data", upgrade)
    deploy(inventory, "--group-data", base)
    state = str(work / "rollout.json")
    argv = [sys.executable, "-m", "ollama_fleet.cli", "rollout", inventory, "--canary", "lab_canary"]
    rolled, _ = run([*argv, "--batch", batch, "--state", state, "--group-data", upgrade])
    batches = 1 + -(-(hosts - 1) // int(batch))
    print(
        f"  rollout of {BASE} -> {UPGRADE} over {hosts} hosts (canary 1, batches of {batch}: {batches}) "
        f"{rolled:.1f} s / one parallel deploy {parallel:.1f} s = {rolled / parallel:.1f}x"
    )
    deploy(inventory, "--group-data", base)


def rollback_figures(inventory: str, host: str, work: Path) -> None:
    artifacts.publish_release(broken_release(work / "broken"), BROKEN)
    try:
        calm, _ = deploy(inventory, "--limit", host)
        failing, lines = deploy(
            inventory, "--limit", host, "--group-data", pin(work / "broken-pin", BROKEN), ok=False
        )
    finally:
        artifacts.unpublish_release(BROKEN)
    restart = next((t for t, text in lines if "Starting operation: Ollama service | Restart" in text), None)
    back = next((t for t, text in lines if "rolled back to" in text), None)
    if restart is None or back is None:
        raise SystemExit("the failing upgrade did not roll back:\n" + "\n".join(t for _, t in lines[-30:]))
    print(
        f"  failing upgrade on {host}: restart -> serving {BASE} again {back - restart:.1f} s; "
        f"the whole failing run {failing:.1f} s / a no-change run {calm:.1f} s = {failing / calm:.1f}x"
    )
    deploy(inventory, "--limit", host)


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--hosts", default="3,8", help="comma list of fleet sizes (%(default)s)")
    parser.add_argument("--batch", default="3")
    parser.add_argument("--slot", type=int, default=10)
    parser.add_argument("--only", choices=("rerun", "rollout", "rollback"), help="one figure only")
    args = parser.parse_args()
    sizes = [int(n) for n in args.hosts.split(",")]

    artifacts.ensure_ollama_release()
    artifacts.ensure_relabelled_release(UPGRADE)
    print("day-2 figures on lab fleets (ratios to a baseline of the same run)")
    for hosts in sizes:
        lab = lifecycle.up(hosts, args.slot, log=False)
        try:
            with tempfile.TemporaryDirectory(prefix="day2-bench-") as tmp:
                work = Path(tmp)
                work.chmod(0o755)
                deploy(lab.inventory_path)  # from bare hosts
                if args.only in (None, "rerun"):
                    rerun_figures(lab.inventory_path, hosts)
                if hosts == max(sizes) and args.only in (None, "rollout"):
                    rollout_figures(lab.inventory_path, hosts, args.batch, work)
                if hosts == max(sizes) and args.only in (None, "rollback"):
                    rollback_figures(lab.inventory_path, lab.hosts[0].name, work)
        finally:
            lifecycle.down(args.slot, log=False)
    return 0


if __name__ == "__main__":
    sys.exit(main())
