"""What distillation fine-tuning recovers, and what an epoch costs: `python -m cutq.benchmarks.distill`.

The student is made here by a deliberately crude stand-in for `cutq prune`: each Conv keeps the output
channels with the largest L1 weight norm (no reconstruction), and the Convs whose outputs meet in a residual
Add are left whole, because both sides of an Add must keep the same channels. That damages the masks enough
to show what fine-tuning gives back. Photos are split by scene (davis-val): the student trains on some
scenes and mask SSIM against the FP32 teacher is measured on the others. Prints one JSON object.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import onnx
from onnx import numpy_helper

from cutq.distill.finetune import FinetuneConfig, StepInfo, finetune
from cutq.quantize import calibration_set, verify
from cutq_runtime import models

from .data import DAVIS_IMAGES


def _residual_convs(graph: onnx.GraphProto) -> set[str]:
    """Convs whose (Relu'd) output is an input of an Add."""
    producers = {out: n for n in graph.node for out in n.output}
    coupled = set()
    for add in (n for n in graph.node if n.op_type == "Add"):
        for name in add.input:
            node = producers.get(name)
            node = producers.get(node.input[0]) if node is not None and node.op_type == "Relu" else node
            if node is not None and node.op_type == "Conv":
                coupled.add(node.name)
    return coupled


def prune_smallest_channels(model: onnx.ModelProto, fraction: float) -> onnx.ModelProto:
    """Drop `fraction` of each free Conv's output channels (smallest L1 first) and the matching input channels."""
    graph = model.graph
    weights = {t.name: numpy_helper.to_array(t) for t in graph.initializer}
    coupled = _residual_convs(graph)
    kept: dict[str, tuple[int, np.ndarray]] = {}  # tensor -> (original channels, kept channel indices)
    for node in graph.node:
        if node.op_type == "Conv":
            w = weights[node.input[1]]
            _, idx_in = kept.get(node.input[0], (w.shape[1], np.arange(w.shape[1])))
            n_keep = w.shape[0] if node.name in coupled else max(1, round(w.shape[0] * (1 - fraction)))
            idx_out = np.sort(np.argsort(-np.abs(w).sum(axis=(1, 2, 3)), kind="stable")[:n_keep])
            weights[node.input[1]] = w[idx_out][:, idx_in]
            if len(node.input) > 2:
                weights[node.input[2]] = weights[node.input[2]][idx_out]
            kept[node.output[0]] = (w.shape[0], idx_out)
        elif node.op_type in ("Relu", "MaxPool", "Resize", "Sigmoid") and node.input[0] in kept:
            kept[node.output[0]] = kept[node.input[0]]
        elif node.op_type == "Concat" and node.input[0] in kept:
            offset, parts = 0, []
            for name in node.input:
                channels, idx = kept[name]
                parts.append(idx + offset)
                offset += channels
            kept[node.output[0]] = (offset, np.concatenate(parts))
        elif node.op_type == "Add" and len({kept[n][1].tobytes() for n in node.input if n in kept}) > 1:
            raise ValueError(f"{node.name}: the two sides of the Add keep different channels")
    pruned = onnx.ModelProto()
    pruned.CopyFrom(model)
    for init in pruned.graph.initializer:
        init.CopyFrom(numpy_helper.from_array(np.ascontiguousarray(weights[init.name]), init.name))
    onnx.checker.check_model(pruned)
    return pruned


def _fidelity(teacher_masks: list[np.ndarray], model: onnx.ModelProto, tensors, threads: int) -> verify.Fidelity:
    return verify.compare(teacher_masks, verify.masks(verify.session_for(model, threads), tensors))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="u2netp")
    parser.add_argument("--fraction", type=float, default=0.5, help="share of channels to drop")
    parser.add_argument("--images", type=Path, default=DAVIS_IMAGES)
    parser.add_argument("--train-count", type=int, default=32)
    parser.add_argument("--verify-count", type=int, default=24, help="0: time the steps only")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--lr", type=float, default=FinetuneConfig.lr)
    parser.add_argument("--batch-size", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--bf16", action="store_true", help="train under bfloat16 autocast")
    parser.add_argument("--step-costs", action="store_true", help="only time training steps, fp32 vs bf16, 1 thread")
    parser.add_argument("--checkpoint", type=Path, default=None)
    parser.add_argument("--out", type=Path, default=None, help="write the fine-tuned student here (.onnx)")
    args = parser.parse_args()

    resolved = models.resolve(args.model)
    teacher = onnx.load(resolved.path)
    train_paths, verify_paths = calibration_set.split_by_sequence(calibration_set.list_images(args.images), 0.5, args.seed)
    train = calibration_set.load(calibration_set.sample(train_paths, args.train_count, args.seed), resolved.input)
    student = prune_smallest_channels(teacher, args.fraction)
    result: dict[str, object] = {
        "model": resolved.name, "fraction": args.fraction, "params": {"teacher": _params(teacher), "student": _params(student)},
        "train_scenes": sorted({calibration_set.sequence_of(p) for p in train.paths}), "train_images": len(train.paths)}
    if args.step_costs:
        _, teacher_cpu = _forward_seconds(teacher, train.tensors[0], threads=1)
        print(json.dumps({**result, "step_cpu_s_1_thread": step_costs(student, train.tensors[0]),
                          "teacher_ort_forward_cpu_s_1_thread": teacher_cpu}, indent=1))
        return
    if args.verify_count:
        held = calibration_set.load(calibration_set.sample(verify_paths, args.verify_count, args.seed), resolved.input)
        teacher_masks = verify.masks(verify.session_for(teacher, args.threads), held.tensors)
        before = _fidelity(teacher_masks, student, held.tensors, args.threads)
        result |= {"verify_scenes": sorted({calibration_set.sequence_of(p) for p in held.paths}),
                   "verify_images": len(held.paths)}

    marks: list[tuple[float, float]] = []  # (wall, this process's CPU time) after every step
    def progress(info: StepInfo) -> None:
        marks.append((time.perf_counter(), time.process_time()))
        print(f"epoch {info.epoch}/{info.epochs} step {info.step}/{info.steps} loss {info.loss:.4f}", flush=True)

    config = FinetuneConfig(epochs=args.epochs, lr=args.lr, batch_size=args.batch_size, seed=args.seed,
                            threads=args.threads, bf16=args.bf16, checkpoint=args.checkpoint)
    start = time.perf_counter()
    tuned, report = finetune(student, teacher, train.tensors, config, progress, note=print)
    result |= {"config": {**config.settings(), "epochs": args.epochs}, "epoch_losses": report.epoch_losses,
               "seconds_total": time.perf_counter() - start}
    if args.verify_count:
        after = _fidelity(teacher_masks, tuned, held.tensors, args.threads)
        result |= {"ssim_mean_before": before.ssim_mean, "ssim_min_before": before.ssim_min,
                   "ssim_mean_after": after.ssim_mean, "ssim_min_after": after.ssim_min,
                   "mae_before": before.mae_mean, "mae_after": after.mae_mean}
    if args.out is not None:
        onnx.save(tuned, args.out)
    if len(marks) > 1:
        wall, cpu = (float(np.median(np.diff(series))) for series in zip(*marks, strict=True))
        fwd_wall, fwd_cpu = _forward_seconds(teacher, train.tensors[0], args.threads)
        result |= {"step_wall_s": wall, "step_cpu_s": cpu, "teacher_ort_forward_wall_s": fwd_wall,
                   "teacher_ort_forward_cpu_s": fwd_cpu, "step_over_forward_cpu": cpu / fwd_cpu}
    print(json.dumps(result, indent=1))


def _forward_seconds(model: onnx.ModelProto, tensor: np.ndarray, threads: int, runs: int = 3) -> tuple[float, float]:
    """Median onnxruntime forward (wall, CPU) seconds of the teacher: the yardstick a training step is compared to."""
    session = verify.session_for(model, threads)
    name = session.get_inputs()[0].name
    session.run(None, {name: tensor})
    wall, cpu = [], []
    for _ in range(runs):
        start, start_cpu = time.perf_counter(), time.process_time()
        session.run(None, {name: tensor})
        wall.append(time.perf_counter() - start)
        cpu.append(time.process_time() - start_cpu)
    return float(np.median(wall)), float(np.median(cpu))


def step_costs(student: onnx.ModelProto, tensor: np.ndarray, repeats: int = 2) -> dict[str, list[float]]:
    """CPU seconds of one training step (batch 1), float32 and bfloat16 autocast, interleaved, on one thread.

    One thread because CPU time is then also wall time, and because on a busy machine a second OpenMP thread
    spins waiting for the first and inflates CPU time without doing work.
    """
    import torch

    from cutq.distill.graph_module import GraphModule

    torch.set_num_threads(1)
    module = GraphModule(student, channels_last=True)
    x = torch.from_numpy(tensor)

    def step(bf16: bool) -> float:
        start = time.process_time()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            outputs = module(x, logits=True)
        sum(o.float().square().mean() for o in outputs).backward()
        return time.process_time() - start

    step(False), step(True)  # warm-up: oneDNN builds its kernels on first use
    costs: dict[str, list[float]] = {"fp32": [], "bf16": []}
    for _ in range(repeats):
        costs["fp32"].append(step(False))
        costs["bf16"].append(step(True))
    return costs


def _params(model: onnx.ModelProto) -> int:
    return int(sum(np.prod(t.dims) for t in model.graph.initializer))


if __name__ == "__main__":
    main()
