"""`cutq finetune`: distil a (pruned) model toward its FP32 teacher on photos, with a progress bar per step."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from cutq.distill.finetune import FinetuneConfig, StepInfo
from cutq.distill.pipeline import FinetuneJob, run

from .ui import CACHE_HELP, err, errors_exit

IMAGES_HELP = "Photos to train on and verify with, split by scene (default: the bundled calibration_data/)."


def finetune(
    student: Annotated[str, typer.Option("--student", "-s", help="The model to train (e.g. u2net-p50 or a .onnx path).")],
    teacher: Annotated[str, typer.Option("--teacher", "-t", help="The FP32 model it came from (u2net, u2netp, path).")],
    out: Annotated[Path | None, typer.Option("--out", "-o", help="Output .onnx (default: cache, as <student>-ft).")] = None,
    images_dir: Annotated[Path | None, typer.Option("--images", help=IMAGES_HELP)] = None,
    train_count: Annotated[int, typer.Option("--train-count", min=1, help="Training photos to sample.")] = 32,
    verify_count: Annotated[int, typer.Option("--verify-count", min=1, help="Held-out photos to measure on.")] = 24,
    epochs: Annotated[int, typer.Option("--epochs", min=0)] = FinetuneConfig.epochs,
    lr: Annotated[float, typer.Option("--lr", min=0, help="Adam learning rate (constant).")] = FinetuneConfig.lr,
    batch_size: Annotated[int, typer.Option("--batch-size", min=1)] = 1,
    bf16: Annotated[bool, typer.Option("--bf16/--fp32", help="bfloat16 autocast: about half the time on CPUs "
                                       "with AVX512-BF16; weights stay float32.")] = False,
    threads: Annotated[int, typer.Option("--threads", min=0, help="0: every core.")] = FinetuneConfig.threads,
    seed: Annotated[int, typer.Option("--seed")] = 0,
    keep_checkpoint: Annotated[bool, typer.Option("--keep-checkpoint", help="Keep <out>.ckpt after success.")] = False,
    keep_worse: Annotated[bool, typer.Option("--keep-worse", help="Write the result even if its held-out masks are "
                                             "further from the teacher's than before fine-tuning.")] = False,
    cache_dir: Annotated[Path | None, typer.Option("--cache-dir", help=CACHE_HELP)] = None,
) -> None:
    """Fine-tune STUDENT so its side outputs match TEACHER's on unlabeled photos (needs `pip install 'cutq\\[train]'`).

    Interrupted runs resume from <out>.ckpt when run again with the same settings.
    """
    config = FinetuneConfig(epochs=epochs, lr=lr, batch_size=batch_size, seed=seed, bf16=bf16, threads=threads)
    job = FinetuneJob(student=student, teacher=teacher, out=out, images_dir=images_dir, train_count=train_count,
                      verify_count=verify_count, cache_dir=cache_dir, keep_checkpoint=keep_checkpoint,
                      keep_worse=keep_worse, config=config)
    bar = Progress(TextColumn("epoch {task.fields[epoch]}"), BarColumn(), MofNCompleteColumn(),
                   TextColumn("loss {task.fields[loss]}"), TimeElapsedColumn(), TimeRemainingColumn(), console=err)
    task = bar.add_task("", total=None, epoch="-", loss="-")

    def on_step(info: StepInfo) -> None:
        bar.update(task, total=info.epochs * info.steps, completed=(info.epoch - 1) * info.steps + info.step,
                   epoch=f"{info.epoch}/{info.epochs}", loss=f"{info.loss:.4f}")

    with errors_exit(), bar:
        result = run(job, progress=on_step, note=bar.console.print)
    before, after = result.before, result.after
    err.print(f"mask SSIM vs teacher on {len(before.ssim_per_image)} held-out photos: mean {before.ssim_mean:.4f} -> "
              f"{after.ssim_mean:.4f}, min {before.ssim_min:.4f} -> {after.ssim_min:.4f}")
    typer.echo(str(result.export.onnx_path))
