"""How long the client check takes, on one host, on fleets, and inside a first deploy: medians of interleaved
rounds, as ratios to baselines measured in the same run, each beside the load average it ran under.

With --slot the script brings its own labs up on that slot and takes them down again:

1. the first deploy of one bare lab host, --deploy-rounds times (a fresh 1-host lab each time), with the
   time the deploy's closing client check took (it logs it) and its share of the deploy;
2. a lab of --hosts hosts, deployed, on which each round runs, interleaved (the machine's load hits every
   mode alike):
   - host, side by side: the full check of the first host, as `verify` and the deploy run it;
   - host, old way (baseline): the same checks one after another, each dropped port waited out for 2 s once;
   - host, --quick: no generation, no dropped port;
   - verify of N hosts, for each N of --fleets: every host in parallel, as `ollama-fleet verify` runs;
   - verify of 3 hosts, old way (baseline): hosts in parallel, each host's checks one after another with
     2 s dropped-port waits (as before the checks ran side by side);
   - verify of N hosts, no generation: the same without stream, chat and gpu;
   - stream of 3 hosts, one after another / all at once: only the stream check (and what it needs) on the
     first 3 hosts, to tell what the check costs from what three Ollamas generating on shared cores cost.
   The last round's timeline of each fleet mode (every check's start and end, per host) is printed too;
   then, apart (each setting reloads the runners), 3 hosts' 64-token streams alone and at once with the
   runners on 2 threads (Ollama's default: the cores it sees) and on 1.

    python benchmarks/verify_bench.py --slot 4 [--hosts 8] [--fleets 3,8] [--rounds 3] [--deploy-rounds 3]
    python benchmarks/verify_bench.py INVENTORY [--fleets 3] [--rounds 3]   # a fleet already deployed

Only lab hosts and loopback are contacted. Loading an inventory gevent-patches this process, exactly as
`verify` runs; so with --slot the verify rounds run in a child process.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import httpx

REPO = Path(__file__).resolve().parents[1]
PYINFRA = str(Path(sys.executable).parent / "pyinfra")
RELEASES = "trixie,bookworm"  # the e2e tier's mixed lab
GENERATION = frozenset({"stream", "chat", "gpu"})
STREAM_ONLY = frozenset({"tls", "root", "auth", "models", "stream"})
CHECK_TOOK = re.compile(r"full client check took ([0-9.]+) s")

if TYPE_CHECKING:
    from ollama_fleet.verify.context import CheckResult
    from ollama_fleet.verify.targets import Target

    Results = list[list[CheckResult]]


@dataclass
class Mode:
    run: Callable[[list[tuple[str, str, float, float]]], Results]
    seconds: list[float] = field(default_factory=list)
    loads: list[float] = field(default_factory=list)
    failures: int = 0
    timeline: list[tuple[str, str, float, float]] = field(default_factory=list)


def load1() -> float:
    return os.getloadavg()[0]


def deploy(inventory: str) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(
        [PYINFRA, "-y", inventory, "deploys/ollama.py"],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode != 0:
        raise SystemExit(f"deploy failed:\n{done.stdout[-3000:]}{done.stderr[-3000:]}")
    return done


@contextmanager
def lab_of(hosts: int, slot: int) -> Iterator[str]:
    from ollama_fleet.lab import lifecycle
    from ollama_fleet.lab.releases import parse_releases

    try:
        lab = lifecycle.up(hosts, slot, log=False, releases=parse_releases(RELEASES))
        # A fresh fleet CA for each lab: the last one's name constraints name only that lab's hosts.
        shutil.rmtree(Path(lab.key_path).parent / "pki", ignore_errors=True)
        yield lab.inventory_path
    finally:
        lifecycle.down(slot, log=False)


def first_deploys(slot: int, rounds: int) -> list[tuple[float, float, float]]:
    """(deploy seconds, client check seconds, load before) of the first deploy of one bare host, per round."""
    measured = []
    for _ in range(rounds):
        with lab_of(1, slot) as inventory:
            load = load1()
            started = time.perf_counter()
            done = deploy(inventory)
            seconds = time.perf_counter() - started
        took = CHECK_TOOK.findall(done.stdout + done.stderr)
        if len(took) != 1:
            raise SystemExit(f"expected one 'full client check took' line, found {took}")
        measured.append((seconds, float(took[0]), load))
    return measured


@contextmanager
def old_dropped_port_waits() -> Iterator[None]:
    """Every dropped port waited out for RAW_PORT_TIMEOUT, once, as before the positive control."""
    from ollama_fleet.verify import probes

    saved = probes.CLOSED_PORT_FLOOR, probes.CLOSED_PORT_TRIES
    probes.CLOSED_PORT_FLOOR, probes.CLOSED_PORT_TRIES = probes.RAW_PORT_TIMEOUT, 1
    try:
        yield
    finally:
        probes.CLOSED_PORT_FLOOR, probes.CLOSED_PORT_TRIES = saved


def verify_modes(inventory: str, fleets: Sequence[int], timeout: float) -> dict[str, Mode]:
    from ollama_fleet.verify.checks import CHECK_NAMES, check_host
    from ollama_fleet.verify.fleet import verify_fleet
    from ollama_fleet.verify.targets import load_targets

    targets = load_targets(inventory)
    first, three = targets[0], targets[:3]
    no_generation = [name for name in CHECK_NAMES if name not in GENERATION]

    def fleet(
        hosts: Sequence[Target], only: Sequence[str] | frozenset[str] | None = None, concurrent: bool = True
    ) -> Callable[[list[tuple[str, str, float, float]]], Results]:
        def run(timeline: list[tuple[str, str, float, float]]) -> Results:
            started = time.perf_counter()

            def seen(target: Target, result: CheckResult) -> None:
                end = time.perf_counter() - started
                timeline.append((target.name, result.check, end - result.seconds, end))

            if concurrent:
                report = verify_fleet(hosts, timeout, on_result=seen, only=only)
                return [list(host.results) for host in report.hosts]
            with old_dropped_port_waits(), ThreadPoolExecutor(max_workers=len(hosts)) as pool:
                return list(pool.map(lambda t: check_host(t, timeout, seen, concurrent=False), hosts))

        return run

    def one_after_another(hosts: Sequence[Target], only: frozenset[str]) -> Callable[..., Results]:
        def run(timeline: list[tuple[str, str, float, float]]) -> Results:
            return [check_host(t, timeout, only=only) for t in hosts]

        return run

    def host(quick: bool = False, concurrent: bool = True) -> Callable[..., Results]:
        def run(timeline: list[tuple[str, str, float, float]]) -> Results:
            if concurrent:
                return [check_host(first, timeout, quick=quick)]
            with old_dropped_port_waits():
                return [check_host(first, timeout, concurrent=False)]

        return run

    modes = {
        "host, side by side": Mode(host()),
        "host, old way": Mode(host(concurrent=False)),
        "host, --quick": Mode(host(quick=True)),
    }
    for size in fleets:
        modes[f"verify of {size} hosts"] = Mode(fleet(targets[:size]))
        modes[f"verify of {size} hosts, no generation"] = Mode(fleet(targets[:size], no_generation))
    modes["verify of 3 hosts, old way"] = Mode(fleet(three, concurrent=False))
    modes["stream of 3 hosts, one after another"] = Mode(one_after_another(three, STREAM_ONLY))
    modes["stream of 3 hosts, all at once"] = Mode(fleet(three, STREAM_ONLY))
    return modes


def native_stream(target: Target, threads: int, timeout: float) -> float:
    """Seconds for one 64-token stream through /api/chat with options.num_thread (the OpenAI route that
    verify uses takes no options): to tell the runners' own threads apart from the check."""
    from ollama_fleet.verify import probes

    key = target.settings.auth.keys[0].key.get_secret_value()
    body = {
        "model": target.models[0],
        "messages": [{"role": "user", "content": "Say hello to the fleet."}],
        "options": {"num_predict": 64, "num_thread": threads},
    }
    verify = probes.client_ssl_context(target.ca_file)
    with httpx.Client(base_url=target.base_url, verify=verify, trust_env=False, timeout=timeout) as client:
        started = time.perf_counter()
        headers = {"Authorization": f"Bearer {key}"}
        with client.stream("POST", "/api/chat", json=body, headers=headers) as response:
            response.raise_for_status()
            for _ in response.iter_bytes():
                pass
        return time.perf_counter() - started


