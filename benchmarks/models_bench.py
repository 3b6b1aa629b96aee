"""Models over the LAN (issue 10): bytes and time of a registry model reaching a fleet, with and without seed.

A benchmark model of --size-mb MB is published in the lab mirror's registry (`<mirror>/library/fleet-bench`):
its model layer is the lab's tiny GGUF followed by random bytes up to the size (the deploy ends with a chat
with every configured model, so the model must load; llama.cpp ignores bytes after the last tensor, and
random bytes cannot be compressed on the way). On every host, iptables accounting rules at the top of INPUT
count what arrives from the mirror (the gateway's port 8080: "upstream") and from any seed (source port
models_lan_port, 11435: "LAN"); the counters are IP bytes, so TCP/IP headers add a little, and so does
Ollama's first GET of each blob (for its Location), whose unread body it cuts off.

For N in --hosts (1, 3, 8), each from cold (the model removed from every host, its blob gone):
1. upstream bytes without a seed / model size: every host pulls from the registry (expected N);
2. upstream bytes with models_seed_host=lab-1 / model size: only the seed pulls from the registry (target
   1.0), and LAN bytes with the seed / model size: the other hosts pull from the seed (expected N-1);
3. time of each deploy: the whole pyinfra run ("wall") and its model pulls alone ("pulls": from the start
   of the first pull operation to the start of the next operation; with a seed, the seed's pull, then the
   others' pulls from it, in parallel), with the share of this machine's cores busy during the pulls (every
   lab host runs on them: near 100%, the pulls wait for CPU, not for the LAN); the ratios seed time at the
   largest N / at 1 host (target <= 2), and no-seed time / seed time at the largest N;
4. a second, identical seeded deploy of the largest N: the bytes it moves (target 0: a manifest check each
   is all) and its time.

Each configuration is deployed once to every host before it is measured (then the model is removed), so
the measured deploys differ only by the pull: the model's name in the health check, and the seed's nginx
server and ufw rule, are already in place. Each deploy ends with the deploy's own client check of every host
(chat and stream included): "check" is that operation's time, also in every wall time. With a seed, the
seed's pull and the others' pulls from it are two operations, one after the other.

Brings up its own lab slot (default 12) with --hosts' largest count, and leaves it down (also on failure);
the registry files it adds are removed.

    python benchmarks/models_bench.py [--hosts 1,3,8] [--size-mb 300] [--slot 12] [--json]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path

from ollama_fleet.lab import lifecycle, registry
from ollama_fleet.lab.artifacts import ensure_tiny_model
from ollama_fleet.lab.plan import MIRROR_PORT
from ollama_fleet.lab.state import LabState

REPO = Path(__file__).resolve().parents[1]
PYINFRA = str(Path(sys.executable).parent / "pyinfra")
REPOSITORY, TAG = "library/fleet-bench", "latest"
LAN_PORT = 11435  # group_data/all.py models_lan_port
MODELS_DIR = "/usr/share/ollama/.ollama/models"  # group_data/all.py ollama_models_dir
UPSTREAM, LAN = "bench-upstream", "bench-lan"
MB = 1_000_000


def progress(text: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {text}", file=sys.stderr, flush=True)


# --- the benchmark model in the lab registry ----------------------------------------------------------------


@dataclass(frozen=True)
class BenchModel:
    name: str  # as models_pull names it and /api/tags lists it: <mirror host:port>/library/fleet-bench:latest
    registry: str  # <mirror host:port>
    digest: str  # sha256:<hex> of the model layer
    size: int  # bytes of the model layer


def model_layer(size: int) -> bytes:
    """The tiny GGUF (it loads and answers a chat) padded with random bytes to `size` bytes."""
    head = ensure_tiny_model().read_bytes()
    if size <= len(head):
        raise SystemExit(f"--size-mb must exceed the tiny GGUF's {len(head)} bytes")
    return head + os.urandom(size - len(head))


def publish_model(registry_host: str, size: int) -> BenchModel:
    data = model_layer(size)
    layer = registry.blob_of(data, registry.MODEL_MEDIA_TYPE)
    details = registry.gguf_details(ensure_tiny_model())
    files = registry.registry_files(layer, details, REPOSITORY, TAG)
    files[registry.blob_path(layer.digest, REPOSITORY)] = data
    root = registry.registry_dir()
    for path, content in files.items():
        (root / path).parent.mkdir(parents=True, exist_ok=True)
        (root / path).write_bytes(content)
    return BenchModel(f"{registry_host}/{REPOSITORY}:{TAG}", registry_host, layer.digest, layer.size)


def unpublish_model() -> None:
    """Every file publish_model wrote lives under the repository's own directory."""
    shutil.rmtree(registry.registry_dir() / REPOSITORY, ignore_errors=True)


