"""The operation order read from frames is pyinfra's, line for line (ollama_fleet.pyinfra_run)."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pyinfra
import pyinfra.api.util
import pytest

from ollama_fleet import pyinfra_run

REPO = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.unit

Order = Callable[[Any], list[int]]


def _ordered_by(order: Order, state: Any) -> list[int]:
    return order(state)  # both on one line: the caller's frame is in both stacks, at the same line


def _nested(order: Order, state: Any, depth: int) -> list[int]:
    if depth:
        return _nested(order, state, depth - 1)
    return _ordered_by(order, state)


DEPLOY_CODE = """
def step(order, state):
    return nested(order, state, 2)

result = step(order, state)
"""


def _from_deploy_file(order: Order, state: Any, filename: str) -> list[int]:
    scope: dict[str, Any] = {"order": order, "state": state, "nested": _nested}
    exec(compile(DEPLOY_CODE, filename, "exec"), scope)
    return scope["result"]  # type: ignore[no-any-return]


@pytest.mark.parametrize("is_cli", [True, False])
@pytest.mark.parametrize("deploy_file", ["deploys/site.py", "/elsewhere/not-in-the-stack.py", None])
def test_the_order_from_frames_is_pyinfras_order(
    monkeypatch: pytest.MonkeyPatch, is_cli: bool, deploy_file: str | None
) -> None:
    monkeypatch.setattr(pyinfra, "is_cli", is_cli)
    state = SimpleNamespace(current_deploy_filename=deploy_file, current_op_file_number=7)
    orders = (pyinfra.api.util.get_operation_order_from_stack, pyinfra_run.operation_order_from_stack)
    pyinfras, ours = [_from_deploy_file(order, state, "deploys/site.py") for order in orders]  # one line
    assert ours == pyinfras
    if deploy_file == "/elsewhere/not-in-the-stack.py":  # pyinfra then keeps no frame's line
        assert ours == ([7] if is_cli else [])
    else:
        assert len(ours) > 4  # real stacks, not two empty lists


def test_pyinfras_order_is_the_one_the_replacement_was_written_against() -> None:
    # A pyinfra whose function changed keeps its own (read_operation_order_from_frames says False): then
    # compare the new one with operation_order_from_stack and update KNOWN_ORDER_SOURCE.
    digest = pyinfra_run.order_source_digest(pyinfra.api.util.get_operation_order_from_stack)
    assert digest == pyinfra_run.KNOWN_ORDER_SOURCE


def test_the_replacement_is_installed_only_over_the_known_function(monkeypatch: pytest.MonkeyPatch) -> None:
    module = sys.modules["pyinfra.api.operation"]  # pyinfra.api.operation is the decorator
    original = pyinfra.api.util.get_operation_order_from_stack
    monkeypatch.setattr(module, "get_operation_order_from_stack", original)
    monkeypatch.setattr(pyinfra_run, "KNOWN_ORDER_SOURCE", "another pyinfra")
    assert pyinfra_run.read_operation_order_from_frames() is False
    assert module.get_operation_order_from_stack is original
    monkeypatch.undo()
    monkeypatch.setattr(module, "get_operation_order_from_stack", original)
    assert pyinfra_run.read_operation_order_from_frames() is True
    assert module.get_operation_order_from_stack is pyinfra_run.operation_order_from_stack


def test_idle_connections_wake_once_a_second_only_where_paramiko_has_the_measured_setting(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from paramiko.transport import Transport

    monkeypatch.setattr(Transport, "_active_check_timeout", pyinfra_run.PARAMIKO_IDLE_CHECK)
    assert pyinfra_run.quieter_idle_connections() is True
    assert Transport._active_check_timeout == pyinfra_run.IDLE_CHECK_SECONDS
    assert pyinfra_run.quieter_idle_connections() is True  # again: unchanged
    monkeypatch.setattr(Transport, "_active_check_timeout", 0.25)  # a paramiko that changed it
    assert pyinfra_run.quieter_idle_connections() is False
    assert Transport._active_check_timeout == 0.25


def test_a_pyinfra_run_is_prepared_by_the_repositorys_config(tmp_path: Path) -> None:
    """config.py (pyinfra reads it before connecting) sets all three: hosts at once, order, idle wake-ups."""
    code = (
        "import runpy, sys, pyinfra.api.state\n"
        "from pyinfra.api import Config\n"
        "from pyinfra.context import ctx_config\n"
        "from paramiko.transport import Transport\n"
        "config = Config(); ctx_config.set(config)\n"
        f"runpy.run_path({str(REPO / 'config.py')!r})\n"
        "operation = sys.modules['pyinfra.api.operation']\n"
        "print(config.PARALLEL == pyinfra.api.state.MAX_PARALLEL > 40,\n"
        "      operation.get_operation_order_from_stack.__module__, Transport._active_check_timeout)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
    )
    assert done.stdout.split() == ["True", "ollama_fleet.pyinfra_run", "1.0"], done.stderr