def runner_threads(hosts: Sequence[Target], rounds: int, timeout: float) -> None:
    """After the rounds (each num_thread reloads the runner): 3 hosts' streams alone and at once, with the
    runners on Ollama's default thread count here (2, the cores it sees) and on 1."""
    print("the runners' threads: 64-token streams through /api/chat, alone (summed) and on 3 hosts at once")
    for threads in (2, 1):
        for target in hosts:
            native_stream(target, threads, timeout)  # loads the runner with these options
        alone, together, loads = [], [], []
        for _ in range(rounds):
            loads.append(load1())
            alone.append(sum(native_stream(t, threads, timeout) for t in hosts))
            started = time.perf_counter()
            with ThreadPoolExecutor(max_workers=len(hosts)) as pool:
                list(pool.map(native_stream, hosts, [threads] * len(hosts), [timeout] * len(hosts)))
            together.append(time.perf_counter() - started)
        print(
            f"  num_thread {threads}: one after another {median(alone):.2f} s, at once "
            f"{median(together):.2f} s ({median(together) / median(alone):.1f}x), load {median(loads):.1f}"
        )


def run_rounds(modes: dict[str, Mode], rounds: int) -> None:
    for _ in range(rounds):
        for mode in modes.values():
            mode.loads.append(load1())
            mode.timeline = []
            started = time.perf_counter()
            results = mode.run(mode.timeline)
            mode.seconds.append(time.perf_counter() - started)
            mode.failures += sum(not r.ok for host in results for r in host)


