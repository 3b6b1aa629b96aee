"""group_data/all.py documents every setting with exactly the default settings.py uses."""

from __future__ import annotations

import runpy
from pathlib import Path
from typing import Any

import pytest
from pydantic import TypeAdapter

from ollama_fleet.settings import SECTIONS

pytestmark = pytest.mark.unit

ALL_PY = Path(__file__).resolve().parents[2] / "group_data" / "all.py"
# resolved from the environment or the secrets file, never from data
NOT_SETTABLE = {"auth_keys", "auth_refused_keys"}


def _defaults() -> dict[str, tuple[Any, Any]]:
    """flat key -> (annotation, default) for every setting a user may write."""
    found = {}
    for prefix, model in SECTIONS.items():
        for field, info in model.model_fields.items():
            key = f"{prefix}_{field}"
            if key in NOT_SETTABLE:
                continue
            default = info.get_default(call_default_factory=True)
            found[key] = (info.annotation, default)
    return found


def _group_data() -> dict[str, Any]:
    return {k: v for k, v in runpy.run_path(str(ALL_PY)).items() if not k.startswith("__")}


def test_every_setting_is_in_group_data_and_nothing_else() -> None:
    assert sorted(_group_data()) == sorted(_defaults())


@pytest.mark.parametrize("key", sorted(_defaults()))
def test_group_data_value_is_the_settings_default(key: str) -> None:
    annotation, default = _defaults()[key]
    assert TypeAdapter(annotation).validate_python(_group_data()[key]) == default


SHARES_COMMENT_ABOVE = {
    "ollama_group",
    "nginx_http_port",
    "nginx_send_timeout",
    "tls_key_file",
    "gateway_fail_timeout",
}  # pairs, one comment each


def test_every_key_is_documented_by_a_comment_above_it() -> None:
    lines = ALL_PY.read_text().splitlines()
    keys = {
        i: line.split("=")[0].strip() for i, line in enumerate(lines) if line[:1].isalpha() and "=" in line
    }
    for index, key in keys.items():
        if key in SHARES_COMMENT_ABOVE:
            assert keys.get(index - 1), f"{key} should follow the key it shares a comment with"
        else:
            assert lines[index - 1].startswith("# "), f"{key} has no comment line above it"
