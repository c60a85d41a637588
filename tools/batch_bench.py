"""Folder runs on this machine: images/s of the pipelined engine against the single-thread rate and the
sequential folder mode, and peak memory against a single cut-out's. Every run is the real CLI
(`python -m cutq_runtime remove DIR --out-dir OUT`) under `/usr/bin/time -v`, the modes interleaved in rounds
so that noise from other jobs hits all of them.

    .venv/bin/python tools/batch_bench.py --models u2netp-int8 u2net-int8 --rounds 2

Modes: `single` (--workers 1 --threads 1: one core), `sequential` (--workers 1, ONNX Runtime on every core: the
folder mode before pipelining), `pipelined` (the default: one image in flight per core, one thread each).
Photo sets: `davis` (the first --count davis-val photos, 854x480) and `12mp` (--big photos resized to
4000x3000 JPEGs, made once in .cache/batch-bench/).
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from PIL import Image

REPO = Path(__file__).resolve().parents[1]
DAVIS = REPO.parent / "shared" / "data" / "davis-val" / "images"
CACHE = REPO / ".cache" / "batch-bench"
MODES = {"single": ["--workers", "1", "--threads", "1"], "sequential": ["--workers", "1"], "pipelined": []}


def photo_sets(count: int, big: int) -> dict[str, Path]:
    davis = CACHE / f"davis-{count}"
    if not davis.is_dir():
        davis.mkdir(parents=True)
        for path in sorted(DAVIS.glob("*.jpg"))[:count]:
            shutil.copy(path, davis / path.name)
    twelve = CACHE / f"12mp-{big}"
    if not twelve.is_dir():
        twelve.mkdir(parents=True)
        sources = sorted(DAVIS.glob("*_00000.jpg"))[:big]
        for i, path in enumerate(sources):
            Image.open(path).convert("RGB").resize((4000, 3000), Image.Resampling.LANCZOS).save(
                twelve / f"big{i:02d}.jpg", quality=92)
    return {"davis": davis, "12mp": twelve}


def timed(argv: list[str]) -> tuple[float, float]:
    """Wall seconds and peak RSS (MB) of one CLI run."""
    started = time.perf_counter()
    proc = subprocess.run(["/usr/bin/time", "-v", *argv], capture_output=True, text=True, check=False)
    seconds = time.perf_counter() - started
    if proc.returncode != 0:
        sys.exit(f"failed: {' '.join(argv)}\n{proc.stderr[-2000:]}")
    peak = int(re.search(r"Maximum resident set size \(kbytes\): (\d+)", proc.stderr).group(1)) / 1024
    return seconds, peak


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0], epilog=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=["u2netp-int8", "u2net-int8"])
    parser.add_argument("--count", type=int, default=100, help="davis-val photos (default 100)")
    parser.add_argument("--big", type=int, default=20, help="12 MP photos (default 20)")
    parser.add_argument("--rounds", type=int, default=2, help="interleaved rounds; the median is reported")
    args = parser.parse_args()
    sets = photo_sets(args.count, args.big)
    cli = [sys.executable, "-m", "cutq_runtime", "remove"]
    rows = []
    for model in args.models:
        for name, folder in sets.items():
            images = len(list(folder.iterdir()))
            runs: dict[str, list[tuple[float, float]]] = {mode: [] for mode in MODES}
            for _ in range(args.rounds):
                for mode, flags in MODES.items():
                    with tempfile.TemporaryDirectory() as out:
                        runs[mode].append(timed([*cli, str(folder), "--out-dir", out, "--model", model, "--no-resume",
                                                 *flags]))
            with tempfile.TemporaryDirectory() as out:
                one = next(iter(sorted(folder.iterdir())))
                single_peak = timed([*cli, str(one), "-o", os.path.join(out, "one.png"), "--model", model])[1]
            rate = {mode: images / statistics.median(s for s, _ in r) for mode, r in runs.items()}
            peak = {mode: max(p for _, p in r) for mode, r in runs.items()}
            rows.append((model, name, images, rate, peak, single_peak))
            print(f"{model} {name}: " + ", ".join(f"{m} {rate[m]:.2f} img/s" for m in MODES), flush=True)
    print("\n| model | photos | single img/s | sequential img/s | pipelined img/s | pipelined / single | pipelined / "
          "sequential | peak RSS MB single / sequential / pipelined | one cut-out MB | pipelined / one |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for model, name, images, rate, peak, single_peak in rows:
        print(f"| {model} | {images} {name} | {rate['single']:.2f} | {rate['sequential']:.2f} | {rate['pipelined']:.2f} | "
              f"{rate['pipelined'] / rate['single']:.2f}x | {rate['pipelined'] / rate['sequential']:.2f}x | "
              f"{peak['single']:.0f} / {peak['sequential']:.0f} / {peak['pipelined']:.0f} | {single_peak:.0f} | "
              f"{peak['pipelined'] / single_peak:.2f}x |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