def median(values: Sequence[float]) -> float:
    return statistics.median(values)


def print_deploys(measured: list[tuple[float, float, float]]) -> None:
    deploys, checks, loads = zip(*measured, strict=True)
    shares = [check / seconds for seconds, check, _ in measured]
    print(f"first deploy of one bare lab host, {len(measured)} rounds (a fresh lab each):")
    print(
        f"  deploy median {median(deploys):.2f} s, its client check median {median(checks):.2f} s, "
        f"share median {median(shares) * 100:.0f}% (rounds: "
        + ", ".join(f"{c:.2f}/{d:.2f} s" for d, c, _ in measured)
        + f"); load (1 min) median {median(loads):.1f}"
    )


def print_modes(modes: dict[str, Mode]) -> None:
    print(f"{'mode':<42}{'median':>9}  {'load':>5}  failed checks seen")
    for name, mode in modes.items():
        print(f"{name:<42}{median(mode.seconds):>8.2f}s  {median(mode.loads):>5.1f}  {mode.failures}")

    def ratio(a: str, b: str) -> None:
        if a in modes and b in modes:
            print(f"  {a} / {b}: {median(modes[a].seconds) / median(modes[b].seconds):.2f}x")

    print("ratios:")
    ratio("host, side by side", "host, old way")
    ratio("host, side by side", "host, --quick")
    ratio("verify of 3 hosts", "verify of 3 hosts, old way")
    ratio("verify of 3 hosts", "host, side by side")
    ratio("verify of 3 hosts, no generation", "verify of 3 hosts")
    ratio("stream of 3 hosts, all at once", "stream of 3 hosts, one after another")
    for name, mode in modes.items():
        if name.startswith("verify of") and "old way" not in name:
            print(f"timeline of the last round, {name} (check: start-end, seconds from the start):")
            for host in dict.fromkeys(h for h, *_ in mode.timeline):
                rows = sorted((s, e, c) for h, c, s, e in mode.timeline if h == host)
                print(f"  {host}: " + "  ".join(f"{c} {s:.2f}-{e:.2f}" for s, e, c in rows))


def main() -> None:
    formatter = argparse.RawDescriptionHelpFormatter
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=formatter)
    parser.add_argument("inventory", nargs="?", help="a deployed fleet (without --slot)")
    parser.add_argument("--slot", type=int, help="bring labs up on this slot (and down again)")
    parser.add_argument("--hosts", type=int, default=8, help="hosts of the lab for the verify rounds")
    parser.add_argument("--fleets", default="3,8", help="fleet sizes verified, e.g. 3,8")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--deploy-rounds", type=int, default=3)
    parser.add_argument("--timeout", type=float, default=30.0)
    args = parser.parse_args()
    if (args.slot is None) == (args.inventory is None):
        parser.error("give either an INVENTORY or --slot")
    fleets = [int(n) for n in args.fleets.split(",")]
    print(f"load average before: {os.getloadavg()} on {os.cpu_count()} CPUs")
    if args.slot is None:
        from ollama_fleet.verify.targets import load_targets

        modes = verify_modes(args.inventory, [n for n in fleets if n > 0], args.timeout)
        run_rounds(modes, args.rounds)
        print(f"rounds: {args.rounds}, interleaved; load average after: {os.getloadavg()}")
        print_modes(modes)
        runner_threads(load_targets(args.inventory)[:3], args.rounds, args.timeout)
        return
    from ollama_fleet.lab import artifacts

    artifacts.ensure_ollama_release()
    deploys = first_deploys(args.slot, args.deploy_rounds) if args.deploy_rounds else []
    if deploys:
        print_deploys(deploys)
    with lab_of(args.hosts, args.slot) as inventory:
        deploy(inventory)
        # The verify rounds in a child: loading the inventory gevent-patches the process that loads it,
        # and this one still has a lab to take down.
        sizes = ",".join(str(n) for n in fleets if n <= args.hosts)
        rounds = ["--rounds", str(args.rounds), "--timeout", str(args.timeout), "--fleets", sizes]
        subprocess.run([sys.executable, __file__, inventory, *rounds], cwd=REPO, check=True)


if __name__ == "__main__":
    main()
