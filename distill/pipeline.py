"""Fine-tuning as a job: load photos (split by scene) -> fine-tune -> verify on held-out scenes -> export.

Only wiring lives here; the training is `finetune.finetune`. The manifest records the student and teacher
checksums, the photos, every setting and the fidelity before and after, so the variant is reproducible. There is no
command for it: no setting measured has improved a pruned u2net's masks (docs/experiments.md).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import onnx

from cutq.quantize import calibration_set, verify
from cutq.quantize.export import ExportResult, export
from cutq.quantize.pipeline import DEFAULT_CALIB_DIR
from cutq_runtime import models
from cutq_runtime.errors import CutqError, OutputError
from cutq_runtime.fsutil import file_digest

from .finetune import FinetuneConfig, FinetuneReport, StepInfo, finetune


@dataclass(frozen=True)
class FinetuneJob:
    """Everything a fine-tune needs: the models (names or .onnx paths), the photos and the training settings."""

    student: str
    teacher: str
    out: Path | None = None
    images_dir: Path | None = None
    train_count: int = 32
    verify_count: int = 24
    cache_dir: Path | None = None
    keep_checkpoint: bool = False
    keep_worse: bool = False  # write the result even when the held-out masks got worse
    config: FinetuneConfig = field(default_factory=FinetuneConfig)

    def __post_init__(self) -> None:
        if self.train_count < 1 or self.verify_count < 1:
            raise CutqError(f"`train_count` and `verify_count` must be >= 1, got {self.train_count} and {self.verify_count}")


@dataclass(frozen=True)
class FinetuneResult:
    export: ExportResult
    before: verify.Fidelity  # student vs teacher on the held-out photos
    after: verify.Fidelity
    report: FinetuneReport
    checkpoint: Path | None  # kept only when asked


def run(job: FinetuneJob, progress: Callable[[StepInfo], None] = lambda info: None,
        note: Callable[[str], None] = lambda message: None) -> FinetuneResult:
    """Fine-tune `job.student` toward `job.teacher`; `progress(StepInfo)` after every step, `note(str)` for events."""
    cache = models.cache_dir(job.cache_dir)
    student_ref, teacher_ref = models.resolve(job.student, cache), models.resolve(job.teacher, cache)
    out = (job.out or cache / f"{student_ref.name}-ft.onnx").with_suffix(".onnx")
    if out.resolve() in (student_ref.path.resolve(), teacher_ref.path.resolve()):
        raise OutputError(f"{out}: is an input model; refusing to overwrite it")
    ckpt = job.config.checkpoint or out.with_suffix(".ckpt")
    config = FinetuneConfig(**{**job.config.__dict__, "checkpoint": ckpt})
    images_dir = job.images_dir or DEFAULT_CALIB_DIR
    train_paths, verify_paths = calibration_set.split_by_sequence(calibration_set.list_images(images_dir), 0.5, config.seed)
    train = calibration_set.load(calibration_set.sample(train_paths, job.train_count, config.seed), student_ref.input)
    held = calibration_set.load(calibration_set.sample(verify_paths, job.verify_count, config.seed), student_ref.input)
    student, teacher = onnx.load(student_ref.path), onnx.load(teacher_ref.path)
    if len(teacher.graph.output) != len(student.graph.output):
        raise CutqError(f"{teacher_ref.path}: has {len(teacher.graph.output)} outputs, the student "
                        f"{len(student.graph.output)}; the teacher must be the model the student was pruned from")

    note(f"training on {len(train.paths)} photos, verifying on {len(held.paths)} from other scenes")
    reference = verify.masks(verify.session_for(teacher), held.tensors)
    before = verify.compare(reference, verify.masks(verify.session_for(student), held.tensors))
    tuned, report = finetune(student, teacher, train.tensors, config, progress, note)
    after = verify.compare(reference, verify.masks(verify.session_for(tuned), held.tensors))
    if after.ssim_mean < before.ssim_mean and not job.keep_worse:
        raise CutqError(f"fine-tuning made the held-out masks worse (SSIM mean {before.ssim_mean:.4f} -> "
                        f"{after.ssim_mean:.4f}, min {before.ssim_min:.4f} -> {after.ssim_min:.4f}); nothing written. "
                        "Try a lower `lr` or more `train_count` photos (`keep_worse` writes it anyway)")
    manifest = {
        "name": out.stem,
        "description": f"{student_ref.name} fine-tuned toward {teacher_ref.name}, SSIM mean {after.ssim_mean:.3f}",
        "input": models.input_spec_dict(student_ref.input),
        "source": {"name": student_ref.name, "path": str(student_ref.path),
                   "sha256": file_digest(student_ref.path, "sha256")},
        "steps": [{"step": "finetune", **config.settings(), "epochs": config.epochs,
                   "teacher": {"name": teacher_ref.name, "sha256": file_digest(teacher_ref.path, "sha256")},
                   "epoch_losses": list(report.epoch_losses)}],
        "calibration": calibration_set.calibration_record(images_dir, config.seed, train.paths),
        "verification": {**calibration_set.record(held.paths), "before": _fidelity_dict(before),
                         "after": _fidelity_dict(after)},
    }
    written = export(tuned, out, manifest, source=student_ref.path)
    if not job.keep_checkpoint:
        with contextlib.suppress(FileNotFoundError):
            ckpt.unlink()
    return FinetuneResult(written, before, after, report, ckpt if job.keep_checkpoint else None)


def _fidelity_dict(fidelity: verify.Fidelity) -> dict[str, float]:
    return {k: v for k, v in asdict(fidelity).items() if k != "ssim_per_image"}


__all__ = ["FinetuneJob", "FinetuneResult", "StepInfo", "run"]
