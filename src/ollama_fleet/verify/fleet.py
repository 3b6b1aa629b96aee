"""Check every host of a fleet in parallel and collect the report."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Collection, Sequence
from concurrent.futures import ThreadPoolExecutor

from ollama_fleet.verify.checks import check_host
from ollama_fleet.verify.context import CheckResult
from ollama_fleet.verify.report import FleetReport, HostReport
from ollama_fleet.verify.targets import Target

DEFAULT_TIMEOUT = 30.0
MAX_PARALLEL_HOSTS = 16


def verify_fleet(
    targets: Sequence[Target],
    timeout: float = DEFAULT_TIMEOUT,
    on_result: Callable[[Target, CheckResult], None] | None = None,
    quick: bool = False,
    strict: bool = False,
    only: Collection[str] | None = None,
) -> FleetReport:
    """Run the checks on all hosts at once (a thread each); results keep the inventory's order. `only`:
    these checks alone (check_host's)."""
    lock = threading.Lock()

    def report_one(target: Target, result: CheckResult) -> None:
        if on_result:
            with lock:  # one progress line at a time
                on_result(target, result)

    def one_host(target: Target) -> HostReport:
        results = check_host(target, timeout, report_one, quick=quick, only=only)
        return HostReport(host=target.name, address=target.address, results=tuple(results))

    started = time.perf_counter()
    workers = max(1, min(MAX_PARALLEL_HOSTS, len(targets)))
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="verify") as pool:
        hosts = tuple(pool.map(one_host, targets))
    return FleetReport(hosts=hosts, seconds=time.perf_counter() - started, strict=strict)


def secrets_of(targets: Sequence[Target]) -> list[str]:
    """Every key value of the fleet, for redaction of anything printed."""
    auth = [t.settings.auth for t in targets]
    return sorted({k.key.get_secret_value() for a in auth for k in [*a.keys, *a.refused_keys]})