# --- hosts over ssh -----------------------------------------------------------------------------------------


def on_hosts(lab: LabState, hosts: list[str], command: str | Callable[[str], str]) -> dict[str, str]:
    """Run `command` (or command(host)) on each host in parallel; stdout by host, SystemExit on a failure."""

    def one(host: str) -> str:
        text = command(host) if callable(command) else command
        done = subprocess.run(lab.ssh_command(host, text), capture_output=True, text=True, timeout=300)
        if done.returncode != 0:
            raise SystemExit(f"{host}: {text}: exit {done.returncode}: {done.stdout}{done.stderr}")
        return done.stdout

    with ThreadPoolExecutor(max_workers=len(hosts)) as pool:
        return dict(zip(hosts, pool.map(one, hosts), strict=True))


def names(lab: LabState) -> list[str]:
    return [host.name for host in lab.hosts]


def cold(lab: LabState, model: BenchModel) -> None:
    """Remove the model from every host; fail if its blob is still there."""
    blob = f"{MODELS_DIR}/blobs/{model.digest.replace(':', '-')}"
    on_hosts(lab, names(lab), f"ollama rm {model.name} >/dev/null 2>&1; test ! -e {blob}")


# --- byte counters ------------------------------------------------------------------------------------------


def comment(text: str) -> str:
    return f"-m comment --comment {text}"


def counter_rules(lab: LabState) -> dict[str, str]:
    """Comment -> iptables INPUT rule (no target: it only counts) for what comes from the mirror / a seed."""
    return {
        UPSTREAM: f"INPUT -s {lab.plan.gateway_ip} -p tcp --sport {MIRROR_PORT} {comment(UPSTREAM)}",
        LAN: f"INPUT -p tcp --sport {LAN_PORT} {comment(LAN)}",
    }


def add_counters(lab: LabState) -> None:
    rules = counter_rules(lab).values()
    clear = "; ".join(f"while iptables -D {rule} 2>/dev/null; do :; done" for rule in rules)
    on_hosts(lab, names(lab), clear + "; " + " && ".join(f"iptables -I {rule}" for rule in rules))


def parse_counters(listing: str) -> dict[str, int]:
    """Bytes of each counter rule in `iptables -L INPUT -v -x -n` (the second column)."""
    found = {}
    for line in listing.splitlines():
        for comment in (UPSTREAM, LAN):
            if f"/* {comment} */" in line:
                found[comment] = int(line.split()[1])
    return found


def read_and_remove_counters(lab: LabState) -> dict[str, int]:
    """Bytes per counter, summed over the hosts; the rules are deleted."""
    delete = " && ".join(f"iptables -D {rule}" for rule in counter_rules(lab).values())
    listings = on_hosts(lab, names(lab), f"iptables -L INPUT -v -x -n && {delete}")
    totals = {UPSTREAM: 0, LAN: 0}
    for host, listing in listings.items():
        counters = parse_counters(listing)
        if counters.keys() != totals.keys():
            raise SystemExit(f"{host}: the counter rules are gone from INPUT (did ufw flush it?):\n{listing}")
        for comment, count in counters.items():
            totals[comment] += count
    return totals


