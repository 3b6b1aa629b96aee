"""`ollama-fleet lab build|up|reimage|restore|down|status`: argparse wiring over `lifecycle`.

The lab's own dependencies (numpy and gguf, the `lab` extra) are imported only when a lab command runs, so
`pip install ollama-fleet` without extras gives a working verify, status, rollout and deploy.
Also runnable alone: `python -m ollama_fleet.lab.commands lab up --hosts 3`.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from types import ModuleType
from typing import Any

from ollama_fleet.lab.plan import MAX_HOSTS, default_slot
from ollama_fleet.lab.releases import DEFAULT_RELEASE, RELEASES, ReleaseError, parse_releases
from ollama_fleet.lab.run import LabError

LAB_OLLAMA_VERSION = "0.24.0"  # the release the lab builds (lab.artifacts.DEFAULT_VERSION; a test keeps both)


def _lab_module(name: str) -> ModuleType:
    """`ollama_fleet.lab.<name>`, or LabError naming the extra to install when a dependency is missing."""
    import importlib

    try:
        return importlib.import_module(f"ollama_fleet.lab.{name}")
    except ModuleNotFoundError as exc:
        raise LabError(
            f"the lab needs the 'lab' extra ({exc.name} is not installed): pip install 'ollama-fleet[lab]'"
        ) from None


def _add_slot(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--slot", type=int, default=None, help="lab slot (default: $OLLAMA_FLEET_LAB_SLOT or 0)"
    )


def register(subparsers: Any) -> None:
    """Add `lab build|up|down|status` to an argparse subparsers object."""
    lab = subparsers.add_parser("lab", help="a throwaway local fleet of systemd-nspawn hosts")
    actions = lab.add_subparsers(dest="lab_command", required=True)
    build = actions.add_parser("build", help="build (or reuse) Ollama from source and the tiny model")
    build.add_argument("--version", default=LAB_OLLAMA_VERSION, help="Ollama release (%(default)s)")
    build.add_argument("--json", action="store_true", help="machine-readable output")
    build.set_defaults(func=_guarded(_build))
    up = actions.add_parser("up", help="bring a lab up (clearing a stale one of the same slot first)")
    up.add_argument("--hosts", type=int, default=3, help=f"number of hosts, 1..{MAX_HOSTS} (default 3)")
    up.add_argument(
        "--vagrant",
        action="store_true",
        help="the Vagrantfile's machines (vagrant-lxc on a box made from the lab's rootfs), not nspawn",
    )
    up.add_argument(
        "--release",
        default=None,
        help=f"Debian release of the hosts: {', '.join(RELEASES)}, or a comma list the hosts take in turn "
        f"(bookworm,trixie: lab-1 bookworm, lab-2 trixie, ...); default {DEFAULT_RELEASE}",
    )
    _add_slot(up)
    up.set_defaults(func=_guarded(_up))
    reimage = actions.add_parser(
        "reimage",
        help="re-install one host in place: same name and IP, a fresh root (no state, a new SSH host key)",
    )
    reimage.add_argument("host", help="the host's name (lab-2) or IP")
    reimage.add_argument("--release", required=True, choices=list(RELEASES), help="its new Debian release")
    reimage.add_argument("--keep", action="store_true", help="set its old image aside for `lab restore`")
    _add_slot(reimage)
    reimage.set_defaults(func=_guarded(_reimage))
    restore = actions.add_parser("restore", help="put back the image `lab reimage --keep` set aside")
    restore.add_argument("host", help="the host's name (lab-2) or IP")
    _add_slot(restore)
    restore.set_defaults(func=_guarded(_restore))
    down = actions.add_parser("down", help="remove every host, mount, bridge, netns, nft table, cgroup")
    _add_slot(down)
    down.set_defaults(func=_guarded(_down))
    status = actions.add_parser("status", help="hosts, IPs, running, SSH-ready")
    _add_slot(status)
    status.add_argument("--json", action="store_true", help="machine-readable output")
    status.set_defaults(func=_guarded(_status))


def _slot(args: argparse.Namespace) -> int:
    return default_slot() if args.slot is None else int(args.slot)


def _build(args: argparse.Namespace) -> int:
    build_args = ["--version", args.version, *(["--json"] if args.json else [])]
    result: int = _lab_module("artifacts").main(build_args)
    return result


def _up(args: argparse.Namespace) -> int:
    try:
        releases = parse_releases(args.release)
    except ReleaseError as exc:
        raise LabError(str(exc)) from None
    lab = _lab_module("lifecycle").up(args.hosts, _slot(args), vagrant=args.vagrant, releases=releases)
    for host in lab.hosts:
        print(f"{host.name}\t{host.ip}\t{host.release}")
    kind = "Vagrant machines (lxc)" if args.vagrant else "hosts"
    print(
        f"lab slot {lab.slot}: {len(lab.hosts)} {kind} SSH-ready in {lab.timings['total_s']}s\n"
        f"  ssh -F {lab.ssh_config_path} {lab.hosts[0].name}\n"
        f"  inventory: {lab.inventory_path}\n"
        f"  mirror: {lab.mirror_url}/  outsider: ip netns exec {lab.outsider_netns} ... ({lab.outsider_ip})"
    )
    return 0


def _reimage(args: argparse.Namespace) -> int:
    host = _lab_module("lifecycle").reimage(_slot(args), args.host, args.release, keep=args.keep)
    print(f"{host.name}\t{host.ip}\t{host.release}\tre-imaged (no state, a new SSH host key)")
    return 0


def _restore(args: argparse.Namespace) -> int:
    host = _lab_module("lifecycle").restore(_slot(args), args.host)
    print(f"{host.name}\t{host.ip}\t{host.release}\trestored")
    return 0


def _down(args: argparse.Namespace) -> int:
    _lab_module("lifecycle").down(_slot(args))
    return 0


def _status(args: argparse.Namespace) -> int:
    report = _lab_module("lifecycle").status(_slot(args))
    if args.json:
        print(json.dumps(report, indent=2))
        return 0 if report["up"] else 1
    if not report["up"]:
        print(f"lab slot {report['slot']}: down")
        return 1
    mirror = report["mirror"]
    assert isinstance(mirror, dict)
    serving = f"running, PID {mirror['pid']}" if mirror["running"] else "NOT running"
    print(f"lab slot {report['slot']}: {report['phase']}; mirror {mirror['url']}/ ({serving})")
    for row in report["hosts"]:
        run_state = "running" if row["running"] else "stopped"
        ready = "ssh-ready" if row["ssh_ready"] else "no-ssh"
        print(f"  {row['name']}\t{row['ip']}\t{row['release']}\t{run_state}\t{ready}")
    return 0


def _guarded(handler: Callable[[argparse.Namespace], int]) -> Callable[[argparse.Namespace], int]:
    """Lab errors become one clear message and exit status 1 instead of a traceback."""

    def guarded(args: argparse.Namespace) -> int:
        try:
            return handler(args)
        except LabError as exc:
            print(f"lab: error: {exc}", file=sys.stderr)
            return 1

    return guarded


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="ollama-fleet")
    register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    return int(args.func(args))


if __name__ == "__main__":
    sys.exit(main())
