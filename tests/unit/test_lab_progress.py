"""Progress of the lab's long steps: line-based in CI and logs, the command's output kept for errors."""

from __future__ import annotations

import io
import re
import sys

import pytest

from ollama_fleet.lab import progress
from ollama_fleet.lab.progress import Progress, apt_bytes, run_with_progress

pytestmark = pytest.mark.unit


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_apt_get_lines_count_their_bytes() -> None:
    assert (
        apt_bytes("Get:12 http://deb.debian.org/debian bookworm/main amd64 nginx 1.22.1 [1,234 kB]")
        == 1234000
    )
    assert apt_bytes("Get:3 http://x bookworm/main amd64 zstd 1.5.4 [541 B]") == 541
    assert apt_bytes("Reading package lists...") == 0


def test_a_log_gets_heartbeat_lines_and_a_final_summary(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(progress, "HEARTBEAT", 0.3)
    out = io.StringIO()
    script = "import time\nfor i in range(3):\n    print('Get:1 x [2 kB]', flush=True); time.sleep(0.4)"
    code, output = run_with_progress(
        [sys.executable, "-c", script], Progress("downloading", apt_bytes, out=out)
    )
    assert code == 0 and output.count("Get:1") == 3
    lines = out.getvalue().splitlines()
    assert "\r" not in out.getvalue()  # no terminal control characters in a log
    assert any(line.startswith("lab: downloading: ") and line.endswith("so far") for line in lines)
    assert lines[-1].startswith("lab: downloading: done (") and "3 steps, 6.0 kB)" in lines[-1]


def test_a_terminal_gets_one_line_rewritten_in_place(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CI", raising=False)
    out = Terminal()
    script = "import time\nprint('step one', flush=True); time.sleep(1.2)"
    run_with_progress([sys.executable, "-c", script], Progress("compiling", out=out))
    text = out.getvalue()
    assert "\r\x1b[Klab: compiling: " in text and "step one" in text
    assert re.search(r"lab: compiling: done \(\d+s, 1 steps\)\n$", text), text


def test_a_failure_keeps_its_exit_code_and_output() -> None:
    out = io.StringIO()
    code, output = run_with_progress(
        [sys.executable, "-c", "import sys; print('the reason'); sys.exit(3)"], Progress("build", out=out)
    )
    assert (code, output) == (3, "the reason\n")
    assert "lab: build: FAILED" in out.getvalue()


def test_a_step_over_its_timeout_is_killed() -> None:
    code, _ = run_with_progress(
        [sys.executable, "-c", "import time; time.sleep(30)"], Progress("hang", out=io.StringIO()), timeout=1
    )
    assert code == -9
