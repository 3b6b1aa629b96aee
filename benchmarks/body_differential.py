"""The body differential's longer run: generated request bodies, each decided by the real njs module in a
real nginx (the site as rendered, on loopback, in front of a stand-in Ollama) and read by Go's encoding/json
into Ollama's request shapes; prints the count of cases, what the proxy did with them, how often JSON.parse
and Go read another model, and every body that reached Ollama as a model the key may not use or a cloud
model (there must be none). The unit tier runs the same with 2000 bodies.

    python benchmarks/body_differential.py [--examples 20000] [--seed 19]

Needs what the unit tier needs (nginx, libnginx-mod-http-js, Go; `pip install -e '.[dev]'`). Contacts
only loopback.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "unit"))

from body_differential import ALLOWED, GoReader, Tally, run_differential, violation
from test_body_differential import send
from test_render import ALICE_KEY, CI_KEY, running_nginx

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
        reader = GoReader(tmp)
        policies = {"auth_key_policies": {"alice": {"models": list(ALLOWED)}}}
        with running_nginx(tmp / "nginx", ca, **policies) as site, site.client(timeout=20) as client:
            site.upstream.first_chunk_read.set()

            def one(route: str, body: bytes, allow_listed: bool) -> None:
                status, code, reached = send(client, site, route, body, ALICE_KEY if allow_listed else CI_KEY)
                go = reader.read(route, body)
                why = violation(go, allow_listed) if reached is not None else None
                tally.add(route, body, status, code, reached is not None, go, why)

            run_differential(args.seed, args.examples, one)
        reader.close()
    print(f"cases: {tally.cases} in {time.monotonic() - started:.0f} s (seed {args.seed})")
    print(f"reached Ollama: {tally.reached}")
    for outcome, count in sorted(tally.refused.items(), key=lambda item: -item[1]):
        print(f"refused {outcome}: {count}")
    print(f"JSON.parse and Go read another model: {tally.parsers_disagree} (each refused or harmless)")
    print(f"reached Ollama as a model the key may not use, or a cloud model: {len(tally.violations)}")
    for line in tally.violations[:20]:
        print(f"  {line}")
    return 1 if tally.violations else 0


if __name__ == "__main__":
    sys.exit(main())
