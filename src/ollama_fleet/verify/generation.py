"""Which configured models the full check asks to generate, and which it only shows: pure, from /api/ps.

A generation on a model Ollama has not loaded loads it, and a load can make Ollama evict a loaded model that
clients are using (server/sched.go: when OLLAMA_MAX_LOADED_MODELS runners are loaded, or when the new one
does not fit in memory). So the check generates on:

- models already loaded, or on the loaded weights of one (a models_custom on a loaded base: /api/ps names
  only the model that loaded them);
- models whose load cannot evict anything: while no model is loaded at all, or while fewer runners are
  loaded than OLLAMA_MAX_LOADED_MODELS allows on a CPU host. On a host serving from a GPU the VRAM decides,
  and a client cannot see how much is free: there a load is made only when nothing is loaded.

Every other model is shown by /api/show (it is there and Ollama reads its manifest), not generated, and the
check says so. The stream check's one generation also answers for its model in `chat`, so every model gets
one short generation at most.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

DEFAULT_RUNNERS_PER_GPU = 3  # OLLAMA_MAX_LOADED_MODELS 0 or unset: 3 per GPU, 3 on a CPU host


@dataclass(frozen=True)
class Loaded:
    """/api/ps as the decision needs it."""

    names: frozenset[str] = frozenset()
    on_gpu: bool = False  # some loaded model sits (partly) in VRAM


def loaded_from_ps(ps: object) -> Loaded:
    """The loaded models of an /api/ps answer; none when it is not one."""
    models = ps.get("models") if isinstance(ps, dict) else None
    entries = [m for m in models or [] if isinstance(m, dict) and m.get("name")]
    return Loaded(
        frozenset(str(m["name"]) for m in entries),
        any(int(m.get("size_vram") or 0) > 0 for m in entries),
    )


def max_loaded_models(env: Mapping[str, str]) -> int:
    """Runners Ollama keeps loaded at once (OLLAMA_MAX_LOADED_MODELS; 0 or unset: 3, per GPU)."""
    raw = env.get("OLLAMA_MAX_LOADED_MODELS", "").strip()
    return int(raw) if raw.isdigit() and int(raw) > 0 else DEFAULT_RUNNERS_PER_GPU


@dataclass(frozen=True)
class GenerationPlan:
    stream_model: str | None  # the model `stream` streams (its answer serves `chat`); None: none may load
    warm: tuple[str, ...]  # loaded already: asked at once, within OLLAMA_NUM_PARALLEL
    cold: tuple[str, ...]  # loading them evicts nothing: asked one after another, after the stream
    shown: tuple[str, ...]  # loading could evict a loaded model: /api/show only
    loaded_runners: tuple[str, ...] = field(default=())  # /api/ps's names: what a load could evict

    def why_shown(self) -> str:
        return f"loading could evict {', '.join(self.loaded_runners) or 'a loaded model'}"


def plan_generation(
    models: Sequence[str],
    loaded: Loaded,
    mates: Mapping[str, Sequence[str]],
    max_loaded: int,
    vram_decides: bool,
) -> GenerationPlan:
    """Split the configured models (in their order) into warm, cold and shown, and pick the stream's model:
    the first warm one, else the first cold one (the stream then loads it)."""
    runners = {_runner(name, loaded.names, mates) for name in loaded.names}
    warm = [m for m in models if _runner(m, loaded.names, mates) in runners]
    room = _room(len(runners), max_loaded, vram_decides or loaded.on_gpu)
    cold: list[str] = []
    shown: list[str] = []
    to_load: list[str] = []  # cold runners in the order they are loaded
    for model in models:
        if model in warm:
            continue
        runner = _runner(model, loaded.names, mates)
        if runner not in to_load and len(to_load) < room:
            to_load.append(runner)
        (cold if runner in to_load else shown).append(model)
    stream = next(iter(warm or cold), None)
    return GenerationPlan(
        stream_model=stream,
        warm=tuple(warm),
        cold=tuple(cold),
        shown=tuple(shown),
        loaded_runners=tuple(sorted(loaded.names)),
    )


def _runner(model: str, loaded: frozenset[str], mates: Mapping[str, Sequence[str]]) -> str:
    """The name that stands for the weights `model` runs on: a loaded mate's name, else the group's first."""
    group = list(mates.get(model) or [model])
    return next((name for name in group if name in loaded), group[0])


def _room(runners_loaded: int, max_loaded: int, vram_decides: bool) -> int:
    """Runners the check may load without making Ollama evict one."""
    if runners_loaded == 0:
        return 1 if vram_decides else max_loaded
    return 0 if vram_decides else max(0, max_loaded - runners_loaded)
