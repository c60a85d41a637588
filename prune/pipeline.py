"""`cutq prune` as a composition of steps: trace -> score -> select -> prune -> factor -> reconstruct -> late upsample
-> verify -> export.

This file only wires the steps, measures the result (parameters, MACs, file size, mask SSIM against the
unpruned model on held-out photos) and records every setting in the manifest, so a variant can be reproduced.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import onnx

from cutq import modelstats
from cutq.quantize import calibration_set, verify
from cutq.quantize.export import ExportResult, export
from cutq.quantize.pipeline import DEFAULT_CALIB_DIR, MIN_IMAGES
from cutq_runtime import models
from cutq_runtime.errors import CutqError, ModelError, OutputError
from cutq_runtime.fsutil import file_digest
from cutq_runtime.registry import InputSpec

from . import importance, pruner, separable
from .activations import conv_input_moments
from .depgraph import conv_weights, trace
from .lowrank import UNREACHABLE, LowRankConfig, allocate, factor, most_saved, spectra
from .reconstruct import ReconstructConfig, ReconstructReport, reconstruct
from .upsample import LateUpsampleConfig, LateUpsampleReport, late_upsample

Progress = Callable[[str], None]


@dataclass(frozen=True)
class PruneJob:
    """Everything `cutq prune` needs; the CLI only fills this in."""

    model: str
    prune: pruner.PruneConfig
    criterion: str = "activation"
    reconstruct: bool = True
    out: Path | None = None
    calib_dir: Path | None = None
    calib_count: int = 16
    verify_dir: Path | None = None
    verify_count: int = 16
    seed: int = 0
    cache_dir: Path | None = None
    reconstruction: ReconstructConfig = field(default_factory=ReconstructConfig)
    # Wide groups keep their channels and their Convs are factored (`lowrank`); None: remove channels everywhere.
    # A model with no Conv big enough to factor (u2netp) is pruned by channels either way.
    lowrank: LowRankConfig | None = field(default_factory=LowRankConfig)
    # Run the decoder Convs' upsampled half at the coarse resolution (`upsample`); None: leave the decoder as it is.
    late_upsample: LateUpsampleConfig | None = None
    finetune_epochs: int = 0  # > 0: distil toward the source on the calibration photos (needs the [train] extra)
    # Appended to the cached name (`u2net-p50-fast`), so a recipe other than the default does not replace it
    # (`recipes.Recipe.variant`).
    variant: str = ""

    def __post_init__(self) -> None:
        if self.calib_count < MIN_IMAGES or self.verify_count < 1:
            raise CutqError(f"`calib_count` must be >= {MIN_IMAGES} and `verify_count` >= 1, got {self.calib_count} "
                            f"and {self.verify_count}")


@dataclass(frozen=True)
class ModelFigures:
    params: int
    macs: int
    size_bytes: int


@dataclass(frozen=True)
class PruneResult:
    name: str
    source: ModelFigures
    pruned: ModelFigures
    groups_pruned: int
    channels_before: int
    channels_after: int
    channel_fraction: float  # of each group (of each wide group with a narrow share; of each narrow one when factoring)
    ranks: dict[str, int]  # factored Conv -> rank
    reconstruction: ReconstructReport | None
    late_upsample: LateUpsampleReport | None
    fidelity: verify.Fidelity
    export: ExportResult
    skipped_images: tuple[str, ...]
    calibration_photos: int  # the refit fits these; far fewer than asked for generalises worse


def default_name(source: str, ratio: float, variant: str = "") -> str:
    """`u2net` at 0.5 -> `u2net-p50`; with variant "fast", `u2net-p50-fast`."""
    return f"{source}-p{round(ratio * 100)}" + (f"-{variant}" if variant else "")


def run(job: PruneJob, progress: Progress = lambda message: None) -> PruneResult:
    """Prune `job.model`; nothing is written unless every step succeeds."""
    resolved = models.resolve(job.model, models.cache_dir(job.cache_dir))
    name = default_name(resolved.name, job.prune.ratio, job.variant)
    out = (job.out or models.cache_dir(job.cache_dir) / name).with_suffix(".onnx")
    if out.resolve() == resolved.path.resolve():
        raise OutputError(f"{out}: is the source model; refusing to overwrite it")
    if resolved.path.suffix != ".onnx":
        raise ModelError(f"{resolved.path}: pruning needs the .onnx graph, not an .ort file")
    from cutq_runtime.session import check_u2net_like

    check_u2net_like(resolved.path)
    source = onnx.load(resolved.path)
    graph = trace(source)
    if not graph.prunable:
        raise ModelError(f"{resolved.path}: no prunable channels (every Conv feeds an output or the traced graph is empty)")
    shapes = {conv: w.shape for conv, (w, _) in conv_weights(source).items()}
    factoring = job.lowrank is not None and any(np.prod(s) >= job.lowrank.min_weights for s in shapes.values())
    if not factoring and job.lowrank is not None and (job.lowrank.narrow_fraction is not None or job.lowrank.min_outputs
                                                      or job.prune.spare):
        raise ModelError(f"{resolved.path}: no Conv of {job.lowrank.min_weights:,} weights or more to factor, so "
                         "`narrow_fraction`, `min_outputs`, `spare` and the fast recipe do not apply; it loses channels "
                         "by `ratio` alone")
    if job.lowrank is None and job.prune.spare:
        raise CutqError("`spare` needs the factoring (`lowrank`) to meet the ratio")
    progress("loading images")
    calib, checked = calibration_set.calibration_and_verification(
        job.calib_dir or DEFAULT_CALIB_DIR, job.verify_dir, job.calib_count, job.verify_count, job.seed, resolved.input,
        MIN_IMAGES)
    progress("measuring channel statistics")
    consumers = sorted({conv for group in graph.prunable for conv, _ in group.consumers})
    moments = conv_input_moments(source, consumers, calib.tensors)
    progress(f"scoring channels ({job.criterion})")
    scores = importance.criterion(job.criterion, moments).scores(source, graph)
    separable_mode = factoring and job.lowrank.method == "separable"
    if factoring:
        fraction = job.lowrank.narrow
        fractions = {g.index: 0.0 if g.channels >= job.prune.narrow_below else fraction for g in graph.prunable}
        fractions = pruner.spare(source, graph, fractions, job.prune.spare)
    else:
        fraction = pruner.channel_fraction(graph, shapes, job.prune)
        fractions = job.prune.fractions(graph, fraction)
    keep = pruner.select(graph, scores, fractions, job.prune.multiple, job.prune.min_channels)
    if factoring:  # groups that keep every channel: their consumers read what they always read, nothing to refit
        keep = {g: kept for g, kept in keep.items() if len(kept) < graph.groups[g].channels}
    model, slices = pruner.apply(source, graph, keep, moments)
    ranks: dict[str, int] = {}
    statistics: tuple[Path, ...] = ()  # the photos the factoring's output statistics came from
    share = None  # of each separably factored Conv's weights
    if separable_mode:
        model, ranks, share = _separable(source, model, slices, job, progress)
    elif factoring:
        model, ranks, statistics = _factor(source, model, slices, job, resolved.input, progress)
    report = None
    if job.reconstruct:
        model, report = reconstruct(source, model, slices, calib.tensors, job.reconstruction, progress)
    late = None
    if job.late_upsample is not None:
        model, late = late_upsample(model, calib.tensors, job.late_upsample, progress)
    tuned, untuned = None, model
    if job.finetune_epochs > 0:
        from cutq.distill.finetune import FinetuneConfig, finetune  # torch: optional, imported only when asked

        progress(f"fine-tuning {job.finetune_epochs} epoch(s)")
        config = FinetuneConfig(epochs=job.finetune_epochs, seed=job.seed, checkpoint=out.with_suffix(".ckpt"))
        model, tuned = finetune(model, source, calib.tensors, config,
                                progress=lambda p: progress(f"fine-tuning: epoch {p.epoch}/{p.epochs}, loss {p.loss:.3f}"))
    progress("verifying on held-out images")
    expected = verify.masks(verify.session_for(source), checked.tensors)
    fidelity = verify.compare(expected, verify.masks(verify.session_for(model), checked.tensors))
    other = None  # fidelity of the model not written (before or after fine-tuning)
    if tuned is not None:
        # Distillation on a few photos can overfit or diverge; a fine-tune that makes the held-out masks worse
        # is not kept (the manifest records both figures).
        other = verify.compare(expected, verify.masks(verify.session_for(untuned), checked.tensors))
        if other.ssim_mean > fidelity.ssim_mean:
            progress(f"fine-tuning lowered held-out SSIM mean {other.ssim_mean:.4f} -> "
                     f"{fidelity.ssim_mean:.4f}; keeping the model before fine-tuning")
            model, fidelity, other = untuned, other, fidelity
    before = ModelFigures(modelstats.parameter_count(source), modelstats.conv_macs(source), resolved.path.stat().st_size)
    params, macs = modelstats.parameter_count(model), modelstats.conv_macs(model)
    channels = (sum(g.channels for g in graph.prunable), sum(len(keep.get(g.index, range(g.channels))) for g in graph.prunable))
    manifest = {
        "name": out.stem,
        "description": f"{resolved.name}, {job.prune.ratio:.0%} of parameters pruned, SSIM mean {fidelity.ssim_mean:.3f} vs FP32",
        "input": models.input_spec_dict(resolved.input),
        "source": {"name": resolved.name, "path": str(resolved.path), "sha256": file_digest(resolved.path, "sha256")},
        "steps": [
            {"step": "prune", **asdict(job.prune), "criterion": job.criterion, "channel_fraction": fraction,
             "bias_compensation": True, "groups": len(keep),
             "channels_before": channels[0], "channels_after": channels[1], "params_before": before.params,
             "params_after": params, "macs_before": before.macs, "macs_after": macs,
             "kept": {str(g): k.tolist() for g, k in sorted(keep.items())}},
            {"step": "lowrank", "enabled": factoring,
             **({**asdict(job.lowrank), "narrow_fraction": job.lowrank.narrow} if job.lowrank else {}),
             "ranks": ranks, "share": share},
            {"step": "reconstruct", "enabled": job.reconstruct, **asdict(job.reconstruction),
             **(asdict(report) if report else {})},
            {"step": "late_upsample", "enabled": job.late_upsample is not None,
             **(asdict(job.late_upsample) if job.late_upsample else {}), **(asdict(late) if late else {})},
            {"step": "finetune", "epochs": job.finetune_epochs,
             "epoch_losses": list(tuned.epoch_losses) if tuned else [],
             "kept": tuned is not None and model is not untuned,
             "other_ssim_mean": other.ssim_mean if other else None},
        ],
        "calibration": calibration_set.calibration_record(job.calib_dir or DEFAULT_CALIB_DIR, job.seed, calib.paths,
                                                          statistics),
        "verification": {**calibration_set.record(checked.paths), "ssim_min": fidelity.ssim_min,
                         "ssim_mean": fidelity.ssim_mean, "mae_mean": fidelity.mae_mean},
    }
    progress("writing files")
    written = export(model, out, manifest, source=resolved.path)
    out.with_suffix(".ckpt").unlink(missing_ok=True)  # the fine-tune finished: nothing left to resume
    return PruneResult(out.stem, before, ModelFigures(params, macs, written.size_bytes), len(keep), *channels, fraction, ranks,
                       report, late, fidelity, written, calib.skipped + checked.skipped, len(calib.paths))


def _separable(source: onnx.ModelProto, model: onnx.ModelProto, slices: dict[str, pruner.ConvSlice], job: PruneJob,
               progress: Progress) -> tuple[onnx.ModelProto, dict[str, int], float | None]:
    """Factor the big 3x3 Convs into 3x1 and 1x3 Convs until `job.prune.ratio` of the parameters are gone; each
    1x3 Conv is entered in `slices` so that the refit fits it to the unfactored Conv's output."""
    wanted = _excess(source, model, job)
    progress("factoring the 3x3 Convs")
    found = separable.candidates(model, job.lowrank.min_macs, job.lowrank.min_outputs)
    share, ranks = separable.ranks_for(found, wanted, job.lowrank.multiple)
    for name, rank in ranks.items():  # reads `rank` new channels: refit like a Conv that lost input channels
        slices[name] = pruner.ConvSlice(slices[name].outputs if name in slices else None, np.arange(rank))
    return separable.factor(model, found, ranks), ranks, share


