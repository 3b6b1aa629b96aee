"""Which models a host serves: pulled from a registry, created from GGUF files, or built from a Modelfile."""

from __future__ import annotations

import re
from pathlib import Path

from pydantic import Field, field_validator

from ollama_fleet.settings.base import IPNetwork, Section
from ollama_fleet.settings.rules import MODEL_NAME, listed_name, model_reference, split_pin

# Modelfile parameters that change how Ollama loads weights: a model setting one gets a runner of its own.
RUNNER_PARAMETERS = frozenset({"num_ctx", "num_batch", "num_gpu", "main_gpu", "use_mmap", "num_thread"})


class CustomModel(Section):
    """A model built from a Modelfile template (FROM a base, SYSTEM, PARAMETER...)."""

    name: str
    base: str  # a model name, or a GGUF name listed in models_gguf
    system: str | None = None
    parameters: dict[str, str | int | float] = Field(default_factory=dict)
    template: str = "Modelfile.j2"

    # Each value becomes one line of a Modelfile; these keep it one line of the intended instruction.
    @field_validator("name", "base")
    @classmethod
    def _model_name(cls, value: str) -> str:
        if not MODEL_NAME.fullmatch(value):
            raise ValueError(f"{value!r} is not a model name; write it like vehicle-assistant or llama3.2:1b")
        return value

    @field_validator("system")
    @classmethod
    def _system(cls, value: str | None) -> str | None:
        if value is not None and '"""' in value:
            raise ValueError('system may not contain """: a Modelfile has no way to escape it')
        return value

    @field_validator("parameters")
    @classmethod
    def _parameters(cls, value: dict[str, str | int | float]) -> dict[str, str | int | float]:
        for name, raw in value.items():
            if not re.fullmatch(r"[A-Za-z0-9_]+", name):
                raise ValueError(f"parameter name {name!r} may hold only letters, digits and '_'")
            if any(ord(c) < 32 for c in str(raw)) or '"""' in str(raw):
                raise ValueError(f'parameter {name!r} must be one line without """')
        return value


class ModelsSettings(Section):
    pull: list[str] = Field(default_factory=list)  # registry names, e.g. llama3.2:1b
    gguf: dict[str, Path] = Field(default_factory=dict)  # model name -> GGUF file on the controller
    custom: list[CustomModel] = Field(default_factory=list)
    prune: bool = False  # delete models not listed above
    insecure_registries: list[str] = Field(default_factory=list)  # host:port pulled over plain http
    refresh: bool = False  # pull unpinned models again when the registry's manifest changed
    seed_host: str | None = None  # the host that pulls registry models and serves them to the others
    lan_port: int = Field(default=11435, ge=1, le=65535)  # where the seed serves them (plain http)
    lan_subnets: list[IPNetwork] = Field(default_factory=list)  # who may fetch from the seed
    # A pull whose completed bytes do not grow for this many seconds fails as stalled.
    pull_stall_timeout: int = Field(default=600, ge=10, le=86400)

    @field_validator("pull")
    @classmethod
    def _pull_entries(cls, value: list[str]) -> list[str]:
        for entry in value:
            name = split_pin(entry)[0]
            if "@" in name:
                raise ValueError(
                    f"{entry!r}: a pinned digest is written name@sha256:<64 lowercase hex>, e.g. "
                    f"{name.split('@')[0]}@sha256:{'0' * 64} (the manifest digest /api/tags shows)"
                )
            if not MODEL_NAME.fullmatch(name):
                raise ValueError(f"{entry!r} is not a model name (letters, digits and ._:/- only)")
        return value

    @field_validator("lan_subnets", mode="before")
    @classmethod
    def _subnet_list(cls, value: object) -> object:
        return [value] if isinstance(value, str) else value

    @field_validator("insecure_registries")
    @classmethod
    def _registries_are_host_ports(cls, value: list[str]) -> list[str]:
        for entry in value:
            if not re.fullmatch(r"[A-Za-z0-9_][A-Za-z0-9_.:-]*", entry):
                raise ValueError(
                    f"{entry!r} is not a registry host; write it as in the model name, e.g. 10.0.0.5:8080 "
                    "(no scheme, no path)"
                )
        return value

    @field_validator("gguf")
    @classmethod
    def _files_exist(cls, value: dict[str, Path]) -> dict[str, Path]:
        for name, path in value.items():
            if not Path(path).is_file():
                raise ValueError(f"GGUF for model {name!r} not found on the controller at {str(path)!r}")
        return value

    def names(self) -> list[str]:
        """Every model the host must serve, as Ollama lists them."""
        return [listed_name(n) for n in [*self.pull, *self.gguf, *(c.name for c in self.custom)]]

    def runner_mates(self) -> dict[str, list[str]]:
        """Listed name -> the listed names Ollama runs on the same loaded weights, for each name that has
        mates: a models_custom on a base (and none of RUNNER_PARAMETERS) shares its base's runner, and
        /api/ps names only the model that loaded it."""
        customs = {listed_name(c.name): c for c in self.custom}
        groups: dict[str, set[str]] = {}
        for name in self.names():
            root, seen = name, set()
            while root in customs and root not in seen:
                if RUNNER_PARAMETERS & set(customs[root].parameters):
                    break  # a runner of its own
                seen.add(root)
                root = listed_name(customs[root].base)
            groups.setdefault(root, {root}).add(name)
        return {name: sorted(group) for group in groups.values() if len(group) > 1 for name in sorted(group)}

    def pin(self, name: str) -> str | None:
        """The manifest digest a pulled model must have, by its listed name."""
        for entry in self.pull:
            if listed_name(entry) == listed_name(name):
                return split_pin(entry)[1]
        return None

    def fanned_out(self) -> list[tuple[str, bool]]:
        """Every model a seed serves, with whether the seed creates it itself (GGUF, Modelfile)."""
        return [
            *((name, False) for name in self.pull),
            *((name, True) for name in self.gguf),
            *((custom.name, True) for custom in self.custom),
        ]

    def lan_collisions(self) -> list[str]:
        """Models a seed could not serve apart: one namespace/model:tag on its LAN registry."""
        seen: dict[tuple[str, str], str] = {}
        clashes = []
        for name, local in self.fanned_out():
            ref = model_reference(name).on_lan(local)
            other = seen.setdefault((ref.repository, ref.tag), name)
            if other != name:
                clashes.append(f"{other!r} and {name!r}")
        return clashes

    def pulls_insecurely(self, name: str) -> bool:
        """Whether `name` comes from a registry in insecure_registries (Ollama then pulls over http)."""
        parts = name.split("://", 1)[-1].split("/")
        return len(parts) == 3 and parts[0] in self.insecure_registries
