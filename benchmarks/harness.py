"""`cutq bench`: every variant measured in one run, on the same photos, interleaved, on this machine.

Order of work: pick the variants and photos; static figures (size, parameters, GMAC); peak memory, one
process per variant (before anything is loaded here, so probes never overlap a timing); session latency
at one thread; then at all cores with load time, end-to-end time and folder throughput; then masks for
quality and the thumbnails. Ratios to each variant's FP32 model and to rembg come from the same run.
"""

from __future__ import annotations

import dataclasses
import functools
import gc
import os
import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import onnx
from PIL import Image

from cutq.modelstats import conv_macs, parameter_count
from cutq.quantize.calibration_set import sequence_of
from cutq_runtime import images
from cutq_runtime.errors import CutqError

from . import quality, rss_probe, thumbs, timing
from .data import BUNDLED_IMAGES, DAVIS_IMAGES, pick_evenly
from .machine import machine_info
from .results import BenchReport, Grid, VariantRow
from .runners import Runner, load
from .variants import Variant, select

Progress = Callable[[str], None]


@dataclass(frozen=True)
class BenchConfig:
    """What to measure and how much; `QUICK` holds the `--quick` amounts."""

    cache: Path
    models: tuple[str, ...] = ()
    everything: bool = True
    eval_dir: Path | None = None  # images/ + masks/; None: davis-val beside the repo, else calibration_data/
    eval_count: int = 16  # photos for quality (ground truth and vs FP32)
    timing_count: int = 5  # of those, photos for end-to-end, throughput, memory (latency cycles through them)
    runs: int = 8  # timed session runs per variant and thread setting
    warmup: int = 1  # untimed session runs per variant first; end to end and throughput follow warm sessions
    repeats: int = 1  # passes over the timing photos for end-to-end and throughput
    grid_count: int = 4  # photos in the HTML cut-out grid
    seed: int = 0
    rss: bool = True
    rembg: bool = True
    pull: bool = True
    ort_twins: bool = True  # also time the .ort file beside each variant's .onnx (the same model, another format)


QUICK = {"eval_count": 3, "timing_count": 1, "runs": 2, "warmup": 1, "repeats": 1, "grid_count": 3, "ort_twins": False}


def default_eval_dir() -> Path:
    return DAVIS_IMAGES.parent if DAVIS_IMAGES.is_dir() else BUNDLED_IMAGES


@functools.cache
def _model_stats(path: Path) -> tuple[int | None, float | None]:
    """Parameters and GMAC of an .onnx file, once per file (the cutq and rembg rows share one); None for .ort."""
    if path.suffix != ".onnx":
        return None, None
    model = onnx.load(path)
    return parameter_count(model), conv_macs(model) / 1e9


def _static_row(variant: Variant) -> VariantRow:
    path = variant.model.path
    row = VariantRow(variant.name, variant.kind, variant.engine, variant.reference, str(path), path.stat().st_size)
    row.params, row.gmac = _model_stats(path)
    return row


def _load_all(variants: list[Variant], threads: int | None, notes: list[str]) -> list[Runner]:
    runners = []
    for variant in variants:
        try:
            runners.append(load(variant, threads))
        except (CutqError, RuntimeError) as exc:
            notes.append(f"{variant.name}: could not be loaded ({exc}); skipped")
    return runners


def _ratio(value: float | None, base: float | None) -> float | None:
    return value / base if value is not None and base else None


def _ratios(rows: dict[str, VariantRow]) -> None:
    for row in rows.values():
        ref = rows.get(row.reference or "")
        rembg = rows.get(f"rembg {row.reference}")
        if ref is not None:
            row.size_vs_fp32 = _ratio(row.size_bytes, ref.size_bytes)
            row.latency_vs_fp32 = _ratio(row.latency_p50_ms, ref.latency_p50_ms)
            row.latency_1t_vs_fp32 = _ratio(row.latency_1t_p50_ms, ref.latency_1t_p50_ms)
            row.e2e_vs_fp32 = _ratio(row.e2e_ms, ref.e2e_ms)
        if rembg is not None:
            row.e2e_vs_rembg = _ratio(row.e2e_ms, rembg.e2e_ms)
            row.peak_rss_vs_rembg = _ratio(row.peak_rss_mb, rembg.peak_rss_mb)


def _measure_rss(variants: list[Variant], paths: list[Path], rows: dict[str, VariantRow], notes: list[str],
                 progress: Progress) -> None:
    for variant in variants:
        progress(f"peak memory: {variant.name} (separate process)")
        try:
            result = rss_probe.measure(variant.engine, variant.model.path, paths)
        except (RuntimeError, OSError, ValueError) as exc:
            notes.append(f"{variant.name}: peak memory not measured ({exc})")
            continue
        rows[variant.name].peak_rss_mb = result["peak_rss_mb"]
        rows[variant.name].imports_rss_mb = result["imports_rss_mb"]