# --- deploys ------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Deployed:
    seconds: float  # the whole pyinfra run
    pull_seconds: float  # from the start of the first model pull operation to the start of the next operation
    pull_cpu_busy: float  # share of the machine's cores busy meanwhile (all lab hosts run on them)
    check_seconds: float  # the deploy's closing client check of every host (chat and stream included)
    changed: list[str]  # operations that changed something on some host


@dataclass(frozen=True)
class Measured:
    run: Deployed
    upstream: int  # bytes from the mirror's registry, summed over the hosts
    lan: int  # bytes from the seed's port, summed over the hosts


OPERATION = "--> Starting operation: "
PULLS = OPERATION + "Ollama models | Pull model "
CHECK = OPERATION + "Check the host like a client"


def model_settings(lab: LabState, model: BenchModel, seeded: bool) -> list[str]:
    data = [f"models_pull={json.dumps([model.name])}"]
    data.append(f"models_insecure_registries={json.dumps([model.registry])}")
    if seeded:
        data.append(f"models_seed_host={lab.hosts[0].name}")
        data.append(f"models_lan_subnets={json.dumps([lab.plan.hosts_subnet])}")
    return [arg for item in data for arg in ("--data", item)]


def phase_window(lines: list[tuple[float, str]], prefix: str) -> tuple[float, float]:
    """(start, end) from the start of the first operation whose log line starts with `prefix` to the start of
    the operation after the last one (pyinfra runs one operation at a time on every host); (0, 0): none."""
    starts = [(t, text) for t, text in lines if text.startswith(OPERATION)]
    found = [i for i, (_, text) in enumerate(starts) if text.startswith(prefix)]
    if not found or found[-1] + 1 == len(starts):
        return 0.0, 0.0
    return starts[found[0]][0], starts[found[-1] + 1][0]


def phase_seconds(lines: list[tuple[float, str]], prefix: str) -> float:
    start, end = phase_window(lines, prefix)
    return end - start


class CpuSampler:
    """The machine's busy and total CPU time (/proc/stat), sampled every 0.2 s from `start` on."""

    def __init__(self, start: float) -> None:
        self.start = start
        self.samples = [self.sample()]
        self.done = threading.Event()
        self.thread = threading.Thread(target=self.run, daemon=True)
        self.thread.start()

    def sample(self) -> tuple[float, int, int]:
        fields = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
        idle = fields[3] + fields[4]  # idle + iowait
        return time.perf_counter() - self.start, sum(fields) - idle, sum(fields)

    def run(self) -> None:
        while not self.done.wait(0.2):
            self.samples.append(self.sample())

    def stop(self) -> None:
        self.done.set()
        self.thread.join()
        self.samples.append(self.sample())

    def busy(self, start: float, end: float) -> float:
        """Share of CPU time busy between the samples nearest to `start` and `end` (0 when too short)."""
        inside = [s for s in self.samples if start <= s[0] <= end]
        if len(inside) < 2:
            return 0.0
        (_, busy0, total0), (_, busy1, total1) = inside[0], inside[-1]
        return (busy1 - busy0) / max(1, total1 - total0)


def deploy(lab: LabState, *extra: str) -> Deployed:
    """One pyinfra run of deploys/ollama.py, timed; each stderr line noted with the time it arrived."""
    argv = [PYINFRA, "-y", "--json", *extra, lab.inventory_path, "deploys/ollama.py"]
    env = {**os.environ, "PYINFRA_PROGRESS": "off"}
    with tempfile.TemporaryFile("w+") as stdout:
        start = time.perf_counter()
        cpu = CpuSampler(start)
        proc = subprocess.Popen(argv, cwd=REPO, env=env, stdout=stdout, stderr=subprocess.PIPE, text=True)
        assert proc.stderr is not None
        lines = [(time.perf_counter() - start, line.rstrip()) for line in proc.stderr]
        code = proc.wait()
        seconds = time.perf_counter() - start
        cpu.stop()
        stdout.seek(0)
        output = stdout.read()
    if code != 0:
        log = "\n".join(text for _, text in lines[-60:])
        raise SystemExit(f"{' '.join(argv[3:])} failed:\n{output[-3000:]}\n{log}")
    operations = json.loads(output)["results"]["operations"]
    changed = [op["name"] for op in operations if op["success"]]
    pulls = phase_window(lines, PULLS)
    return Deployed(seconds, pulls[1] - pulls[0], cpu.busy(*pulls), phase_seconds(lines, CHECK), changed)


