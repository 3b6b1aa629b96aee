"""What the gateway costs a client, as ratios to the baseline of calling a host directly, in this run.

For each model of the fleet, rounds alternate: a streamed chat completion through the gateway, then the
same request straight to a host serving the model (the hosts taken in turn), each over its own fresh TLS
connection as a new client would (the model warm on every host first). Printed per model and overall: the
median time to the first chunk and to the last, through the gateway as a multiple of direct.

    python benchmarks/gateway_bench.py INVENTORY [--group-data DIR] [--rounds 10] [--tokens 32]

The inventory must have a deployed gateway host (group `gateway`). Only the inventory's hosts are contacted.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from itertools import cycle

from ollama_fleet.verify.context import make_client
from ollama_fleet.verify.targets import Target, load_gateway_targets, load_targets


def streamed(target: Target, model: str, tokens: int) -> tuple[float, float]:
    """(seconds to the first content chunk, seconds to the end) of one streamed completion."""
    key = target.settings.auth.keys[0].key.get_secret_value() if target.settings.auth.enabled else None
    body = {
        "model": model,
        "messages": [{"role": "user", "content": "Hello, fleet."}],
        "max_tokens": tokens,
        "stream": True,
    }
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    first = None
    started = time.perf_counter()
    with (
        make_client(target, 300) as client,
        client.stream("POST", "/v1/chat/completions", json=body, headers=headers) as response,
    ):
        if response.status_code != 200:
            response.read()
            raise SystemExit(f"{target.name}: {model}: {response.status_code} {response.text[:200]}")
        for line in response.iter_lines():
            if first is None and line.startswith("data: {") and json.loads(line[6:])["choices"]:
                first = time.perf_counter() - started
    return (first if first is not None else float("nan")), time.perf_counter() - started


def main() -> None:
    formatter = argparse.RawDescriptionHelpFormatter
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=formatter)
    parser.add_argument("inventory")
    parser.add_argument("--group-data", action="append", default=[])
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--tokens", type=int, default=32)
    args = parser.parse_args()
    hosts = load_targets(args.inventory, group_data=args.group_data)
    gateways = load_gateway_targets(args.inventory, group_data=args.group_data)
    if not gateways:
        raise SystemExit(f"{args.inventory} has no gateway host (put one in the inventory group `gateway`)")
    gateway = gateways[0]
    print(f"gateway {gateway.name} ({gateway.base_url}), {len(hosts)} host(s), {args.rounds} rounds/model")
    ratios_first, ratios_last = [], []
    for model in gateway.models:
        serving_hosts = [h for h in hosts if model in h.models]
        for host in serving_hosts:  # warm: the model loaded on every host that serves it
            streamed(host, model, args.tokens)
        serving = cycle(serving_hosts)
        via, direct = [], []
        for _ in range(args.rounds):
            via.append(streamed(gateway, model, args.tokens))
            direct.append(streamed(next(serving), model, args.tokens))
        first_via, first_direct = (statistics.median(t[0] for t in runs) for runs in (via, direct))
        last_via, last_direct = (statistics.median(t[1] for t in runs) for runs in (via, direct))
        ratios_first.append(first_via / first_direct)
        ratios_last.append(last_via / last_direct)
        print(
            f"  {model:<28} first chunk {first_via * 1000:7.1f} ms vs {first_direct * 1000:7.1f} ms direct "
            f"= {first_via / first_direct:.2f} x; last {last_via * 1000:7.1f} vs "
            f"{last_direct * 1000:7.1f} ms = {last_via / last_direct:.2f} x"
        )
    first, whole = statistics.median(ratios_first), statistics.median(ratios_last)
    print(f"gateway / direct, median over models: first chunk {first:.2f} x, whole stream {whole:.2f} x")


if __name__ == "__main__":
    main()
