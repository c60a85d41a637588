"""`cutq finetune`: distil a (pruned) model toward its FP32 teacher on photos, with a progress bar per step."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from cutq.distill.finetune import FinetuneConfig, StepInfo
from cutq.distill.pipeline import FinetuneJob, run

from .ui import CACHE_HELP, err, errors_exit, option

IMAGES_HELP = "Photos to train on and verify with, split by scene (default: the bundled calibration_data/)."
TRAINING = "Training"


def finetune(
    student: Annotated[str, option("--student", "-s", metavar="NAME", help="The model to train (a variant or .onnx).")],
    teacher: Annotated[str, option("--teacher", "-t", metavar="NAME", help="The FP32 model it came from.")],
    epochs: Annotated[int, option("--epochs", metavar="N", panel=TRAINING, help="Passes over the training photos.")],
    lr: Annotated[float, option("--lr", metavar="LR", panel=TRAINING, help="Adam learning rate (constant).")],
    out: Annotated[Path | None, option("--out", "-o", metavar="FILE", help="Output .onnx (default: the cache, as "
                                       "<student>-ft).")] = None,
    images_dir: Annotated[Path | None, option("--images", metavar="DIR", help=IMAGES_HELP)] = None,
    train_count: Annotated[int, option("--train-count", metavar="N", help="Training photos to sample (default 32).")] = 32,
    verify_count: Annotated[int, option("--verify-count", metavar="N", help="Held-out photos (default 24).")] = 24,
    keep_worse: Annotated[bool, option("--keep-worse", metavar="", help="Write the result even if its held-out masks "
                                       "are further from the teacher's.")] = False,
    keep_checkpoint: Annotated[bool, option("--keep-checkpoint", metavar="", help="Keep <out>.ckpt after success.")] = False,
    cache_dir: Annotated[Path | None, option("--cache-dir", metavar="DIR", help=CACHE_HELP)] = None,
    batch_size: Annotated[int, option("--batch-size", metavar="N", panel=TRAINING, help="Photos per step (default 1).")] = 1,
    bf16: Annotated[bool, option("--bf16", metavar="", panel=TRAINING, help="bfloat16 autocast: about half the time on "
                                 "CPUs with AVX512-BF16.")] = False,
    threads: Annotated[int, option("--threads", metavar="N", panel=TRAINING, help="Torch threads (default 0: every "
                                   "core).")] = FinetuneConfig.threads,
    seed: Annotated[int, option("--seed", metavar="N", panel=TRAINING, help="Seed for sampling and order.")] = 0,
) -> None:
    """Experimental: distil STUDENT toward TEACHER on unlabeled photos (needs `pip install 'cutq\\[train]'`).

    No setting measured so far brought a pruned u2net closer to its teacher, so --epochs and --lr have no defaults.

    A result whose held-out masks got worse is not written. Interrupted runs resume from <out>.ckpt.
    """
    with errors_exit():
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
