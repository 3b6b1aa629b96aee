"""Running controller commands with errors that say what failed."""

from __future__ import annotations

import subprocess
from collections.abc import Callable, Sequence

from ollama_fleet.lab.progress import Progress, output_tail, run_with_progress


class LabError(RuntimeError):
    """A lab step failed; the message says which and why."""


def run(
    cmd: Sequence[str],
    *,
    input_text: str | None = None,
    timeout: float | None = 600,
    env: dict[str, str] | None = None,
) -> str:
    """Run a command, return its stdout; raise LabError with its stderr when it fails."""
    try:
        proc = subprocess.run(
            list(cmd), input=input_text, capture_output=True, text=True, timeout=timeout, check=False, env=env
        )
    except subprocess.TimeoutExpired as exc:
        raise LabError(f"timed out after {timeout}s: {' '.join(cmd)}") from exc
    if proc.returncode != 0:
        detail = (proc.stderr or proc.stdout).strip()[-2000:]
        raise LabError(f"failed ({proc.returncode}): {' '.join(cmd)}\n{detail}")
    return proc.stdout


def run_long(
    cmd: Sequence[str],
    stage: str,
    *,
    count_bytes: Callable[[str], int] | None = None,
    timeout: float = 1800,
    env: dict[str, str] | None = None,
) -> str:
    """`run` for steps that take minutes: progress on the way (see lab.progress), LabError with the tail of
    the output when it fails."""
    code, output = run_with_progress(cmd, Progress(stage, count_bytes), env=env, timeout=timeout)
    if code != 0:
        raise LabError(f"{stage} failed ({code}): {' '.join(cmd)}\n{output_tail(output)}")
    return output


def succeeds(cmd: Sequence[str], timeout: float | None = 60) -> bool:
    """True when the command exits 0; for probes and best-effort teardown steps."""
    try:
        return (
            subprocess.run(
                list(cmd), capture_output=True, timeout=timeout, check=False, stdin=subprocess.DEVNULL
            ).returncode
            == 0
        )
    except subprocess.TimeoutExpired:
        return False