def model_deploy(lab: LabState, model: BenchModel, count: int, seeded: bool) -> Measured:
    """Deploy the model to lab-1..lab-<count>, counting the bytes every host of the lab received."""
    limits = [arg for host in names(lab)[:count] for arg in ("--limit", host)]
    add_counters(lab)
    try:
        run = deploy(lab, *limits, *model_settings(lab, model, seeded))
    finally:
        counted = read_and_remove_counters(lab)
    progress(
        f"  {'seed' if seeded else 'no seed'}, {count} host(s): {run.seconds:.1f} s (pulls "
        f"{run.pull_seconds:.1f} s, CPU {run.pull_cpu_busy:.0%} busy; check {run.check_seconds:.1f} s), "
        f"upstream {counted[UPSTREAM]} B, "
        f"LAN {counted[LAN]} B"
    )
    return Measured(run, counted[UPSTREAM], counted[LAN])


# --- the figures --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Row:
    hosts: int
    upstream_no_seed: float  # bytes / model size
    upstream_seed: float
    lan_seed: float
    seed_seconds: float
    seed_pull_seconds: float
    seed_pull_cpu_busy: float
    seed_check_seconds: float
    no_seed_seconds: float
    no_seed_pull_seconds: float
    no_seed_check_seconds: float


@dataclass(frozen=True)
class Figures:
    model_bytes: int
    rows: list[Row]
    seed_wall_largest_over_smallest: float
    seed_pull_largest_over_smallest: float
    no_seed_over_seed_wall_largest: float
    no_seed_over_seed_pull_largest: float
    second_deploy_upstream_bytes: int
    second_deploy_lan_bytes: int
    second_deploy_seconds: float
    second_deploy_changed: list[str]


def scenarios(lab: LabState, model: BenchModel, sizes: list[int], seeded: bool) -> dict[int, Measured]:
    """One configuration: deployed once everywhere (settings in place), then each size from cold."""
    progress(f"{'seed' if seeded else 'no seed'}: a first deploy of the settings to every host (not counted)")
    cold(lab, model)
    model_deploy(lab, model, len(lab.hosts), seeded)
    results = {}
    for count in sizes:
        cold(lab, model)
        results[count] = model_deploy(lab, model, count, seeded)
    return results


def row(count: int, no_seed: Measured, seed: Measured, size: int) -> Row:
    return Row(
        hosts=count,
        upstream_no_seed=no_seed.upstream / size,
        upstream_seed=seed.upstream / size,
        lan_seed=seed.lan / size,
        seed_seconds=seed.run.seconds,
        seed_pull_seconds=seed.run.pull_seconds,
        seed_pull_cpu_busy=seed.run.pull_cpu_busy,
        seed_check_seconds=seed.run.check_seconds,
        no_seed_seconds=no_seed.run.seconds,
        no_seed_pull_seconds=no_seed.run.pull_seconds,
        no_seed_check_seconds=no_seed.run.check_seconds,
    )


