"""The path differential's longer run: generated request paths (percent-encoding, doubled and encoded
separators, dot segments, case, suffixes, other routes in front), each sent raw with an inference key or an
admin key through the rendered site in a real nginx to a Go server that routes as Ollama v0.24.0 does
(ServeMux, registry.Local, gin); prints the count of cases, nginx's and Go's answers, the Ollama handlers
reached, and every request that reached a handler its key's scope does not allow (there must be none). The
unit tier runs the same with 1000 generated paths and the hand-picked ones.

    python benchmarks/path_differential.py [--examples 20000] [--seed 19]

Needs what the unit tier needs (nginx, libnginx-mod-http-js, Go, Ollama's source in the Go module cache;
`pip install -e '.[dev]'`). Contacts only loopback.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "unit"))

from path_differential import PathRouter, Sender, Tally, run_differential
from test_path_differential import KEYS
from test_render import _free_port, running_nginx

from ollama_fleet.pki import FleetCA


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--examples", type=int, default=20000)
    parser.add_argument("--seed", type=int, default=19)
    args = parser.parse_args()
    tally = Tally()
    started = time.monotonic()
    with tempfile.TemporaryDirectory() as scratch:
        tmp = Path(scratch)
        ca = FleetCA.load_or_create(tmp / "pki")
        (tmp / "nginx").mkdir()
        router = PathRouter(tmp, _free_port())
        data = {"ollama_listen": router.address, "auth_key_policies": {"ci-bot": {"scope": "admin"}}}
        try:
            with running_nginx(tmp / "nginx", ca, **data) as site:
                sender = Sender(site.https, site.ca_file)
                run_differential(args.seed, args.examples, lambda m, p, s: sender.send(m, p, KEYS[s]), tally)
                sender.close()
        finally:
            router.close()
    print(f"cases: {tally.cases} in {time.monotonic() - started:.0f} s (seed {args.seed})")
    print("answers: " + ", ".join(f"{status} x{count}" for status, count in sorted(tally.statuses.items())))
    print(f"reached an Ollama handler: {sum(tally.reached.values())} ({len(tally.reached)} routes)")
    for route, count in tally.reached.most_common():
        print(f"  {route}: {count}")
    print(f"reached a handler the key's scope does not allow: {len(tally.violations)}")
    for line in tally.violations[:20]:
        print(f"  {line}")
    return 1 if tally.violations else 0


if __name__ == "__main__":
    sys.exit(main())
