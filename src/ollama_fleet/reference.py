"""The settings reference: every setting with its type, allowed values, default and what it does.

What a setting does is written once, as the comment above it in group_data/all.py (the documented defaults,
kept equal to the settings models by a unit test); its type and allowed values come from the models. The
reference in docs/settings.md is generated from both (`ollama-fleet settings reference`), and a unit test
fails when it is stale.
"""

from __future__ import annotations

import ast
import types
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from pydantic.fields import FieldInfo

from ollama_fleet.settings import SECTIONS
from ollama_fleet.settings.errors import closest


@dataclass(frozen=True)
class Entry:
    key: str
    kind: str  # the type, in words
    default: str  # as group_data/all.py writes it
    doc: str  # the comment above it


@dataclass(frozen=True)
class Group:
    title: str
    entries: list[Entry]


def defaults_file() -> Path:
    """group_data/all.py, packaged inside the wheel or at the top of the source tree (editable installs)."""
    packaged = Path(__file__).parent / "group_data_all.py"
    return packaged if packaged.is_file() else Path(__file__).resolve().parents[2] / "group_data" / "all.py"


def field_info(key: str) -> FieldInfo | None:
    prefix, _, name = key.partition("_")
    model = SECTIONS.get(prefix)
    return model.model_fields.get(name) if model is not None else None


def describe_type(annotation: Any) -> str:
    """`str`, `one of "auto", "tgz"`, `list of str`, `str or None`... in words."""
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin is Literal:
        return "one of " + ", ".join(f'"{a}"' if isinstance(a, str) else repr(a) for a in args)
    if origin in (typing.Union, types.UnionType):
        return " or ".join(describe_type(a) for a in args)
    if origin is list:
        return f"list of {describe_type(args[0])}" if args else "list"
    if origin is dict:
        return f"dict of {describe_type(args[0])} to {describe_type(args[1])}" if args else "dict"
    if annotation is type(None):
        return "None"
    name = getattr(annotation, "__name__", None) or str(annotation)
    return {"IPv4Network": "CIDR", "IPv6Network": "CIDR", "Path": "path"}.get(name, name)


def bounds(info: FieldInfo) -> str:
    words = []
    for constraint in info.metadata:
        for attribute, sign in (("ge", ">="), ("gt", ">"), ("le", "<="), ("lt", "<")):
            value = getattr(constraint, attribute, None)
            if value is not None:
                words.append(f"{sign} {value}")
    return f" ({', '.join(words)})" if words else ""


def parse(text: str) -> list[Group]:
    """The groups (`# --- prefix_*: title ---` lines) and each setting's comment, in file order."""
    lines = text.splitlines()
    groups: list[Group] = []
    comment: list[str] = []
    last_end = 0
    for node in ast.parse(text).body:
        if not isinstance(node, ast.Assign) or not isinstance(node.targets[0], ast.Name):
            last_end = node.end_lineno or node.lineno
            continue
        comment = []
        for line in lines[last_end : node.lineno - 1]:
            stripped = line.strip()
            if stripped.startswith("# ---"):
                groups.append(Group(stripped.strip("#- ").rstrip("-").strip(), []))
                comment = []
            elif stripped.startswith("#"):
                comment.append(stripped.lstrip("#").strip())
        key = node.targets[0].id
        info = field_info(key)
        kind = describe_type(info.annotation) + bounds(info) if info is not None else "?"
        default = "\n".join(lines[node.lineno - 1 : node.end_lineno]).partition("=")[2].strip()
        # A setting written right under another without a comment of its own shares that one's.
        previous = groups[-1].entries[-1].doc if groups[-1].entries else ""
        groups[-1].entries.append(Entry(key, kind, default, " ".join(comment) or previous))
        last_end = node.end_lineno or node.lineno
    return groups


def reference() -> list[Group]:
    return parse(defaults_file().read_text())


def entries() -> dict[str, Entry]:
    return {entry.key: entry for group in reference() for entry in group.entries}


def explain(key: str) -> str | None:
    entry = entries().get(key)
    if entry is None:
        return None
    return f"{entry.key} = {entry.default}\n  type: {entry.kind}\n  {entry.doc}"


def unknown(key: str) -> str:
    return f"{key}: unknown setting; {closest(key, sorted(entries()))}"


def markdown() -> str:
    out = [
        "# Settings reference",
        "",
        "Every setting of ollama-fleet, generated from `group_data/all.py` (what each does, its default)",
        "and the settings models (its type and allowed values) by",
        "`ollama-fleet settings reference > docs/settings.md`; a unit test fails when this page is stale.",
        "Set them per group in `group_data/<group>.py` or per host in the inventory; every host's settings",
        "are validated before any host changes. One entry: `ollama-fleet settings explain KEY`.",
    ]
    for group in reference():
        out += [
            "",
            f"## {group.title}",
            "",
            "| setting | type | default | what it does |",
            "|---|---|---|---|",
        ]
        for e in group.entries:
            cells = [f"`{e.key}`", e.kind, f"`{' '.join(e.default.split())}`", e.doc]
            out.append("| " + " | ".join(cell.replace("|", "\\|") for cell in cells) + " |")
    return "\n".join(out) + "\n"
