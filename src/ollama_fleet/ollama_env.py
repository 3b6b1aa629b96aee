"""The environment variables Ollama reads (envconfig/config.go), with a checker for each.

Ollama is lenient in dangerous ways: a boolean it cannot parse counts as true, a bad duration silently
becomes the default, and a malformed origin panics the server at start. Every value we write into the
systemd drop-in passes through `check_value` first, so none of that reaches a host.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass

Checker = Callable[[str], str | None]
"""Returns None when the value is fine, else a sentence saying what is wrong and how to fix it."""

_BOOL_WORDS = {"1", "t", "T", "TRUE", "true", "True", "0", "f", "F", "FALSE", "false", "False"}
_DURATION = re.compile(r"^-?(\d+(\.\d+)?(ns|us|µs|ms|s|m|h))+$")


def check_bool(value: str) -> str | None:
    if value in _BOOL_WORDS:
        return None
    return (
        f"{value!r} is not a boolean Ollama can parse, and Ollama treats unparsable booleans as TRUE; "
        "use 1/true or 0/false"
    )


def check_duration(value: str) -> str | None:
    if re.fullmatch(r"-?\d+", value) or _DURATION.match(value):
        return None
    return (
        f"{value!r} is not a duration; Ollama would silently use its default. "
        "Use seconds (300), a Go duration (5m, 1h30m) or a negative value to keep models loaded forever"
    )


def check_uint(value: str) -> str | None:
    if re.fullmatch(r"\d+", value):
        return None
    return f"{value!r} is not a non-negative integer"


def check_choice(*choices: str) -> Checker:
    def check(value: str) -> str | None:
        if value in choices:
            return None
        return f"{value!r} is not one of {', '.join(choices)}"

    return check


# What gin-contrib/cors accepts in an origin without '*': Ollama turns on browser-extension schemes but not
# file:// or ws://, and any other scheme panics at start.
_CORS_SCHEMES = (
    "http://",
    "https://",
    "chrome-extension://",
    "safari-extension://",
    "moz-extension://",
    "ms-browser-extension://",
)


def check_origin(origin: str) -> str | None:
    """One OLLAMA_ORIGINS entry, as gin-contrib/cors validates it (a failure panics `ollama serve`)."""
    if origin == "*":
        return None
    if origin != origin.strip() or any(c.isspace() or ord(c) < 32 for c in origin):
        return f"origin {origin!r} contains a space; Ollama splits on commas without trimming and panics"
    if origin.count("*") > 1:
        return f"origin {origin!r} has more than one '*'; Ollama panics on it"
    if "://" not in origin:
        return f"origin {origin!r} has no scheme; write it as https://{origin} (Ollama panics otherwise)"
    if "*" not in origin and not origin.startswith(_CORS_SCHEMES):
        return (
            f"origin {origin!r}: without a '*' Ollama accepts only {', '.join(_CORS_SCHEMES)} origins and "
            "panics on others; for an app scheme write it with a wildcard, like app://*"
        )
    return None


def check_origins(value: str) -> str | None:
    for origin in value.split(","):
        problem = check_origin(origin)
        if problem:
            return problem
    return None


def check_any(value: str) -> str | None:
    return None


_TRUE_WORDS = {"1", "t", "T", "TRUE", "true", "True"}


def is_true(value: str) -> bool:
    """How Ollama's envconfig reads a boolean that check_bool accepted."""
    return value in _TRUE_WORDS


# --- GPU selection (the values CUDA, ROCm and Ollama's discovery accept) ---

_CUDA_UUID = re.compile(r"(GPU|MIG)-[0-9a-fA-F-]{8,}")
_ROCR_UUID = re.compile(r"GPU-[0-9a-fA-F]{16}")
LLM_LIBRARIES = ("cuda_v12", "cuda_v13", "rocm", "vulkan", "cuda_jetpack5", "cuda_jetpack6")
"""The lib/ollama/<dir> names OLLAMA_LLM_LIBRARY is matched against (Ollama compares the directory name)."""


def _device_list(value: str, name: str, uuid: re.Pattern[str] | None, uuid_hint: str) -> str | None:
    if value == "-1":
        return None  # hides every GPU of that kind on purpose: CPU only
    entries = value.split(",")
    if any(entry != entry.strip() or not entry for entry in entries):
        return f"{value!r}: write the {name} comma-separated without spaces or empty entries, like 0,1"
    kinds = {
        "index" if entry.isdigit() else "uuid" if uuid and uuid.fullmatch(entry) else "bad"
        for entry in entries
    }
    if "bad" in kinds:
        bad = next(e for e in entries if not e.isdigit() and not (uuid and uuid.fullmatch(e)))
        return f"{bad!r} is not a {name} entry: use indexes (0,1){uuid_hint}"
    if len(kinds) > 1:
        return f"{value!r} mixes indexes and UUIDs; use one kind (UUIDs stay right when GPUs are reordered)"
    return None


