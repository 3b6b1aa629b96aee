"""The check that ends every deploy: the controller reads the host as `ollama-fleet verify` does.

It runs while pyinfra executes, after every earlier operation of the host, and in two depths: a host on
which this run changed something gets every check (chat and stream included); a host on which nothing
changed gets the quick ones (TLS, root, auth, version, models, CORS), which load no model (so evict
nothing clients are using) and wait for no firewall timeout. A passing check yields no command, so it is
never counted as a change; a failing one yields the caller's `on_failure` command (a rollback, or a plain
failure) with the reasons.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Generator

from pyinfra import logger
from pyinfra.api.host import Host
from pyinfra.api.operation import operation
from pyinfra.context import host

from ollama_fleet.verify.checks import check_host
from ollama_fleet.verify.report import failure_summary, progress_line, redact
from ollama_fleet.verify.targets import Target

AFTER_DEPLOY_TIMEOUT = 120.0  # seconds per request: right after a deploy the first chat may load the model

FailureCommand = Callable[[str], str]
"""Given the failure (redacted, one line per failed check), the shell command that fails the host."""


def changed_operations(state: object, on: Host) -> list[str]:
    """Names of this host's operations that already ran in this pyinfra run and changed something."""
    names = []
    for op_hash, data in state.ops[on].items():  # type: ignore[attr-defined]  # pyinfra's State
        meta = data.operation_meta
        if meta.is_complete() and meta.did_change():
            names.append(", ".join(sorted(state.get_op_meta(op_hash).names)))  # type: ignore[attr-defined]
    return names


@operation()
def checked_like_a_client(
    target: Target | None,
    on_failure: FailureCommand,
    timeout: float = AFTER_DEPLOY_TIMEOUT,
) -> Generator[str, None, None]:
    """
    Check the host like a client (the full check if this run changed it, else the quick one).

    + target: the host as `ollama-fleet verify` sees it (None: nothing to check on this host)
    + on_failure: builds the command that fails the host from the failure text
    + timeout: seconds per request
    """
    if target is None or not host.state.is_executing:
        return  # reads the host from outside: nothing to plan
    changed = changed_operations(host.state, host)
    depth = "full" if changed else "quick"
    logger.info(f"{host.print_prefix}{depth} client check ({len(changed)} operation(s) changed this host)")
    secrets = [k.key.get_secret_value() for k in target.settings.auth.keys]
    started = time.perf_counter()
    results = check_host(target, timeout, quick=not changed)
    for result in results:
        logger.info(redact(progress_line(target.name, result), secrets))
    logger.info(f"{host.print_prefix}{depth} client check took {time.perf_counter() - started:.2f} s")
    failure = failure_summary(target, results)
    if failure is not None:
        yield on_failure(f"{target.name} does not work for clients ({depth} check): {failure}")