def measure(lab: LabState, model: BenchModel, sizes: list[int]) -> Figures:
    no_seed = scenarios(lab, model, sizes, seeded=False)
    seed = scenarios(lab, model, sizes, seeded=True)
    largest, smallest = seed[max(sizes)].run, seed[min(sizes)].run
    progress("seed: a second identical deploy")
    again = model_deploy(lab, model, max(sizes), seeded=True)
    return Figures(
        model_bytes=model.size,
        rows=[row(n, no_seed[n], seed[n], model.size) for n in sizes],
        seed_wall_largest_over_smallest=largest.seconds / smallest.seconds,
        seed_pull_largest_over_smallest=largest.pull_seconds / smallest.pull_seconds,
        no_seed_over_seed_wall_largest=no_seed[max(sizes)].run.seconds / largest.seconds,
        no_seed_over_seed_pull_largest=no_seed[max(sizes)].run.pull_seconds / largest.pull_seconds,
        second_deploy_upstream_bytes=again.upstream,
        second_deploy_lan_bytes=again.lan,
        second_deploy_seconds=again.run.seconds,
        second_deploy_changed=again.run.changed,
    )


HEADS = (
    "N", "upstream, no seed", "upstream, seed", "LAN, seed", "wall (pulls, CPU busy, check), seed",
    "wall (pulls, check), no seed",
)  # fmt: skip


def cells(r: Row) -> list[str]:
    return [
        str(r.hosts),
        f"{r.upstream_no_seed:.3f}x",
        f"{r.upstream_seed:.3f}x",
        f"{r.lan_seed:.3f}x",
        f"{r.seed_seconds:.1f} ({r.seed_pull_seconds:.1f}, {r.seed_pull_cpu_busy:.0%}, "
        f"{r.seed_check_seconds:.1f}) s",
        f"{r.no_seed_seconds:.1f} ({r.no_seed_pull_seconds:.1f}, {r.no_seed_check_seconds:.1f}) s",
    ]


def print_table(f: Figures) -> None:
    sizes = [r.hosts for r in f.rows]
    n, one = max(sizes), min(sizes)
    print(f"models over the LAN: a {f.model_bytes / MB:.0f} MB registry model; bytes / model size, seconds")
    widths = [max(3, len(head)) for head in HEADS]
    print("  " + "  ".join(head.rjust(width) for head, width in zip(HEADS, widths, strict=True)))
    for r in f.rows:
        print("  " + "  ".join(cell.rjust(width) for cell, width in zip(cells(r), widths, strict=True)))
    print(
        f"  seed, {n} hosts / {one}: wall {f.seed_wall_largest_over_smallest:.2f}x, "
        f"pulls {f.seed_pull_largest_over_smallest:.2f}x (target <= 2)"
    )
    print(
        f"  no seed / seed, {n} hosts: wall {f.no_seed_over_seed_wall_largest:.2f}x, "
        f"pulls {f.no_seed_over_seed_pull_largest:.2f}x"
    )
    print(
        f"  second identical seed deploy of {n} hosts: upstream {f.second_deploy_upstream_bytes} B, "
        f"LAN {f.second_deploy_lan_bytes} B (target 0 of the model), {f.second_deploy_seconds:.1f} s, "
        f"{len(f.second_deploy_changed)} operation(s) changed"
    )


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--hosts", default="1,3,8", help="comma list of fleet sizes (%(default)s)")
    parser.add_argument("--size-mb", type=int, default=300, help="model size in MB (%(default)s)")
    parser.add_argument("--slot", type=int, default=12)
    parser.add_argument("--json", action="store_true", help="print the figures as JSON")
    args = parser.parse_args()
    sizes = sorted(int(n) for n in args.hosts.split(","))

    progress(f"lab up: {max(sizes)} hosts in slot {args.slot}")
    try:
        lab = lifecycle.up(max(sizes), args.slot, log=False)
        progress("base deploy of every host")
        progress(f"  {deploy(lab).seconds:.1f} s")
        model = publish_model(lab.mirror_url.removeprefix("http://"), args.size_mb * MB)
        figures = measure(lab, model, sizes)
    finally:
        unpublish_model()
        lifecycle.down(args.slot, log=False)
    if args.json:
        print(json.dumps(asdict(figures), indent=2))
    else:
        print_table(figures)
    return 0


if __name__ == "__main__":
    sys.exit(main())