def check_cuda_devices(value: str) -> str | None:
    """CUDA_VISIBLE_DEVICES: indexes or UUIDs; CUDA silently drops everything after the first bad entry."""
    return _device_list(
        value, "GPU", _CUDA_UUID, " or UUIDs from `nvidia-smi -L` (GPU-..., MIG-...), preferred"
    )


def check_hip_devices(value: str) -> str | None:
    return _device_list(value, "GPU", None, " (HIP takes no UUIDs; use ROCR_VISIBLE_DEVICES for those)")


def check_rocr_devices(value: str) -> str | None:
    return _device_list(value, "GPU", _ROCR_UUID, " or UUIDs like GPU-0123456789abcdef (rocminfo)")


def check_gfx_version(value: str) -> str | None:
    """HSA_OVERRIDE_GFX_VERSION is major.minor.stepping (gfx1030 is 10.3.0)."""
    if re.fullmatch(r"\d{1,2}\.\d\.\d", value):
        return None
    gfx = re.fullmatch(r"(?:gfx)?(\d{1,2})(\d)([0-9a-f])", value.lower())
    hint = f"; for {value} write {gfx.group(1)}.{gfx.group(2)}.{int(gfx.group(3), 16)}" if gfx else ""
    return f"{value!r} is not a GFX version; ROCm wants major.minor.stepping, like 10.3.0 for gfx1030{hint}"


def check_llm_library(value: str) -> str | None:
    """OLLAMA_LLM_LIBRARY keeps only the library directory of that exact name: others hide every GPU."""
    if value in LLM_LIBRARIES:
        return None
    hint = ""
    if value.lower().startswith("cuda"):
        hint = "; for NVIDIA on Debian's 535/550 drivers write cuda_v12 (cuda_v13 needs driver 580+)"
    elif value.lower().startswith(("cpu", "rocm", "hip")):
        hint = "; to force the CPU set CUDA_VISIBLE_DEVICES=-1 (or HIP_VISIBLE_DEVICES=-1) instead"
    return (
        f"{value!r} matches no library directory, so Ollama would use no GPU at all; "
        f"use one of {', '.join(LLM_LIBRARIES)}{hint}"
    )


def check_bytes(value: str) -> str | None:
    if re.fullmatch(r"\d+", value):
        return None
    return f"{value!r} is not a number of bytes; Ollama would ignore it: write e.g. 1073741824 for 1 GiB"


@dataclass(frozen=True)
class OllamaVar:
    name: str
    check: Checker
    summary: str