def _factor(source: onnx.ModelProto, model: onnx.ModelProto, slices: dict[str, pruner.ConvSlice], job: PruneJob,
            spec: InputSpec, progress: Progress) -> tuple[onnx.ModelProto, dict[str, int], tuple[Path, ...]]:
    """Factor the big Convs that read no removed channel until `job.prune.ratio` of the parameters are gone."""
    config = job.lowrank
    weights = conv_weights(model)
    wanted = _excess(source, model, job)
    convs = {name: w.shape for name, (w, _) in weights.items()
             if w.size >= config.min_weights and (name not in slices or slices[name].inputs is None)}
    if wanted > most_saved(convs, config.multiple):  # before the statistics, which take a minute on u2net
        raise CutqError(UNREACHABLE)
    if wanted == 0:
        return model, {}, ()
    progress("loading photos for the low-rank statistics")
    paths, _ = calibration_set.calibration_paths(job.calib_dir or DEFAULT_CALIB_DIR, job.verify_dir, job.seed)
    photos = calibration_set.load(calibration_set.sample(paths, config.images, job.seed), spec, MIN_IMAGES)
    outputs = {name: slices[name].outputs if name in slices else None for name in convs}
    found = spectra(source, outputs, photos.tensors, progress)
    ranks = allocate(convs, found, wanted, config.multiple)
    return factor(model, found, ranks), ranks, photos.paths


def _excess(source: onnx.ModelProto, model: onnx.ModelProto, job: PruneJob) -> int:
    """Parameters the factoring must still remove from `model` (channel-pruned) to meet the ratio; `CutqError` when
    the channel removal alone removed more."""
    wanted = modelstats.parameter_count(model) - int((1 - job.prune.ratio) * modelstats.parameter_count(source))
    if wanted < 0:
        removed = 1 - modelstats.parameter_count(model) / modelstats.parameter_count(source)
        raise CutqError(f"`ratio` {job.prune.ratio} is less than `narrow_fraction` {job.lowrank.narrow} removes "
                        f"alone ({removed:.1%} of the parameters); raise `ratio` or lower `narrow_fraction`")
    return wanted
