"""`ollama-fleet lab|verify|status|rollout|rollback|init|keys|ca|hosts`: thin wrappers over the modules."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence


def build_parser() -> argparse.ArgumentParser:
    from ollama_fleet import ca_commands, fleet_commands, host_keys
    from ollama_fleet.lab import commands as lab_commands
    from ollama_fleet.rollout import commands as rollout_commands
    from ollama_fleet.verify import commands as verify_commands

    parser = argparse.ArgumentParser(prog="ollama-fleet", description=__doc__)
    subparsers = parser.add_subparsers(dest="command", required=True)
    lab_commands.register(subparsers)
    verify_commands.register(subparsers)
    rollout_commands.register(subparsers)
    fleet_commands.register(subparsers)
    ca_commands.register(subparsers)
    host_keys.register(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    from ollama_fleet.limits import open_files_advice, raise_open_files_limit, too_many_open_files

    # Before anything opens a socket; the pyinfra runs a rollout starts inherit it.
    raise_open_files_limit()
    args = build_parser().parse_args(argv)
    try:
        result: int = args.func(args)
    except OSError as exc:
        if not too_many_open_files(exc):
            raise
        print(f"ollama-fleet {args.command}: too many open files: {open_files_advice()}", file=sys.stderr)
        return 2
    return result


if __name__ == "__main__":
    sys.exit(main())