KNOWN: dict[str, OllamaVar] = {
    v.name: v
    for v in [
        OllamaVar("OLLAMA_HOST", check_any, "bind address (managed by ollama-fleet: set ollama_listen)"),
        OllamaVar("OLLAMA_ORIGINS", check_origins, "extra CORS origins (managed: set ollama_origins)"),
        OllamaVar("OLLAMA_MODELS", check_any, "models directory (managed: set ollama_models_dir)"),
        OllamaVar("OLLAMA_KEEP_ALIVE", check_duration, "how long a model stays loaded (default 5m)"),
        OllamaVar("OLLAMA_LOAD_TIMEOUT", check_duration, "how long a model load may stall (default 5m)"),
        OllamaVar("OLLAMA_MAX_LOADED_MODELS", check_uint, "models loaded at once (0 = 3 per GPU)"),
        OllamaVar("OLLAMA_NUM_PARALLEL", check_uint, "parallel requests per model (default 1)"),
        OllamaVar("OLLAMA_MAX_QUEUE", check_uint, "queued requests before 503 (default 512)"),
        OllamaVar("OLLAMA_FLASH_ATTENTION", check_bool, "enable flash attention"),
        OllamaVar("OLLAMA_KV_CACHE_TYPE", check_choice("f16", "q8_0", "q4_0"), "K/V cache quantisation"),
        OllamaVar("OLLAMA_CONTEXT_LENGTH", check_uint, "default context length"),
        OllamaVar("OLLAMA_DEBUG", check_choice("0", "1", "2", "false", "true"), "1 debug, 2 trace"),
        OllamaVar("OLLAMA_GPU_OVERHEAD", check_bytes, "bytes of VRAM to reserve per GPU"),
        OllamaVar("OLLAMA_SCHED_SPREAD", check_bool, "spread a model over all GPUs"),
        OllamaVar("OLLAMA_NOPRUNE", check_bool, "do not prune unused blobs at start"),
        OllamaVar("OLLAMA_NOHISTORY", check_bool, "no readline history"),
        OllamaVar("OLLAMA_LLM_LIBRARY", check_llm_library, "use only this GPU library (cuda_v12, rocm...)"),
        OllamaVar("OLLAMA_VULKAN", check_bool, "experimental Vulkan backend"),
        OllamaVar("OLLAMA_MAX_TRANSFER_STREAMS", check_uint, "parallel download streams"),
        OllamaVar("OLLAMA_NO_CLOUD", check_bool, "disable cloud models"),
        OllamaVar("OLLAMA_INTEL_GPU", check_bool, "experimental Intel GPU support"),
        OllamaVar("OLLAMA_MULTIUSER_CACHE", check_bool, "prompt cache for many users (older releases)"),
        OllamaVar("OLLAMA_NEW_ENGINE", check_bool, "new engine (older releases)"),
        OllamaVar("CUDA_VISIBLE_DEVICES", check_cuda_devices, "NVIDIA GPUs to use"),
        OllamaVar("HIP_VISIBLE_DEVICES", check_hip_devices, "AMD GPUs to use"),
        OllamaVar("ROCR_VISIBLE_DEVICES", check_rocr_devices, "AMD GPUs to use"),
        OllamaVar("GPU_DEVICE_ORDINAL", check_hip_devices, "AMD GPU order"),
        OllamaVar("HSA_OVERRIDE_GFX_VERSION", check_gfx_version, "AMD GFX version override"),
        OllamaVar("HTTPS_PROXY", check_any, "proxy for registry pulls"),
        OllamaVar("HTTP_PROXY", check_any, "proxy for registry pulls"),
        OllamaVar("NO_PROXY", check_any, "hosts not to proxy"),
    ]
}

# Variables we set from dedicated settings; writing them in ollama_env would fight those settings.
MANAGED = {
    "OLLAMA_HOST": "ollama_listen",
    "OLLAMA_ORIGINS": "ollama_origins",
    "OLLAMA_MODELS": "ollama_models_dir",
    "OLLAMA_NO_CLOUD": "ollama_cloud",
}

REMOVED: dict[str, str] = {
    "OLLAMA_MAX_VRAM": "was removed from Ollama in May 2025; use OLLAMA_GPU_OVERHEAD to reserve VRAM",
    "OLLAMA_RUNNERS_DIR": "was removed from Ollama; runners are bundled in lib/ollama",
    "OLLAMA_TMPDIR": "was removed from Ollama; nothing replaces it",
    "OLLAMA_AUTH": "is client-side request signing, not server auth; set auth_* to require API keys at nginx",
}


def problem_with(name: str, value: str) -> str | None:
    """Why NAME=VALUE must not go into Ollama's environment, or None when it is fine."""
    if name in REMOVED:
        return f"{name} {REMOVED[name]}"
    if name in MANAGED:
        return f"{name} is managed by ollama-fleet; set {MANAGED[name]} instead"
    var = KNOWN.get(name)
    if var is None:
        close = [k for k in KNOWN if _similar(k, name)]
        hint = f"; did you mean {close[0]}?" if close else f"; known: {', '.join(sorted(KNOWN))}"
        return f"{name} is not a variable Ollama reads{hint}"
    return var.check(value)


def _similar(a: str, b: str) -> bool:
    """Cheap typo detector: same length +-1 and at most two differing characters after alignment."""
    from difflib import SequenceMatcher

    return SequenceMatcher(None, a, b).ratio() >= 0.85


def combination_problems(env: dict[str, str]) -> list[str]:
    """Values that are each fine but do nothing together (Ollama only logs a warning)."""
    problems = []
    kv = env.get("OLLAMA_KV_CACHE_TYPE", "f16")
    if kv in ("q8_0", "q4_0") and not is_true(env.get("OLLAMA_FLASH_ATTENTION", "")):
        problems.append(
            f"OLLAMA_KV_CACHE_TYPE {kv} needs flash attention, else Ollama ignores it with a warning and "
            "keeps f16: add OLLAMA_FLASH_ATTENTION=1 to ollama_env, or drop OLLAMA_KV_CACHE_TYPE"
        )
    return problems
