"""Progress of the lab's long steps (the cold Ollama build, debootstrap, the mirror download).

On a terminal: one status line rewritten in place (stage, elapsed time, steps, bytes, the last line of
output). Elsewhere (CI, a log file): a plain line every HEARTBEAT seconds and one when the step ends, so a
log shows the step is alive without drowning in output. The command's output is kept whole for errors.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TextIO

HEARTBEAT = 30.0
TICK = 0.5
_APT_SIZE = re.compile(r"\[(\d+(?:\.\d+)?) (B|kB|MB|GB)\]")
_UNITS = {"B": 1, "kB": 1e3, "MB": 1e6, "GB": 1e9}


def apt_bytes(line: str) -> int:
    """Bytes an apt/debootstrap `Get:` line announces (`... [1,234 kB]`), else 0."""
    match = _APT_SIZE.search(line.replace(",", ""))
    return int(float(match.group(1)) * _UNITS[match.group(2)]) if match else 0


def output_tail(output: str, lines: int = 40) -> str:
    """The last lines of a failed command's output, for its error message."""
    return "\n".join(output.strip().splitlines()[-lines:])


def elapsed(seconds: float) -> str:
    minutes, secs = divmod(int(seconds), 60)
    return f"{minutes}m{secs:02d}s" if minutes else f"{secs}s"


def size(count: int) -> str:
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if count >= scale:
            return f"{count / scale:.1f} {unit}"
    return f"{count} B"


@dataclass
class Progress:
    stage: str
    count_bytes: Callable[[str], int] | None = None
    out: TextIO = field(default_factory=lambda: sys.stderr)
    started: float = field(default_factory=time.monotonic)
    steps: int = 0
    bytes: int = 0
    last: str = ""

    @property
    def live(self) -> bool:
        return self.out.isatty() and os.environ.get("CI", "") not in ("true", "1")

    def line(self, text: str) -> None:
        self.steps += 1
        self.last = text.strip()
        if self.count_bytes:
            self.bytes += self.count_bytes(text)

    def summary(self) -> str:
        parts = [elapsed(time.monotonic() - self.started), f"{self.steps} steps"]
        if self.count_bytes:
            parts.append(size(self.bytes))
        return ", ".join(parts)

    def show(self) -> None:
        if self.live:
            status = f"lab: {self.stage}: {self.summary()}  {self.last}"
            width = max(20, _columns() - 1)
            self.out.write("\r\x1b[K" + status[:width])
        else:
            self.out.write(f"lab: {self.stage}: {self.summary()} so far\n")
        self.out.flush()

    def done(self, ok: bool) -> None:
        end = "\r\x1b[K" if self.live else ""
        self.out.write(f"{end}lab: {self.stage}: {'done' if ok else 'FAILED'} ({self.summary()})\n")
        self.out.flush()


def _columns() -> int:
    try:
        return os.get_terminal_size().columns
    except OSError:
        return 100


def run_with_progress(
    cmd: Sequence[str],
    progress: Progress,
    env: dict[str, str] | None = None,
    timeout: float | None = None,
) -> tuple[int, str]:
    """Run `cmd` (stdout and stderr together), reporting progress; returns (exit code, all its output).

    A command still running after `timeout` seconds is killed and reported as exit code -9.
    """
    proc = subprocess.Popen(
        list(cmd), env=env, stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, errors="replace",
    )  # fmt: skip
    lines: list[str] = []

    def read() -> None:
        assert proc.stdout is not None
        for text in proc.stdout:
            lines.append(text)
            progress.line(text)

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    next_report = time.monotonic() + (TICK if progress.live else HEARTBEAT)
    while True:
        try:
            proc.wait(timeout=TICK)
            break
        except subprocess.TimeoutExpired:
            pass
        now = time.monotonic()
        if timeout is not None and now - progress.started > timeout:
            proc.kill()
            proc.wait()
            break
        if now >= next_report:
            progress.show()
            next_report = now + (TICK if progress.live else HEARTBEAT)
    reader.join(timeout=10)
    progress.done(proc.returncode == 0)
    return proc.returncode, "".join(lines)