def _quality(runners: list[Runner], items: list[quality.EvalImage], grid_count: int, rows: dict[str, VariantRow],
             progress: Progress) -> Grid:
    grid_paths = set(pick_evenly([item.path for item in items], grid_count))
    wanted = [i for i, item in enumerate(items) if item.path in grid_paths]
    grid = Grid(labels=[items[i].path.stem for i in wanted])
    results: dict[str, quality.Quality] = {}
    for runner in runners:
        name = runner.variant.name
        progress(f"masks: {name} on {len(items)} photos")
        cutouts = grid.cutouts.setdefault(name, [])

        def keep(index: int, img: Image.Image, mask: Image.Image, cutouts: list[bytes] = cutouts) -> None:
            if index in wanted:
                cutouts.append(thumbs.cutout(img, mask))
                if len(grid.photos) < len(wanted):
                    grid.photos.append(thumbs.photo(img))

        results[name] = quality.evaluate(runner, items, keep)
        truth = results[name].truth
        if truth is not None:
            row = rows[name]
            row.gt_mae, row.gt_iou, row.gt_max_fbeta = truth.mae, truth.iou, truth.max_fbeta
            row.gt_s_measure, row.gt_images = truth.s_measure, truth.images
    for name, result in results.items():
        reference = results.get(rows[name].reference or "")
        if reference is not None and rows[rows[name].reference or ""].engine == "cutq":
            fid = quality.fidelity(reference, result)
            rows[name].ssim_vs_fp32_min, rows[name].ssim_vs_fp32_mean, rows[name].mae_vs_fp32 = (
                fid.ssim_min, fid.ssim_mean, fid.mae_mean)
    return grid


def run(cfg: BenchConfig, progress: Progress = lambda message: None) -> BenchReport:
    """Measure every selected variant; anything missing or failing becomes a note in the report."""
    started = time.perf_counter()
    machine = machine_info()
    selection = select(cfg.cache, list(cfg.models), everything=cfg.everything, pull=cfg.pull, rembg=cfg.rembg,
                       ort_twins=cfg.ort_twins)
    notes = list(selection.notes)
    variants = list(selection.variants)
    if not variants:
        raise CutqError("nothing to benchmark: " + "; ".join(notes))
    eval_dir = cfg.eval_dir or default_eval_dir()
    avoid = quality.calibration_scenes([v.model.manifest for v in variants if v.engine == "cutq"])
    items = quality.eval_images(eval_dir, cfg.eval_count, avoid)
    if avoid and any(sequence_of(i.path) in avoid for i in items):
        notes.append("every evaluation photo is from a scene some variant was calibrated on; scores may flatter it")
    timing_paths = pick_evenly([item.path for item in items], cfg.timing_count)
    progress("sizes, parameters and MACs")
    rows = {v.name: _static_row(v) for v in variants}
    if cfg.rss:
        _measure_rss(variants, timing_paths, rows, notes, progress)
    rng = random.Random(cfg.seed)
    photos = [images.decode(p.read_bytes(), str(p)) for p in timing_paths]
    progress("session latency, 1 thread")
    runners = _load_all(variants, 1, notes)
    for name, stats in timing.latency(runners, photos, cfg.runs, cfg.warmup, rng).items():
        rows[name].latency_1t_p50_ms, rows[name].latency_1t_p95_ms = stats.p50_ms, stats.p95_ms
    variants = [runner.variant for runner in runners]  # one that failed to load is noted once and left out
    del runners
    gc.collect()
    progress("loading sessions, all cores")
    runners = _load_all(variants, None, notes)
    progress("session latency, all cores")
    for name, stats in timing.latency(runners, photos, cfg.runs, cfg.warmup, rng).items():
        rows[name].latency_p50_ms, rows[name].latency_p95_ms = stats.p50_ms, stats.p95_ms
    progress("end to end, bytes in to PNG out")
    for name, stats in timing.end_to_end(runners, [p.read_bytes() for p in timing_paths], cfg.repeats, rng).items():
        rows[name].e2e_ms, rows[name].e2e_p50_ms = stats.mean_ms, stats.p50_ms
    progress("folder throughput")
    for name, ips in timing.throughput(runners, timing_paths, cfg.repeats, rng).items():
        rows[name].throughput_ips = ips
    for runner in runners:
        rows[runner.variant.name].load_ms = runner.load_ms
    grid = _quality(runners, items, cfg.grid_count, rows, progress)
    _ratios(rows)
    config = {k: str(v) if isinstance(v, Path) else v for k, v in dataclasses.asdict(cfg).items()}
    image_info = {"eval_dir": str(eval_dir.resolve()), "eval": [i.path.name for i in items],
                  "calibration_scenes_avoided": sorted(avoid),
                  "timing": [p.name for p in timing_paths], "ground_truth": sum(i.truth is not None for i in items)}
    report = BenchReport(machine, {**config, "eval_dir": str(eval_dir)}, image_info,
                         [rows[r.variant.name] for r in runners], notes, grid=grid)
    report.machine["load_average_end"] = round(os.getloadavg()[0], 2)
    report.duration_s = time.perf_counter() - started
    return report
