"""The gateway under a steady load of small completions, on a lab fleet of its own (lab only: stops a host).

The load is bounded: --requests small chat completions, as many at a time as the fleet has slots (the
sum of the hosts' OLLAMA_NUM_PARALLEL: the gateway caps each host there and answers 503
no_host_available beyond it), each worker one keep-alive client like an app's pool.

1. throughput: the load through the gateway over every host against the same load straight to one host
   (the baseline; Ollama queues what is over its slots), in alternating rounds; printed as requests/s and
   the ratio. The lab's hosts share this machine's cores, and llama.cpp's threads spin when there are more
   of them than cores, so the figure model is `tiny-1t` (tiny with num_thread 1: each host computes on one
   core, as it would on a machine of its own); `tiny` (a thread per core on every host) is printed too.
2. failover: through the gateway again, at the slots left without one host; once a third of it is done,
   nginx and Ollama are stopped on that host (not the gateway: it refuses connections from then on).
   Printed: failed requests among those started after the stop finished (target 0), among those in
   flight while it happened, and the slowest request after it. The host is started again at the end.
3. cold starts: the model unloaded on every host, then loaded on one (a completion straight to it), then
   --cold-requests completions through the gateway one after another: wall time, and how many hosts ended
   up loading the model. With gateway_prefer_loaded (as deployed) against the gateway redeployed with it
   off (least_conn alone), in alternating rounds; the gateway is redeployed as it was at the end.

Brings up its own lab slot (default 11: nobody else's lab is touched) with the first host in the group
`gateway`, and leaves it down.

    python benchmarks/gateway_load.py [--hosts 3] [--requests 600] [--cold-requests 6] [--slot 11]
                                      [--parts throughput,failover,cold]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import httpx

from ollama_fleet.gateway import LOADED_CACHE_VALID_S
from ollama_fleet.lab import artifacts, lifecycle
from ollama_fleet.lab.state import LabState
from ollama_fleet.verify.context import make_client
from ollama_fleet.verify.targets import Target, load_gateway_targets, load_targets

REPO = Path(__file__).resolve().parents[1]
PYINFRA = str(Path(sys.executable).parent / "pyinfra")
ONE_THREAD = {"name": "tiny-1t", "base": "tiny", "parameters": {"num_thread": 1}}
OLLAMA = "http://127.0.0.1:11434"  # on a lab host


@dataclass(frozen=True)
class Outcome:
    started: float
    ended: float
    error: str  # "" when the completion came back 200 with a choice


def completion(client: httpx.Client, key: str, model: str) -> str:
    body = {"model": model, "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 4}
    try:
        response = client.post("/v1/chat/completions", json=body, headers={"Authorization": f"Bearer {key}"})
    except httpx.HTTPError as exc:
        return f"{type(exc).__name__}: {exc}"
    if response.status_code != 200:
        return f"HTTP {response.status_code}: {response.text[:120]}"
    return "" if response.json().get("choices") else "no choice in the answer"


def steady_load(
    target: Target,
    model: str,
    requests: int,
    workers: int,
    at: Callable[[int], None] = lambda done: None,
) -> list[Outcome]:
    """`requests` completions, `workers` at a time; `at(n)` is called (in a worker) as request n starts."""
    key = target.settings.auth.keys[0].key.get_secret_value()
    outcomes: list[Outcome] = []
    counter = iter(range(requests))
    lock = threading.Lock()

    def worker() -> None:
        with make_client(target, 120) as client:
            while True:
                with lock:
                    n = next(counter, None)
                if n is None:
                    return
                at(n)
                started = time.perf_counter()
                error = completion(client, key, model)
                with lock:
                    outcomes.append(Outcome(started, time.perf_counter(), error))

    threads = [threading.Thread(target=worker) for _ in range(workers)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return outcomes


def rate(outcomes: list[Outcome]) -> float:
    ok = [o for o in outcomes if not o.error]
    if len(ok) != len(outcomes):
        raise SystemExit(
            f"{len(outcomes) - len(ok)} request(s) failed, e.g. {next(o.error for o in outcomes if o.error)}"
        )
    return len(ok) / (max(o.ended for o in ok) - min(o.started for o in ok))


def write_inventory(lab: LabState, path: Path) -> Path:
    one_thread = (
        f"\n_ONE = {ONE_THREAD!r}\n"
        "def _one(hosts):\n"
        "    return [(n, {**d, 'models_custom': [*d.get('models_custom', _lab['models_custom']), _ONE]})"
        " for n, d in hosts]\n"
        "lab_canary, lab_rest = _one(lab_canary), _one(lab_rest)\n"
        "lab_hosts = lab_canary + lab_rest\n"
    )
    path.write_text(Path(lab.inventory_path).read_text() + one_thread + "gateway = [lab_canary[0][0]]\n")
    return path


def ssh(lab: LabState, host: str, command: str) -> None:
    subprocess.run(lab.ssh_command(host, command), check=True, capture_output=True, timeout=120)


def slots(hosts: list[Target]) -> int:
    return sum(h.settings.num_parallel for h in hosts)


def throughput(
    gateway: Target, host: Target, model: str, requests: int, workers: int, rounds: int = 5
) -> None:
    steady_load(gateway, model, workers * 4, workers)  # warm: the model loaded on every host
    steady_load(host, model, workers * 2, workers)
    direct, through = [], []
    for _ in range(rounds):  # alternating, so a noisy minute costs both sides alike
        direct.append(rate(steady_load(host, model, requests // rounds, workers)))
        through.append(rate(steady_load(gateway, model, requests // rounds, workers)))
    d, g = statistics.median(direct), statistics.median(through)
    print(
        f"  throughput of {model}, {requests} completions {workers} at a time: via the gateway over every "
        f"host {g:.1f}/s vs straight to {host.name} {d:.1f}/s = {g / d:.2f} x (median of {rounds} rounds)"
    )


def failover(lab: LabState, gateway: Target, victim: str, model: str, requests: int, workers: int) -> None:
    stopped: dict[str, float] = {}

    def stop_once(n: int) -> None:
        if n == requests // 3:
            stopped["begin"] = time.perf_counter()
            ssh(lab, victim, "systemctl stop nginx ollama")
            stopped["end"] = time.perf_counter()

    try:
        outcomes = steady_load(gateway, model, requests, workers, at=stop_once)
    finally:
        ssh(lab, victim, "systemctl start ollama nginx")
    after = [o for o in outcomes if o.started >= stopped["end"]]
    during = [o for o in outcomes if o.started < stopped["end"] and o.ended > stopped["begin"]]
    failed_after = [o for o in after if o.error]
    slowest = max(o.ended - o.started for o in after)
    typical = statistics.median(o.ended - o.started for o in after)
    print(
        f"  failover, {victim} stopped (nginx and Ollama) after {requests // 3} of {requests} completions: "
        f"failed after the stop {len(failed_after)} of {len(after)} (target 0); "
        f"in flight during it {sum(1 for o in during if o.error)} of {len(during)}; "
        f"after it median {typical * 1000:.0f} ms, slowest {slowest * 1000:.0f} ms"
    )
    for outcome in failed_after[:3]:
        print(f"    e.g. {outcome.error}")


def loaded_hosts(lab: LabState, model: str) -> list[str]:
    """The lab hosts whose Ollama has `model` loaded (its /api/ps, read on the host)."""
    found = []
    for host in lab.hosts:
        done = subprocess.run(
            lab.ssh_command(host.name, f"curl -sf {OLLAMA}/api/ps"),
            capture_output=True,
            text=True,
            timeout=60,
        )
        if f'"name":"{model}:latest"' in done.stdout.replace(" ", ""):
            found.append(host.name)
    return found


def unload_everywhere(lab: LabState, model: str) -> None:
    body = f'{{"model": "{model}", "keep_alive": 0}}'
    for host in lab.hosts:
        ssh(lab, host.name, f"curl -sf {OLLAMA}/api/generate -d '{body}'")
    deadline = time.monotonic() + 60
    while loaded_hosts(lab, model):
        if time.monotonic() > deadline:
            raise SystemExit(f"{model} still loaded on {loaded_hosts(lab, model)}")
        time.sleep(0.5)


def cold_round(lab: LabState, gateway: Target, warm: Target, model: str, requests: int) -> tuple[float, int]:
    """(seconds for `requests` completions through the gateway one after another, hosts that loaded the
    model) after it was unloaded everywhere and loaded on `warm` alone."""
    unload_everywhere(lab, model)
    outcome = steady_load(warm, model, 1, 1)
    if outcome[0].error:
        raise SystemExit(f"{warm.name}: {outcome[0].error}")
    time.sleep(LOADED_CACHE_VALID_S + 1)  # the hosts' loaded checks see /api/ps as it is now
    outcomes = steady_load(gateway, model, requests, 1)
    failed = [o.error for o in outcomes if o.error]
    if failed:
        raise SystemExit(f"{len(failed)} completion(s) failed, e.g. {failed[0]}")
    return max(o.ended for o in outcomes) - min(o.started for o in outcomes), len(loaded_hosts(lab, model))


def redeploy_gateway(inventory: str, gateway: Target, *data: str) -> None:
    argv = [PYINFRA, "-y", inventory, "deploys/ollama.py", "--limit", gateway.settings.host]
    argv += [arg for item in data for arg in ("--data", item)]
    done = subprocess.run(argv, cwd=REPO, capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit("redeploy of the gateway failed:\n" + done.stderr[-3000:])


def cold_starts(
    lab: LabState, inventory: str, gateway: Target, warm: Target, model: str, requests: int, rounds: int = 3
) -> None:
    prefer: list[tuple[float, int]] = []
    alone: list[tuple[float, int]] = []
    try:
        for _ in range(rounds):  # alternating, each side with the gateway deployed its way
            prefer.append(cold_round(lab, gateway, warm, model, requests))
            redeploy_gateway(inventory, gateway, "gateway_prefer_loaded=false")
            alone.append(cold_round(lab, gateway, warm, model, requests))
            redeploy_gateway(inventory, gateway)
    finally:
        redeploy_gateway(inventory, gateway)
    p, a = (statistics.median(seconds for seconds, _ in runs) for runs in (prefer, alone))
    print(
        f"  cold starts: {model} loaded on {warm.name} alone, then {requests} completions one after another "
        f"through the gateway: preferring loaded hosts {p:.2f} s ({sorted(n for _, n in prefer)} host(s) "
        f"loaded it) vs least_conn alone {a:.2f} s ({sorted(n for _, n in alone)} host(s)) = {p / a:.2f} x "
        f"(median of {rounds} rounds each)"
    )


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--hosts", type=int, default=3)
    parser.add_argument("--requests", type=int, default=600)
    parser.add_argument("--slot", type=int, default=11)
    parser.add_argument("--cold-requests", type=int, default=6)
    parser.add_argument("--parts", default="throughput,failover,cold")
    args = parser.parse_args()
    parts = set(args.parts.split(","))
    artifacts.ensure_ollama_release()
    lab = lifecycle.up(args.hosts, args.slot, log=False)
    try:
        with tempfile.TemporaryDirectory(prefix="gateway-load-") as tmp:
            inventory = str(write_inventory(lab, Path(tmp) / "fleet.py"))
            deployed = subprocess.run(
                [PYINFRA, "-y", inventory, "deploys/ollama.py"], cwd=REPO, capture_output=True, text=True
            )
            if deployed.returncode != 0:
                why = [
                    line for line in deployed.stderr.splitlines() if "ollama-fleet" in line or "rror" in line
                ]
                raise SystemExit("deploy failed:\n" + "\n".join(why[-20:]))
            hosts = load_targets(inventory)
            gateway = load_gateway_targets(inventory)[0]
            print(
                f"gateway {gateway.name}, {len(hosts)} hosts (lab slot {args.slot}, {os.cpu_count()} cores)"
            )
            one = str(ONE_THREAD["name"])
            if "throughput" in parts:
                throughput(gateway, hosts[-1], one, args.requests, slots(hosts))
                throughput(gateway, hosts[-1], "tiny", args.requests // 2, slots(hosts))
            if "failover" in parts:
                failover(lab, gateway, hosts[-1].name, one, args.requests, slots(hosts[:-1]))
            if "cold" in parts:
                cold_starts(lab, inventory, gateway, hosts[-1], "tiny", args.cold_requests)
    finally:
        lifecycle.down(args.slot, log=False)
    return 0


if __name__ == "__main__":
    sys.exit(main())
