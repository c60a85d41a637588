"""End-to-end speed of `cutq_runtime.remove()` against `rembg.remove()`: bytes in, PNG bytes out.

Both run in one process on the same images and the same model files (rembg reads cutq's cache through
`U2NET_HOME`). Each image is timed for both libraries back to back, alternating which goes first, so
the ratio survives the drift of a small, noisy machine; absolute milliseconds are only indicative.
A stage breakdown (see `stages.py`) shows where each library spends its time, and every output pair is
decoded to check parity (max |Δalpha| should be 0, at most 1).

Run: `.venv/bin/python -m cutq.benchmarks.e2e [--count 8] [--models u2netp,u2net] [--json out.json]`

rembg is a dev dependency (`pip install 'cutq[dev]'` or `pip install rembg`): this module imports without it
so the package does, and `main` refuses in one line, naming the fix, when it is missing.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import importlib.util
import json
import os
import platform
import statistics
import sys
import time
from collections import defaultdict
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import onnxruntime as ort

import cutq_runtime
from cutq_runtime.models import cache_dir
from cutq_runtime.session import Session

from .data import BenchImage, default_images_dir, load_photos, make_large, source_name
from .report import GroupResult, ModelResult, report, summary
from .runners import rembg_session
from .stages import STAGES, check_replicas, cutq_stages, max_abs_diff, rembg_stages

if TYPE_CHECKING:
    from rembg.sessions.base import BaseSession

MISSING_REMBG = ("error: python -m cutq.benchmarks.e2e compares cutq with rembg, which is not installed "
                 "(pip install rembg, or pip install 'cutq[dev]')")


@dataclass(frozen=True)
class Config:
    """What to run; see `parse_args` for the meaning of each option."""

    images: Path
    count: int = 8
    models: tuple[str, ...] = ("u2netp", "u2net")
    repeats: int = 3
    threads: int | None = None
    large: bool = True
    json_path: Path | None = None


def parse_args(argv: list[str] | None = None) -> Config:
    parser = argparse.ArgumentParser(prog="python -m cutq.benchmarks.e2e", description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=Path, default=default_images_dir(),
                        help="photo folder (default: ../shared/data/davis-val/images, else calibration_data/)")
    parser.add_argument("--count", type=int, default=8, help="photos to use, evenly spaced over the sorted folder")
    parser.add_argument("--models", default="u2netp,u2net", help="comma-separated model names")
    parser.add_argument("--repeats", type=int, default=3, help="timed passes over the images")
    parser.add_argument("--threads", type=int, default=None, help="ORT intra-op threads for both (default: ORT's)")
    parser.add_argument("--large", action=argparse.BooleanOptionalAction, default=True,
                        help="add the first photo upscaled to 3840x2160 (default: on)")
    parser.add_argument("--json", dest="json_path", type=Path, default=None, help="write results to this file")
    args = parser.parse_args(argv)
    if args.count < 1 or args.repeats < 1:
        parser.error("--count and --repeats must be at least 1")
    models = tuple(m.strip() for m in args.models.split(",") if m.strip())
    return Config(args.images, args.count, models, args.repeats, args.threads, args.large, args.json_path)


def _time_ms(fn: Callable[[bytes], bytes], data: bytes) -> tuple[float, bytes]:
    start = time.perf_counter()
    out = fn(data)
    return (time.perf_counter() - start) * 1000.0, out


def _sessions(name: str, threads: int | None) -> tuple[BaseSession, Session]:
    """One rembg and one cutq session on the same file, with the same ORT thread settings."""
    cutq_session = cutq_runtime.new_session(name, threads=threads)
    return rembg_session(name, cutq_session.model.path, threads), cutq_session


def _order(rep: int, index: int) -> tuple[str, str]:
    """rembg first on even pairs, cutq first on odd ones, so neither side always runs on the warmer cache."""
    return ("rembg", "cutq") if (rep + index) % 2 == 0 else ("cutq", "rembg")


def run_model(name: str, items: list[BenchImage], cfg: Config) -> ModelResult:
    """Time both libraries on every image, `cfg.repeats` times, then the stage breakdown the same way."""
    import rembg  # a dev dependency: `main` has checked it is installed

    rs, cs = _sessions(name, cfg.threads)
    both = {
        "rembg": lambda data: rembg.remove(data, session=rs),
        "cutq": lambda data: cutq_runtime.remove(data, session=cs),
    }
    staged = {"rembg": lambda data: rembg_stages(data, rs), "cutq": lambda data: cutq_stages(data, cs)}
    for item in {it.group: it for it in reversed(items)}.values():  # first runs pay ORT's and Pillow's page faults
        warm = {lib: fn(item.data) for lib, fn in both.items()}
    notes = check_replicas(item.data, warm["rembg"], warm["cutq"], staged["rembg"], staged["cutq"])

    samples: defaultdict[tuple[str, ...], list[float]] = defaultdict(list)
    parity: defaultdict[str, list[tuple[int, int]]] = defaultdict(list)
    for rep in range(cfg.repeats):
        for i, item in enumerate(items):
            ms, outs = {}, {}
            for lib in _order(rep, i):
                ms[lib], outs[lib] = _time_ms(both[lib], item.data)
                samples[(item.group, lib, "e2e")].append(ms[lib])
                samples[(item.group, lib, "png")].append(len(outs[lib]))
            samples[(item.group, "pair")].append(ms["cutq"] / ms["rembg"])
            if rep == 0:
                parity[item.group].append(max_abs_diff(outs["rembg"], outs["cutq"]))
    for rep in range(cfg.repeats):  # separate passes, so the breakdown's extra clock reads never touch e2e figures
        for i, item in enumerate(items):
            for lib in _order(rep, i):
                for stage, value in staged[lib](item.data)[0].items():
                    samples[(item.group, lib, stage)].append(value)

    groups = []
    for group in ("photos", "large"):
        members = [item for item in items if item.group == group]
        if members:
            groups.append(_summarise(group, _group_label(members, cfg), len(members), samples, parity[group]))
    return ModelResult(name, str(cs.model.path), groups, notes)


def _summarise(group: str, label: str, count: int, samples: dict[tuple[str, ...], list[float]],
               parity: list[tuple[int, int]]) -> GroupResult:
    def mean(*key: str) -> float:
        return statistics.fmean(samples[(group, *key)])

    rembg_ms, cutq_ms = mean("rembg", "e2e"), mean("cutq", "e2e")
    return GroupResult(
        group, label, count, runs=len(samples[(group, "cutq", "e2e")]), rembg_ms=rembg_ms, cutq_ms=cutq_ms,
        ratio=cutq_ms / rembg_ms, speedup=rembg_ms / cutq_ms,
        paired_median_ratio=statistics.median(samples[(group, "pair")]),
        alpha_max_diff=max(a for a, _ in parity), rgba_max_diff=max(r for _, r in parity),
        rembg_png_kb=mean("rembg", "png") / 1024, cutq_png_kb=mean("cutq", "png") / 1024,
        rembg_stages_ms={s: mean("rembg", s) for s in STAGES}, cutq_stages_ms={s: mean("cutq", s) for s in STAGES},
    )


def _group_label(members: list[BenchImage], cfg: Config) -> str:
    if members[0].group == "large":
        return "upscaled photo 3840x2160"
    sizes = {item.size for item in members}
    size = "x".join(map(str, next(iter(sizes)))) if len(sizes) == 1 else "(mixed sizes)"
    return f"{len(members)} {source_name(cfg.images)} photos {size}"


def main(argv: list[str] | None = None) -> int:
    cfg = parse_args(argv)  # first, so --help works without rembg
    if importlib.util.find_spec("rembg") is None:
        print(MISSING_REMBG, file=sys.stderr)
        return 1
    rembg_version = importlib.metadata.version("rembg")
    os.environ["U2NET_HOME"] = str(cache_dir())  # rembg then finds cutq's files and downloads nothing
    items = load_photos(cfg.images, cfg.count)
    if cfg.large:
        items.append(make_large(items[0]))
    print(f"images: {cfg.images.resolve()} -> {', '.join(i.label for i in items)}")
    print(f"threads: {cfg.threads or 'ORT default'}; repeats: {cfg.repeats}; cores: {os.cpu_count()}; "
          f"onnxruntime {ort.__version__}; cutq_runtime {cutq_runtime.__version__}; rembg {rembg_version}")
    if cfg.threads is None and os.environ.get("OMP_NUM_THREADS"):
        print("warning: OMP_NUM_THREADS is set; rembg applies it to its session and cutq does not")
    results, load = [], os.getloadavg()  # other jobs on the machine skew absolute ms, not paired ratios
    for name in cfg.models:
        results.append(run_model(name, items, cfg))
        print("\n" + report(results[-1]), flush=True)
    print("\n" + "\n".join(summary(r) for r in results))
    print(f"load average (1 min) at start {load[0]:.2f}, at end {os.getloadavg()[0]:.2f} on {os.cpu_count()} cores")
    if cfg.json_path:
        payload = {"config": {**asdict(cfg), "images": str(cfg.images.resolve())},
                   "images": [{"label": i.label, "group": i.group, "size": i.size, "bytes": len(i.data)}
                              for i in items],
                   "platform": {"python": platform.python_version(), "machine": platform.machine(),
                                "cpus": os.cpu_count(), "onnxruntime": ort.__version__, "rembg": rembg_version,
                                "cutq_runtime": cutq_runtime.__version__},
                   "results": [asdict(r) for r in results], "summary": [summary(r) for r in results]}
        cfg.json_path.write_text(json.dumps(payload, indent=2, default=str) + "\n")
        print(f"results written to {cfg.json_path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
