"""Which models the full check generates on and which it only shows: it never evicts a loaded model."""

from __future__ import annotations

import pytest

from ollama_fleet.settings import settings_for_host
from ollama_fleet.verify.generation import (
    Loaded,
    loaded_from_ps,
    max_loaded_models,
    plan_generation,
)

pytestmark = pytest.mark.unit

MODELS = ["a:latest", "b:latest", "c:latest", "d:latest"]


def loaded(*names: str, on_gpu: bool = False) -> Loaded:
    return Loaded(frozenset(names), on_gpu)


def test_every_model_loaded_is_generated_and_the_first_streams() -> None:
    plan = plan_generation(MODELS, loaded(*MODELS), {}, 4, vram_decides=False)
    assert plan.warm == tuple(MODELS)
    assert plan.cold == plan.shown == ()
    assert plan.stream_model == "a:latest"


def test_nothing_loaded_on_a_cpu_host_loads_up_to_the_runner_limit_and_shows_the_rest() -> None:
    plan = plan_generation(MODELS, loaded(), {}, 3, vram_decides=False)
    assert plan.warm == ()
    assert plan.cold == ("a:latest", "b:latest", "c:latest")
    assert plan.shown == ("d:latest",)
    assert plan.stream_model == "a:latest"  # the stream loads it


def test_nothing_loaded_on_a_gpu_host_loads_one_model_only() -> None:
    """The VRAM decides there, and a client cannot see how much is free: a second load could evict."""
    plan = plan_generation(MODELS, loaded(), {}, 3, vram_decides=True)
    assert plan.cold == ("a:latest",)
    assert plan.shown == ("b:latest", "c:latest", "d:latest")


def test_a_full_host_loads_nothing_and_streams_on_a_loaded_model() -> None:
    plan = plan_generation(MODELS, loaded("c:latest"), {}, 1, vram_decides=False)
    assert plan.warm == ("c:latest",)
    assert plan.cold == ()
    assert plan.shown == ("a:latest", "b:latest", "d:latest")
    assert plan.stream_model == "c:latest"
    assert plan.why_shown() == "loading could evict c:latest"


def test_a_cpu_host_with_room_loads_only_into_the_free_runners() -> None:
    plan = plan_generation(MODELS, loaded("c:latest"), {}, 3, vram_decides=False)
    assert plan.warm == ("c:latest",)
    assert plan.cold == ("a:latest", "b:latest")
    assert plan.shown == ("d:latest",)


def test_a_gpu_host_with_anything_loaded_loads_nothing() -> None:
    plan = plan_generation(MODELS, loaded("c:latest"), {}, 3, vram_decides=True)
    assert plan.cold == ()
    assert plan.shown == ("a:latest", "b:latest", "d:latest")


def test_a_model_in_vram_makes_the_vram_decide_whatever_the_settings_say() -> None:
    plan = plan_generation(MODELS, loaded("c:latest", on_gpu=True), {}, 3, vram_decides=False)
    assert plan.cold == ()


def test_a_loaded_model_that_is_not_configured_holds_a_runner_and_is_named() -> None:
    """A model a client loaded that this inventory does not list can still be evicted."""
    plan = plan_generation(["a:latest"], loaded("other:latest"), {}, 1, vram_decides=False)
    assert plan.shown == ("a:latest",)
    assert plan.stream_model is None
    assert "other:latest" in plan.why_shown()


def test_a_custom_model_on_loaded_weights_is_warm_and_one_on_cold_weights_shares_their_load() -> None:
    group = ["base:latest", "custom:latest"]
    mates = {"base:latest": group, "custom:latest": group}
    warm = plan_generation(["base:latest", "custom:latest"], loaded("base:latest"), mates, 1, False)
    assert warm.warm == ("base:latest", "custom:latest") and warm.shown == ()
    cold = plan_generation(["custom:latest", "base:latest", "x:latest"], loaded(), mates, 1, False)
    assert cold.cold == ("custom:latest", "base:latest")  # one runner: the room of one holds both
    assert cold.shown == ("x:latest",)


def test_runner_mates_from_settings_make_the_lab_models_one_runner() -> None:
    settings = settings_for_host(
        "h",
        {
            "firewall_enabled": False,
            "auth_enabled": False,
            "models_pull": ["tiny"],
            "models_custom": [{"name": "assistant", "base": "tiny", "parameters": {"num_predict": 16}}],
        },
    )
    plan = plan_generation(
        settings.models.names(), loaded("tiny:latest"), settings.models.runner_mates(), 1, False
    )
    assert plan.warm == ("tiny:latest", "assistant:latest")


@pytest.mark.parametrize(("raw", "runners"), [("", 3), ("0", 3), ("1", 1), ("5", 5), ("x", 3)])
def test_the_runner_limit_is_ollamas(raw: str, runners: int) -> None:
    assert max_loaded_models({"OLLAMA_MAX_LOADED_MODELS": raw} if raw else {}) == runners


def test_api_ps_is_read_for_names_and_vram() -> None:
    ps = {"models": [{"name": "a:latest", "size": 10, "size_vram": 4}, {"name": "b:latest"}, "junk"]}
    assert loaded_from_ps(ps) == Loaded(frozenset({"a:latest", "b:latest"}), on_gpu=True)
    assert loaded_from_ps({"models": None}) == Loaded()
    assert loaded_from_ps([]) == Loaded()
