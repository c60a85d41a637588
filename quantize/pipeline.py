"""`cutq quantize` as a composition of steps: opset -> graph -> center -> equalize -> calibrate -> qdq -> ties
-> rounding -> search -> thin -> pad -> pack (optional 4-bit weights) -> verify (with the portability check) -> export.

Each step is a plain function in its own module; this file only wires them, measures, and records what
each did in the manifest, so a variant can be reproduced from it.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from cutq_runtime import models
from cutq_runtime.cpu import describe_host, exact_on
from cutq_runtime.errors import CutqError, OutputError
from cutq_runtime.fsutil import file_digest

from . import calibration_set, mixed, verify
from .calibrate import CalibrationConfig, compute_ranges
from .center import CenterConfig, center
from .equalize import EqualizeConfig, equalize
from .export import ExportResult, export
from .graph import GraphConfig, preprocess_graph
from .opset import OpsetConfig, upgrade_opset
from .pack import MIN_ONNXRUNTIME, PackConfig, PackReport, pack_int4
from .pad import PadConfig, pad_conv_inputs
from .qdq import QuantConfig, quantize_qdq
from .rounding import RoundingConfig, max_abs_weight, round_weights
from .search import FloatNode, SearchConfig, search
from .thin import ThinConfig, split_thin_convs
from .ties import NUDGE, TiesConfig, break_resize_ties

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_CALIB_DIR = ROOT / "calibration_data"
MIN_IMAGES = 2
# How the INT8 variant is served (read by cutq_runtime.session): its float head is faster without NCHWc.
SESSION = {"disabled_optimizers": ["NchwcTransformer"]}
# The exact arithmetic runs unfused (u2net: seconds per photo); saturation shows on any ordinary photo.
PORTABILITY_IMAGES = 8
W4_NOTE = " (large Convs: 4-bit weights)"


@dataclass(frozen=True)
class QuantizeJob:
    """Everything `cutq quantize` needs; the CLI only fills this in."""

    model: str
    out: Path | None = None
    calib_dir: Path | None = None
    calib_count: int = 16
    verify_dir: Path | None = None
    verify_count: int = 24
    seed: int = 0
    cache_dir: Path | None = None
    opset: OpsetConfig = field(default_factory=OpsetConfig)
    graph: GraphConfig = field(default_factory=GraphConfig)
    center: CenterConfig = field(default_factory=CenterConfig)
    equalize: EqualizeConfig = field(default_factory=EqualizeConfig)
    calibration: CalibrationConfig = field(default_factory=CalibrationConfig)
    quant: QuantConfig = field(default_factory=QuantConfig)
    ties: TiesConfig = field(default_factory=TiesConfig)
    rounding: RoundingConfig = field(default_factory=RoundingConfig)
    search: SearchConfig = field(default_factory=SearchConfig)
    thin: ThinConfig = field(default_factory=ThinConfig)
    pad: PadConfig = field(default_factory=PadConfig)
    pack: PackConfig = field(default_factory=PackConfig)

    def __post_init__(self) -> None:
        if self.calib_count < MIN_IMAGES or self.verify_count < 1:
            raise CutqError(f"`calib_count` must be >= {MIN_IMAGES} and `verify_count` >= 1, got {self.calib_count} "
                            f"and {self.verify_count}")


@dataclass(frozen=True)
class QuantizeResult:
    name: str
    source: Path
    export: ExportResult
    source_size: int
    fidelity: verify.Fidelity
    float_nodes: tuple[FloatNode, ...]
    latency_ratio: float
    reached: bool
    skipped_images: tuple[str, ...]
    head: tuple[str, ...] = ()  # Convs of the output head, float by design
    float_mac_share: float = 0.0  # share of the model's MACs that run in float (head + search)
    equalized_channels: int = 0  # outlier channels whose range was moved into the next Convs' weights
    centered_channels: int = 0  # near-constant channels whose offset was moved into the next Convs' biases
    packed: PackReport | None = None  # Convs whose weights are stored at 4 bits
    portability: verify.Portability | None = None  # kernels against exact arithmetic on this host
    exact_on: str = "any"  # "any", or "vnni-or-arm" for full 8-bit weights


Progress = Callable[[str], None]


def _images(job: QuantizeJob, spec: Any) -> tuple[calibration_set.LoadedImages, calibration_set.LoadedImages]:
    return calibration_set.calibration_and_verification(job.calib_dir or DEFAULT_CALIB_DIR, job.verify_dir, job.calib_count,
                                                        job.verify_count, job.seed, spec, MIN_IMAGES)


def _latency_ratio(reference: onnx.ModelProto, candidate: onnx.ModelProto, tensor: np.ndarray, runs: int = 7) -> float:
    """Median session latency of candidate / reference, interleaved in one process so machine noise hits both.

    Each timed run follows an untimed one of the same session: the other session's worker threads would
    otherwise still be spinning on the cores (see benchmarks/timing.py). Medians, not sums, so that a run slowed
    by another process taking a core does not set the ratio."""
    sessions = [verify.session_for(reference),
                verify.session_for(candidate, disabled_optimizers=SESSION["disabled_optimizers"])]
    name = sessions[0].get_inputs()[0].name
    times: list[list[float]] = [[], []]
    for _ in range(runs):
        for i, session in enumerate(sessions):
            session.run(None, {name: tensor})
            start = time.perf_counter()
            session.run(None, {name: tensor})
            times[i].append(time.perf_counter() - start)
    return statistics.median(times[1]) / statistics.median(times[0])


def _default_out(job: QuantizeJob, name: str) -> Path:
    suffix = "-int8w4" if job.pack.enabled else "-int8"
    return models.cache_dir(job.cache_dir) / f"{name}{suffix}.onnx"


def run(job: QuantizeJob, progress: Progress = lambda message: None) -> QuantizeResult:
    """Quantize `job.model`; the result is written even when the target is not reached (and says so)."""
    resolved = models.resolve(job.model, models.cache_dir(job.cache_dir))
    out = job.out or _default_out(job, resolved.name)
    if out.with_suffix(".onnx").resolve() == resolved.path.resolve():
        raise OutputError(f"{out}: is the source model; refusing to overwrite it")
    from cutq_runtime.session import check_u2net_like

    check_u2net_like(resolved.path)
    progress("loading images")
    calib, checked = _images(job, resolved.input)
    progress(f"preparing the graph ({len(calib.paths)} calibration, {len(checked.paths)} verification images)")
    source = onnx.load(resolved.path)
    model, opset_report = upgrade_opset(source, job.opset)
    model, graph_report = preprocess_graph(model, job.graph)
    progress("centering near-constant channels")
    centered, center_report = center(model, calib.tensors, job.center)
    progress("equalizing channel ranges")
    equalized, eq_report = equalize(centered, calib.tensors, job.equalize)
    progress(f"calibrating ({job.calibration.method})")
    ranges = compute_ranges(equalized, calib.tensors, job.calibration)
    progress("quantizing")
    quantized = quantize_qdq(equalized, ranges, job.quant)
    quantized, ties = break_resize_ties(quantized, job.ties)
    quantized, rounding = round_weights(quantized, equalized, calib.tensors, job.rounding, progress)
    found = search(equalized, quantized, calib.tensors, job.search,
                   on_step=lambda n, f: progress(f"search: {n} float node(s), calibration SSIM min {f.ssim_min:.4f}"))
    head = tuple(n for n in mixed.output_head(equalized) if n in set(mixed.float_nodes(found.model)))
    float_share = found.float_mac_share
    final, thin = split_thin_convs(found.model, job.thin)
    final, padded = pad_conv_inputs(final, job.pad)
    final, packed = pack_int4(final, job.pack, calib.tensors, progress)
    progress("verifying on held-out images")
    # The reference is the float model before equalization: what the user's FP32 model computes.
    kernels = verify.masks(verify.session_for(final), checked.tensors)
    fidelity = verify.compare(verify.masks(verify.session_for(model), checked.tensors), kernels)
    reached = fidelity.ssim_min >= job.search.target_ssim
    progress("checking the integer kernels against the exact arithmetic")
    portable = verify.portability(final, checked.tensors[:PORTABILITY_IMAGES], kernels[:PORTABILITY_IMAGES])
    claim = cpu_claim(job.quant, max_abs_weight(final), portable)
    manifest = {
        "name": out.with_suffix("").name,
        "description": f"INT8 {resolved.name}{W4_NOTE * bool(packed.convs)}, SSIM min {fidelity.ssim_min:.3f} vs FP32",
        "input": models.input_spec_dict(resolved.input),
        "source": {"name": resolved.name, "path": str(resolved.path), "sha256": file_digest(resolved.path, "sha256")},
        "session": SESSION,
        **({"requires": {"onnxruntime": MIN_ONNXRUNTIME}} if packed.convs else {}),
        "steps": [
            {"step": "opset", **asdict(job.opset), **asdict(opset_report)},
            {"step": "graph", **asdict(job.graph), **asdict(graph_report)},
            {"step": "center", **asdict(job.center), "max_output_change": center_report.max_output_change,
             "channels": [asdict(c) for c in center_report.channels]},
            {"step": "equalize", **asdict(job.equalize), "max_output_change": eq_report.max_output_change,
             "channels": [asdict(c) for c in eq_report.channels]},
            {"step": "calibrate", **asdict(job.calibration)},
            {"step": "quantize", "format": "QDQ", **asdict(job.quant), "float_head_convs": list(head)},
            {"step": "resize_ties", **asdict(job.ties), "nudge": NUDGE, "resizes": list(ties.resizes),
             "skipped": list(ties.skipped)},
            {"step": "rounding", **asdict(job.rounding), **asdict(rounding)},
            {"step": "mixed_precision", **asdict(job.search),
             "float_nodes": [asdict(n) for n in found.float_nodes], "float_mac_share": float_share},
            {"step": "thin_convs", **asdict(job.thin), "split": list(thin)},
            {"step": "pad_inputs", **asdict(job.pad), "convs": list(padded)},
            {"step": "pack_int4", **asdict(job.pack), "convs": list(packed.convs), "weights": packed.weights,
             "int8_weights": packed.int8_weights, "rounding_used": packed.rounding},
        ],
        "calibration": calibration_set.calibration_record(job.calib_dir or DEFAULT_CALIB_DIR, job.seed, calib.paths),
        "verification": {**calibration_set.record(checked.paths), "ssim_min": fidelity.ssim_min,
                         "ssim_mean": fidelity.ssim_mean, "mae_mean": fidelity.mae_mean,
                         "target_ssim": job.search.target_ssim, "reached": reached},
        "cpu": claim,
    }
    progress("measuring latency and writing files")
    ratio = _latency_ratio(source, final, checked.tensors[0])
    written = export(final, out, manifest, source=resolved.path)
    return QuantizeResult(resolved.name, resolved.path, written, resolved.path.stat().st_size, fidelity,
                          found.float_nodes, ratio, reached, calib.skipped + checked.skipped, head, float_share,
                          len(eq_report.channels), len(center_report.channels), packed, portable, claim["exact_on"])


def cpu_claim(quant: QuantConfig, max_abs: int, check: verify.Portability) -> dict[str, Any]:
    """The manifest's `cpu` section, read by cutq_runtime when a session loads: on which CPUs the integer kernels
    compute exactly what the file says, the host that built it, and what the portability check found there."""
    return {
        "weight_range": quant.weight_range,
        "max_abs_weight": max_abs,
        "exact_on": exact_on(max_abs),
        "build_host": describe_host(),
        "check": {"kernels_vs_arithmetic_ssim_min": check.ssim_min, "kernels_vs_arithmetic_max_abs": check.max_abs,
                  "portable": check.portable},
    }
