"""Planning's facts asked in one command (operations/together.py): run in a real shell, each part's output
and exit status come back apart, whatever the others print or how they fail."""

from __future__ import annotations

import subprocess

import pytest
from pyinfra.facts.server import LinuxDistribution

from ollama_fleet.operations.converged import VerifiedState
from ollama_fleet.operations.together import MARK, split_output, together_command

pytestmark = pytest.mark.unit


def run_together(commands: list[str]) -> list[tuple[int, list[str]]]:
    script = together_command(commands)
    done = subprocess.run(["sh", "-c", script], capture_output=True, text=True, timeout=30, check=False)
    assert done.returncode == 0 and done.stderr == "", done
    return split_output(done.stdout.splitlines())


def test_each_command_gets_its_own_output_and_status() -> None:
    parts = run_together(["echo a; echo b", "echo gone >&2; exit 3", "printf 'no newline'", "", "true"])
    assert parts == [(0, ["a", "b"]), (3, []), (0, ["no newline"]), (0, []), (0, [])]


def test_a_mark_printed_by_a_command_is_only_its_output() -> None:
    """A line that looks like a mark but has another index is output (the index must be the next one)."""
    parts = run_together([f"echo '{MARK} 5 0'", "echo x"])
    assert parts == [(0, [f"{MARK} 5 0"]), (0, ["x"])]


def test_an_output_cut_off_has_no_part_for_what_is_missing() -> None:
    """A command cut short (the connection lost) gives fewer parts: those facts are asked again alone."""
    output = ["a", f"{MARK} 0 0", "b"]
    assert split_output(output) == [(0, ["a"])]


def test_real_facts_read_together_as_alone() -> None:
    """pyinfra's LinuxDistribution and the fast re-run's state read, together: each as it reads alone."""
    facts = [LinuxDistribution(), VerifiedState()]
    commands = [facts[0].command(), facts[1].command(record="/nonexistent/record", probe="echo s1")]
    together = run_together(commands)
    for fact, command, (status, lines) in zip(facts, commands, together, strict=True):
        alone = subprocess.run(["sh", "-c", command], capture_output=True, text=True, timeout=30, check=False)
        assert status == alone.returncode
        assert fact.process(lines) == fact.process(alone.stdout.splitlines())
