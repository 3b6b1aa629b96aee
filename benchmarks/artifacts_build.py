"""Cold vs warm `ensure_ollama_release`, with the warm cost as a ratio of the cold one measured in this run.

cold: the artifacts cache dir (<root>/artifacts) moved aside, Go's build and module caches left as they are,
      so this is: miniaudio sdist download + `go install` (link only when the Go cache is warm) + packing.
warm: the same call again with everything cached (median of several runs).
A truly cold Go build (empty Go build cache) cannot be repeated cheaply; pass --go-log with the output of a
`time go install ...` run to print its figure beside these.

Afterwards the moved-aside cache is compared with the rebuilt one (are the artifacts reproducible?) and then
dropped; on failure it is put back.

    python benchmarks/artifacts_build.py [--version 0.24.0] [--warm-runs 5] [--go-log /tmp/obuild.log]
"""

from __future__ import annotations

import argparse
import re
import shutil
import statistics
import time
from pathlib import Path

from ollama_fleet.lab import artifacts


def timed_ensure(version: str) -> tuple[float, Path]:
    start = time.perf_counter()
    path = artifacts.ensure_ollama_release(version)
    return time.perf_counter() - start, path


def go_log_wall_seconds(log: Path) -> float | None:
    """The `real XmY.Zs` line that bash's `time` appends to a build log."""
    if not log.exists():
        return None
    match = re.search(r"^real\s+(\d+)m([\d.]+)s", log.read_text(errors="replace"), re.MULTILINE)
    return int(match.group(1)) * 60 + float(match.group(2)) if match else None


def cold_build(version: str) -> tuple[float, dict[str, str], dict[str, str] | None]:
    """Time a build with the artifacts cache moved aside; return (seconds, new sums, old sums)."""
    cache = artifacts.artifacts_dir()
    aside = cache.with_name(f".{cache.name}.bench-aside")
    if aside.exists():
        raise SystemExit(f"{aside} exists: a previous benchmark was interrupted; restore or remove it first")
    old_release = cache / "ollama" / f"v{version}"
    old_sums = artifacts.read_sums(old_release) if (old_release / artifacts.SUMS_NAME).exists() else None
    if cache.exists():
        cache.rename(aside)
    try:
        seconds, release = timed_ensure(version)
    except BaseException:
        shutil.rmtree(cache, ignore_errors=True)
        if aside.exists():
            aside.rename(cache)
        raise
    shutil.rmtree(aside, ignore_errors=True)
    return seconds, artifacts.read_sums(release), old_sums


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--version", default=artifacts.DEFAULT_VERSION)
    parser.add_argument("--warm-runs", type=int, default=5)
    parser.add_argument("--go-log", type=Path, default=Path("/tmp/obuild.log"))
    args = parser.parse_args()

    cold, new_sums, old_sums = cold_build(args.version)
    warm_runs = [timed_ensure(args.version)[0] for _ in range(args.warm_runs)]
    warm = statistics.median(warm_runs)
    release = artifacts.artifacts_dir() / "ollama" / f"v{args.version}"
    tgz_mb = (release / artifacts.TGZ_NAME).stat().st_size / 1e6
    zst_mb = (release / artifacts.ZST_NAME).stat().st_size / 1e6
    model_kb = artifacts.ensure_tiny_model().stat().st_size / 1e3

    print(f"ollama v{args.version} release artifacts ({release})")
    print(f"  cold (artifacts cache moved aside, Go cache kept): {cold:8.2f} s   (baseline 1.00)")
    print(
        f"  warm (median of {len(warm_runs)}):                      {warm:8.3f} s   ratio {warm / cold:.4f}"
    )
    go_cold = go_log_wall_seconds(args.go_log)
    if go_cold is not None:
        print(f"  truly cold go install (from {args.go_log}):  {go_cold:8.1f} s   ratio {go_cold / cold:.2f}")
    else:
        print(f"  truly cold go install: no `time` output in {args.go_log}")
    print(f"  sizes: tgz {tgz_mb:.1f} MB, tar.zst {zst_mb:.1f} MB, tiny model {model_kb:.0f} kB")
    if old_sums is None:
        print("  reproducibility: no previous build to compare with")
    else:
        verdict = "identical to" if old_sums == new_sums else "DIFFER from"
        print(f"  reproducibility: rebuilt artifacts {verdict} the cached ones")


if __name__ == "__main__":
    main()
