"""The open-files limit: every host's SSH connection stays open for the whole run (pyinfra), and verify holds
a few sockets per host it checks at once, so a large fleet needs more than a shell's default soft limit."""

from __future__ import annotations

import errno
import resource

FDS_PER_HOST = 3
"""What pyinfra budgets per host it runs at once (its MAX_PARALLEL is (soft limit - 10) / 3)."""
FDS_RESERVED = 10


def raise_open_files_limit() -> tuple[int, int]:
    """Raise the soft RLIMIT_NOFILE to the hard one (no privilege needed); returns (soft, hard) after."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = hard if hard != resource.RLIM_INFINITY else max(soft, 1 << 20)
    if soft != resource.RLIM_INFINITY and soft < wanted:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))
        except (ValueError, OSError):
            return soft, hard  # e.g. an infinite hard limit above the kernel's nr_open
        soft = wanted
    return soft, hard


def open_files_needed(hosts: int) -> int:
    return hosts * FDS_PER_HOST + FDS_RESERVED


def too_many_open_files(exc: BaseException) -> bool:
    return isinstance(exc, OSError) and exc.errno == errno.EMFILE


def open_files_advice(hosts: int | None = None) -> str:
    """The limits now, what `hosts` need, the fix."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    need = f"; {hosts} host(s) need about {open_files_needed(hosts)}" if hosts else ""
    return (
        f"the open-files limit is {soft} (hard {hard}){need}. Raise it before the run "
        "(`ulimit -n <hard limit>`, or LimitNOFILE= in the unit that starts it; the hard limit itself is "
        "raised in /etc/security/limits.conf), or deploy fewer hosts at once (pyinfra --limit, or "
        "`ollama-fleet rollout --batch`)"
    )


def prepare_pyinfra_run() -> None:
    """For a pyinfra run's config.py: raise the open-files limit and give pyinfra its cap on hosts at once
    for the new limit (it computed it when imported, from the old one: under 13 files, a cap of 0 hosts,
    and pyinfra waits forever). Exits with the advice when even the hard limit cannot hold one host.
    Then every host at once up to that cap, the operation order read from frames, and idle connections
    that wake once a second (pyinfra_run.py: before pyinfra connects)."""
    import pyinfra.api.state

    from ollama_fleet.pyinfra_run import (
        every_host_at_once,
        quieter_idle_connections,
        read_operation_order_from_frames,
    )

    soft, _ = raise_open_files_limit()
    cap = (soft - FDS_RESERVED) // FDS_PER_HOST if soft != resource.RLIM_INFINITY else 100_000
    if cap < 1:
        raise SystemExit(f"ollama-fleet: pyinfra cannot hold even one host open: {open_files_advice(1)}")
    pyinfra.api.state.MAX_PARALLEL = cap  # a module global of pyinfra 3.10, read by State.init
    every_host_at_once(cap)
    read_operation_order_from_frames()
    quieter_idle_connections()
