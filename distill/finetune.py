"""Distillation fine-tune: train a (pruned) student so its side outputs match the FP32 teacher's, then export.

No labels are needed: the teacher's seven sigmoid side outputs on unlabeled photos are the targets, computed
once with onnxruntime (on each photo and on its mirror image, for the flip augmentation). The loss per side
output is the Bernoulli KL divergence between teacher and student per pixel (binary cross-entropy on soft
targets minus the teacher's own entropy: same gradients as BCE, but 0 when the student matches), which is the
loss U²-Net was trained with, pointed at the teacher instead of a hand-drawn mask. The learning rate is
constant and the photo order of epoch `e` comes from `(seed, e)` alone, so a run resumed from a checkpoint
ends with the same weights as one that was never interrupted, and training longer continues the same run.
The trained weights are written back into a copy of the student, so the result has the student's exact graph.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import onnx
from onnx import numpy_helper

from cutq.quantize.graph import copy_model
from cutq.quantize.verify import session_for
from cutq_runtime.errors import CutqError, ModelError

from . import checkpoint
from ._torch import require_torch

EXPORT_TOLERANCE = 1e-3  # max abs difference allowed between the torch module and onnxruntime on the export


@dataclass(frozen=True)
class FinetuneConfig:
    """Training settings. Everything except `checkpoint` and `epochs` is part of the checkpoint fingerprint."""

    epochs: int = 3
    lr: float = 3e-4
    batch_size: int = 1
    seed: int = 0
    side_weights: tuple[float, ...] = ()  # per output (d0 = fused mask .. d6); empty: 1.0 each, as U²-Net trains
    flip: bool = True
    bf16: bool = False  # autocast forward/backward to bfloat16: half the CPU time where the CPU has AVX512-BF16
    threads: int = 0  # 0: every core
    checkpoint: Path | None = None

    def settings(self) -> dict[str, object]:
        values = asdict(self)
        del values["checkpoint"], values["epochs"]
        return {**values, "threads": self.resolved_threads}

    @property
    def resolved_threads(self) -> int:
        return self.threads or os.cpu_count() or 1


@dataclass(frozen=True)
class StepInfo:
    """What a progress bar needs after every optimizer step."""

    epoch: int  # 1-based
    epochs: int
    step: int  # 1-based within the epoch
    steps: int
    loss: float


@dataclass(frozen=True)
class FinetuneReport:
    epoch_losses: tuple[float, ...]  # mean training loss of each epoch, resumed ones included
    resumed_from: int  # epochs already done when this call started
    export_max_diff: float  # torch vs onnxruntime on the first image, all outputs


@dataclass(frozen=True)
class _Samples:
    inputs: tuple[np.ndarray, ...]  # [image, mirrored image] per photo
    targets: tuple[tuple[np.ndarray, ...], ...]  # teacher outputs, same layout


def _check(student: onnx.ModelProto, teacher: onnx.ModelProto, images: Sequence[np.ndarray],
           config: FinetuneConfig) -> None:
    if not images:
        raise CutqError("fine-tuning needs at least one image")
    shapes = {tuple(i.shape) for i in images}
    if len(shapes) != 1 or any(i.dtype != np.float32 for i in images):
        raise CutqError(f"images must be float32 tensors of one shape, got shapes {sorted(shapes)}")
    if len(student.graph.output) != len(teacher.graph.output):
        raise ModelError(f"student has {len(student.graph.output)} outputs, teacher {len(teacher.graph.output)}")
    if config.side_weights and len(config.side_weights) != len(student.graph.output):
        raise CutqError(f"side_weights has {len(config.side_weights)} entries for {len(student.graph.output)} outputs")
    if config.epochs < 0 or config.batch_size < 1 or config.lr <= 0 or config.threads < 0:
        raise CutqError("`epochs` must be >= 0, `batch_size` >= 1, `lr` > 0 and `threads` >= 0")


def _teacher_samples(teacher: onnx.ModelProto, images: Sequence[np.ndarray], config: FinetuneConfig) -> _Samples:
    session = session_for(teacher, config.resolved_threads)
    name = session.get_inputs()[0].name
    inputs = tuple(view for image in images
                   for view in ((image, np.ascontiguousarray(image[..., ::-1])) if config.flip else (image,)))
    return _Samples(inputs, tuple(tuple(session.run(None, {name: x})) for x in inputs))


def _kl_loss(torch, logits: Sequence, targets: Sequence, weights: Sequence[float]):
    """Weighted sum over side outputs of the mean per-pixel Bernoulli KL(teacher || student)."""
    total = 0.0
    for logit, target, weight in zip(logits, targets, weights, strict=True):
        t = target.clamp(1e-7, 1 - 1e-7)
        entropy = -(t * t.log() + (1 - t) * (1 - t).log()).mean()
        total = total + weight * (torch.nn.functional.binary_cross_entropy_with_logits(logit, target) - entropy)
    return total


def _batches(samples: _Samples, n_images: int, epoch: int, config: FinetuneConfig) -> list[list[int]]:
    """Sample indices of each step in epoch `epoch`: a permutation of the photos, each mirrored at random."""
    rng = np.random.default_rng([config.seed, epoch])
    order = rng.permutation(n_images)
    mirror = rng.integers(0, 2, n_images) if config.flip else np.zeros(n_images, np.int64)
    picks = [int(i) * (2 if config.flip else 1) + int(m) for i, m in zip(order, mirror, strict=True)]
    return [picks[i:i + config.batch_size] for i in range(0, len(picks), config.batch_size)]


def finetune(student: onnx.ModelProto, teacher: onnx.ModelProto, images: Sequence[np.ndarray],
             config: FinetuneConfig | None = None, progress: Callable[[StepInfo], None] = lambda info: None,
             note: Callable[[str], None] = lambda message: None) -> tuple[onnx.ModelProto, FinetuneReport]:
    """Fine-tune `student` towards `teacher` on preprocessed `images` (e.g. `calibration_set.load(...).tensors`).

    Resumes from `config.checkpoint` when it belongs to this run, otherwise starts over (and says so through
    `note`). Returns the student with trained weights, checked against the torch module with onnxruntime.
    """
    config = config or FinetuneConfig()
    torch = require_torch()
    from .graph_module import GraphModule

    _check(student, teacher, images, config)
    threads, deterministic = torch.get_num_threads(), torch.are_deterministic_algorithms_enabled()
    torch.set_num_threads(config.resolved_threads)
    torch.use_deterministic_algorithms(True)
    try:
        module = GraphModule(student, channels_last=True)
        optimizer = torch.optim.Adam(module.parameters(), lr=config.lr)
        run_id = checkpoint.fingerprint(student, teacher, images, config.settings())
        losses, resumed = _resume(module, optimizer, run_id, config, note)
        if resumed < config.epochs:
            note(f"computing the teacher's outputs for {len(images)} image(s){' and their mirror images' * config.flip}")
            samples = _teacher_samples(teacher, images, config)
            for epoch in range(resumed + 1, config.epochs + 1):
                losses.append(_epoch(torch, module, optimizer, samples, len(images), epoch, config, progress))
                if config.checkpoint is not None:
                    weights = {name: p.detach().clone() for name, p in module.named_initializers()}
                    checkpoint.save(config.checkpoint, checkpoint.Checkpoint(
                        run_id, epoch, weights, optimizer.state_dict(), tuple(losses)))
        model, diff = export_weights(student, module, images[0])
    finally:
        torch.set_num_threads(threads)
        torch.use_deterministic_algorithms(deterministic)
    return model, FinetuneReport(tuple(losses), resumed, diff)


def _resume(module, optimizer, run_id: str, config: FinetuneConfig, note: Callable[[str], None]) -> tuple[list[float], int]:
    if config.checkpoint is None:
        return [], 0
    saved, problem = checkpoint.load(config.checkpoint)
    if problem:
        note(problem)
    if saved is None:
        return [], 0
    if saved.fingerprint != run_id:
        note(f"{config.checkpoint}: from a different student, teacher, image set or settings; starting over")
        return [], 0
    done = saved.epochs_done
    if done > config.epochs:
        note(f"{config.checkpoint}: has {done} epochs, more than the {config.epochs} asked; starting over")
        return [], 0
    with require_torch().no_grad():
        for name, param in module.named_initializers():
            param.copy_(saved.weights[name])
    optimizer.load_state_dict(saved.optimizer)
    note(f"{config.checkpoint}: resuming after epoch {done}")
    return list(saved.epoch_losses), done


def _epoch(torch, module, optimizer, samples: _Samples, n_images: int, epoch: int, config: FinetuneConfig,
           progress: Callable[[StepInfo], None]) -> float:
    batches = _batches(samples, n_images, epoch, config)
    total = 0.0
    for step, batch in enumerate(batches, start=1):
        x = torch.from_numpy(np.concatenate([samples.inputs[i] for i in batch]))
        targets = [torch.from_numpy(np.concatenate([samples.targets[i][k] for i in batch]))
                   for k in range(len(samples.targets[0]))]
        optimizer.zero_grad(set_to_none=True)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=config.bf16):
            logits = module(x, logits=True)
        loss = _kl_loss(torch, [t.float() for t in logits], targets, config.side_weights or (1.0,) * len(targets))
        loss.backward()
        optimizer.step()
        value = loss.item()
        total += value * len(batch)
        progress(StepInfo(epoch, config.epochs, step, len(batches), value))
    return total / n_images


def export_weights(student: onnx.ModelProto, module, probe: np.ndarray) -> tuple[onnx.ModelProto, float]:
    """A copy of `student` with the module's weights in its initializers; refused unless onnxruntime agrees."""
    torch = require_torch()
    trained = {name: np.ascontiguousarray(p.detach().numpy()) for name, p in module.named_initializers()}
    model = copy_model(student)
    for init in model.graph.initializer:
        if init.name in trained:
            init.CopyFrom(numpy_helper.from_array(trained[init.name], init.name))
    session = session_for(model)
    got = session.run(None, {session.get_inputs()[0].name: probe})
    with torch.no_grad():
        want = module(torch.from_numpy(probe))
    diff = max(float(np.abs(g - w.numpy()).max()) for g, w in zip(got, want, strict=True))
    if not diff <= EXPORT_TOLERANCE:
        raise ModelError(f"exported model disagrees with the trained weights (max abs diff {diff:.2e})")
    return model, diff
