"""Folder runs on this machine: images/s of the pipelined engine against the single-thread rate and the
sequential folder mode, and peak memory against a single cut-out's. Every run is the real CLI
(`python -m cutq_runtime remove DIR --out-dir OUT`) under `/usr/bin/time -v`, the modes interleaved in rounds
so that noise from other jobs hits all of them.

    .venv/bin/python tools/batch_bench.py --models u2netp-int8 u2net-int8 --rounds 2

Modes: `single` (one photo after another on one ONNX Runtime thread: the single-thread rate), `sequential` (one
after another, ONNX Runtime on every core: the folder mode before pipelining), both `batch.process_one` in a plain
loop; `workers1` (--workers 1: one inference on every core, the next photo decoded meanwhile) and `pipelined` (the
default: one inference per core, one thread each), both the CLI.
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
LOOPS = ("single", "sequential")
MODES = {"single": ["1"], "sequential": ["0"], "workers1": ["--workers", "1"], "pipelined": []}
LOOP = """import sys
from cutq_runtime import batch
from cutq_runtime.api import RemoveOptions
from cutq_runtime.session import SessionConfig, new_session
folder, out, model, threads = sys.argv[1:5]
session = new_session(model, config=SessionConfig(threads=int(threads) or None))
for job in batch.plan(batch.expand_inputs([folder]), None, out):
    assert batch.process_one(job, session, RemoveOptions()) is None
"""


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
                        argv = ([sys.executable, "-c", LOOP, str(folder), out, model, *flags] if mode in LOOPS else
                                [*cli, str(folder), "--out-dir", out, "--model", model, "--no-resume", *flags])
                        runs[mode].append(timed(argv))
            with tempfile.TemporaryDirectory() as out:
                one = next(iter(sorted(folder.iterdir())))
                single_peak = timed([*cli, str(one), "-o", os.path.join(out, "one.png"), "--model", model])[1]
            rate = {mode: images / statistics.median(s for s, _ in r) for mode, r in runs.items()}
            peak = {mode: max(p for _, p in r) for mode, r in runs.items()}
            rows.append((model, name, images, rate, peak, single_peak))
            print(f"{model} {name}: " + ", ".join(f"{m} {rate[m]:.2f} img/s" for m in MODES), flush=True)
    print("\n| model | photos | img/s single / sequential / workers1 / pipelined | pipelined / single | pipelined / "
          "sequential | workers1 / sequential | peak RSS MB single / sequential / workers1 / pipelined | one cut-out MB "
          "| workers1 / one | pipelined / one |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for model, name, images, rate, peak, single_peak in rows:
        print(f"| {model} | {images} {name} | {' / '.join(f'{rate[m]:.2f}' for m in MODES)} | "
              f"{rate['pipelined'] / rate['single']:.2f}x | {rate['pipelined'] / rate['sequential']:.2f}x | "
              f"{rate['workers1'] / rate['sequential']:.2f}x | {' / '.join(f'{peak[m]:.0f}' for m in MODES)} | "
              f"{single_peak:.0f} | {peak['workers1'] / single_peak:.2f}x | {peak['pipelined'] / single_peak:.2f}x |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
