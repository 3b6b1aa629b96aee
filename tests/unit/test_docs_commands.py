"""Every command the README and docs/ show runs as written: each `ollama-fleet ...` line parses with the
real CLI's parser, each script or file it names exists, each `python benchmarks/x.py` line's options are the
script's own (its --help), and each `pyinfra` line names a deploy file of this repository. Commands are
taken from the fenced `sh` blocks and from inline `ollama-fleet ...` code spans."""

from __future__ import annotations

import argparse
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from ollama_fleet.cli import build_parser

pytestmark = pytest.mark.unit

REPO = Path(__file__).resolve().parents[2]
PAGES = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]


def commands(page: Path) -> list[tuple[str, bool]]:
    """(command, whole): whole for fenced `sh` lines (run as written); inline code spans only name a
    command and some of its options."""
    text = page.read_text()
    found = []
    for block in re.findall(r"```sh\n(.*?)```", text, flags=re.S):
        joined = block.replace("\\\n", " ")
        found += [(line.split(" #", 1)[0].strip(), True) for line in joined.splitlines()]
    found += [(span, False) for span in re.findall(r"`((?:ollama-fleet|python benchmarks/)[^`]*)`", text)]
    return [(c.split(" > ", 1)[0], whole) for c, whole in found if c and not c.startswith("#")]


def subparser(argv: list[str]) -> tuple[argparse.ArgumentParser, list[str]]:
    """The (sub)parser the words lead to, and the words after it."""
    parser = build_parser()
    while argv:
        actions = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
        if not actions or argv[0] not in actions[0].choices:
            break
        parser, argv = actions[0].choices[argv[0]], argv[1:]
    return parser, argv


def check_named(command: list[str]) -> None:
    """A command named inline: its subcommands exist and every --option it shows is theirs."""
    parser, rest = subparser(command)
    assert parser.prog != "ollama-fleet" or not command, f"no such command: {command}"
    known = {s for action in parser._actions for s in action.option_strings}
    for word in rest:
        option = word.strip("[]").split("=")[0]
        if option.startswith("--"):
            assert option in known, f"{' '.join(command)}: {parser.prog} has no option {option}"


def pieces(command: str) -> list[list[str]]:
    """`a && b` -> [[a...], [b...]], with shell words."""
    return [shlex.split(part) for part in re.split(r"&&|\|\|", command) if part.strip()]


ALL = [(page.name, command, whole) for page in PAGES for command, whole in commands(page)]


def test_the_docs_show_commands() -> None:
    names = {name for name, _, _ in ALL}
    assert "README.md" in names and len(ALL) > 10, ALL


@pytest.mark.parametrize(("page", "command", "whole"), ALL, ids=[f"{p}:{c[:60]}" for p, c, _ in ALL])
def test_each_command_runs_as_written(page: str, command: str, whole: bool) -> None:
    for argv in pieces(command):
        words = list(argv)
        while words and re.fullmatch(r"[A-Z_]+=.*", words[0]):  # VAR=value prefixes
            words.pop(0)
        if not words:
            continue
        tool, args = Path(words[0]).name, words[1:]
        if tool == "ollama-fleet":
            synopsis = any(re.fullmatch(r"[A-Z]+", a) or "..." in a or "|" in a or "[" in a for a in args)
            if synopsis or not whole:
                check_named(args)
                continue
            try:
                build_parser().parse_args(args)
            except SystemExit as exit_:
                pytest.fail(f"{page}: `{command}` does not parse ({exit_.code})")
        elif tool in ("python", "python3") and args and args[0].startswith("benchmarks/"):
            script = REPO / args[0]
            assert script.is_file(), f"{page}: {args[0]} does not exist"
            helped = subprocess.run([sys.executable, str(script), "--help"], capture_output=True, text=True)
            assert helped.returncode == 0, helped.stderr
            for option in (a.split("=")[0] for a in args[1:] if a.startswith("--")):
                assert option in helped.stdout, f"{page}: {args[0]} has no option {option}"
        elif tool == "pyinfra":
            deploys = [a for a in args if a.endswith(".py") and "deploy" in a]
            assert all((REPO / d).is_file() or not d.startswith("deploys/") for d in deploys), command
        elif tool == "bash":
            assert (REPO / args[0]).is_file(), f"{page}: {args[0]} does not exist"


def test_every_docs_page_is_linked_from_the_readme_and_every_link_resolves() -> None:
    readme = (REPO / "README.md").read_text()
    linked = set(re.findall(r"\]\(docs/([^)#]+\.md)", readme))
    assert linked == {page.name for page in (REPO / "docs").glob("*.md")}
    for page in PAGES:
        for link in re.findall(r"\]\(([^)#:]+\.md)", page.read_text()):
            assert (page.parent / link).is_file(), f"{page.name}: {link} does not exist"
