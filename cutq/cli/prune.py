"""`cutq prune`: structured channel pruning and low-rank factorisation with least-squares reconstruction, then a
summary table."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from cutq.prune.importance import CRITERIA
from cutq.prune.lowrank import LowRankConfig
from cutq.prune.pipeline import PruneJob, PruneResult, SpeedRecipe, run
from cutq.prune.pruner import MAX_RATIO, PruneConfig
from cutq.prune.reconstruct import ReconstructConfig
from cutq.prune.upsample import LateUpsampleConfig
from cutq_runtime.errors import CutqError

from .quantize import CALIB_HELP, VERIFY_HELP
from .ui import CACHE_HELP, err, errors_exit, table_console


def prune(
    model: Annotated[str, typer.Option("--model", "-m", help="Variant name (u2net, u2netp, ...) or .onnx path.")],
    ratio: Annotated[float, typer.Option("--ratio", "-r", help=f"Fraction of the Conv parameters removed, in (0, "
                                         f"{MAX_RATIO}]. The wide Convs are factored until it is met (see --factor); "
                                         "with --no-factor, the same fraction of channels (about 1-sqrt(1-R), found "
                                         "exactly) is removed from every prunable channel group (see --narrow-share), "
                                         "none left below --min-channels.")],
    criterion: Annotated[str, typer.Option("--criterion", help=f"Channel importance: {', '.join(CRITERIA)}. activation "
                                           "(std of the channel on calibration photos x its consumers' weight norm) "
                                           "ranks what is lost once the channel's mean is compensated in the biases; "
                                           "on u2netp it beat l1 at every ratio measured.")] = "activation",
    reconstruct: Annotated[bool, typer.Option("--reconstruct/--no-reconstruct",
                                              help="Refit each pruned Conv by least squares on the calibration photos.")] = True,
    finetune_epochs: Annotated[int, typer.Option("--finetune-epochs", min=0, help="Then distil toward the FP32 model's "
                                                 "side outputs for N epochs on the calibration photos (needs "
                                                 "`pip install 'cutq\\[train]'`; resumes from <out>.ckpt).")] = 0,
    out: Annotated[Path | None, typer.Option("--out", "-o", help="Output .onnx (default: cache, as <name>-p<R*100>, "
                                             "or <name>-p<R*100>-fast with --fast).")] = None,
    calib_dir: Annotated[Path | None, typer.Option("--calib-dir", help=CALIB_HELP)] = None,
    calib_count: Annotated[int, typer.Option("--calib-count", min=2, help="Calibration photos to sample for the "
                                          "refit. More cost time and memory and are not always better: on u2net at 0.5, 64 "
                                          "photos raised mask SSIM mean 0.953 -> 0.958 with --no-factor (peak memory 3.7 -> "
                                          "7.6 GB) and lowered it 0.9585 -> 0.9559 with --factor-method output --narrow-fraction "
                                          "0.5.")] = 16,
    verify_dir: Annotated[Path | None, typer.Option("--verify-dir", help=VERIFY_HELP)] = None,
    verify_count: Annotated[int, typer.Option("--verify-count", min=1, help="Verification photos to sample.")] = 16,
    multiple: Annotated[int | None, typer.Option("--channel-multiple", min=1, help="Round kept channel counts to this "
                                                 "(default 4).")] = None,
    min_channels: Annotated[int, typer.Option("--min-channels", min=1, help="Never cut a group below this many channels: "
                                              "ONNX Runtime's INT8 Conv is about 4x slower with fewer than 16 "
                                              "outputs than with 16.")] = PruneConfig.min_channels,
    samples: Annotated[int, typer.Option("--samples", min=16, help="Positions per photo and Conv for the refit.")] = 1024,
    ridge: Annotated[float, typer.Option("--ridge", min=0.0, help="Refit regularisation toward the sliced weights, "
                                         "scaled by each Conv's unknowns per sample: strong at U²-Net's 10x10 "
                                         "bottom, where 16 photos give fewer samples than unknowns.")] = ReconstructConfig.ridge,
    narrow_share: Annotated[float, typer.Option("--narrow-share", min=0.0, help=(
        "With --no-factor: groups under 256 channels lose this times the wider groups' fraction. u2net at 0.6 with "
        "0.25 kept mask SSIM about as high as the uniform 0.5 with 20% fewer parameters, but more MACs (a size "
        "limit). Above 1 cuts MACs (a latency limit): u2net at 0.5 with 1.5 and --channel-multiple 16 ran in INT8 "
        "at 0.175x of FP32, the default 0.5 at 0.218x."))] = 1.0,
    factor: Annotated[bool, typer.Option("--factor/--no-factor", help="Factor Convs instead of removing channels "
                                         "(see --factor-method). u2net at 0.5: mask SSIM mean 0.978 separable, 0.971 "
                                         "output, 0.953 with --no-factor (channels removed everywhere). Models with no "
                                         "Conv of 500,000 weights (u2netp) lose channels either way.")] = True,
    factor_method: Annotated[str, typer.Option("--factor-method", help="separable: every 3x3 Conv of 100 M MACs or "
                                               "more becomes a 3x1 Conv and a 1x3 Conv, all at the one share of their "
                                               "weights that meets --ratio, then refit; no channel is removed. output: "
                                               "the wide Convs (256 channels and more) become a kxk Conv to fewer "
                                               "channels and a 1x1 Conv back, from the output statistics of the "
                                               "calibration photos, and the narrow groups lose --narrow-fraction of "
                                               "their channels.")] = LowRankConfig.method,
    narrow_fraction: Annotated[float | None, typer.Option("--narrow-fraction", min=0.0, max=0.95, help=(
        "With --factor: the fraction of channels removed from each group under 256 channels before factoring (these "
        "Convs do most of the MACs, and fewer channels also means less Resize and Concat work). Default 0 with "
        "separable, 0.2 with output. Raise it for speed."))] = None,
    whole_below: Annotated[int | None, typer.Option("--whole-below", min=0, help=(
        "With --factor-method separable: leave Convs with fewer output channels than this whole (default 0). 65 "
        "keeps the 16-64-channel Convs whole: more MACs, but their INT8 needs no float Conv. With --narrow-fraction "
        "0.3 --channel-multiple 16 --late-upsample it is --fast."))] = None,
    late_upsample: Annotated[bool | None, typer.Option("--late-upsample/--no-late-upsample", help=(
        "Run each decoder Conv's upsampled half on the coarse map and upsample its output instead (3/4 fewer MACs "
        "there, no Concat), fit by least squares on the calibration photos. Only sites saving 50 M MACs or more "
        "move. Off unless given; --fast turns it on."))] = None,
    keep_narrow: Annotated[list[str] | None, typer.Option("--keep-narrow", metavar="SIZE:CHANNELS", help=(
        "With --factor: the narrow groups on SIZE x SIZE maps with at least CHANNELS channels keep every channel; "
        "repeatable. Where channels go matters more than how many: on u2net, --fast's recipe without --keep-narrow "
        "80:64 had 23.1 GMAC (24.2) but mask SSIM mean 0.973 (0.976) on held-out photos."))] = None,
    fast: Annotated[bool, typer.Option("--fast", help=(
        "The speed recipe: --narrow-fraction 0.3 --channel-multiple 16 --whole-below 65 --late-upsample "
        "--keep-narrow 80:64, cached as <name>-p<R*100>-fast so the default recipe's model stays. u2net at 0.5: "
        "24.2 GMAC (default 27.9), mask SSIM mean 0.976 (0.978) against FP32 u2net on held-out photos; its 4-bit "
        "INT8 file at 0.14x of FP32 u2net's time (0.19x)."))] = False,
    lowrank_photos: Annotated[int | None, typer.Option("--lowrank-photos", min=2, help="With --factor-method output: "
                                                "calibration photos the output statistics are measured on (one "
                                                f"forward pass each; default {LowRankConfig.images}).")] = None,
    seed: Annotated[int, typer.Option("--seed", help="Seed for sampling and splitting photos.")] = 0,
    cache_dir: Annotated[Path | None, typer.Option("--cache-dir", help=CACHE_HELP)] = None,
) -> None:
    """Factor U²-Net's big 3x3 Convs into 3x1 and 1x3 Convs (or factor the wide Convs' outputs and remove channels
    from the narrow groups, --factor-method output; or remove channels everywhere, --no-factor), then refit what
    changed by least squares on calibration photos; no training."""
    with errors_exit():
        if lowrank_photos is not None and (factor_method != "output" or not factor):
            raise CutqError("--lowrank-photos applies only to --factor-method output")
        if whole_below and not factor:  # the method itself is checked by LowRankConfig
            raise CutqError("--whole-below applies only to --factor-method separable")
        recipe = SpeedRecipe() if fast else None
        spared = _size_channels(keep_narrow or [])
        if recipe is not None:
            if not factor or factor_method != "separable":
                raise CutqError("--fast is a recipe of --factor-method separable; drop --no-factor / --factor-method")
            if any(v is not None for v in (narrow_fraction, multiple, whole_below, late_upsample)) or keep_narrow:
                raise CutqError("--fast sets --narrow-fraction, --channel-multiple, --whole-below, --late-upsample and "
                                "--keep-narrow itself; give those flags without --fast for a recipe of your own")
            narrow_fraction, multiple, whole_below = recipe.narrow_fraction, recipe.channel_multiple, recipe.whole_below
            late_upsample, spared = recipe.late_upsample, recipe.keep_narrow
        job = PruneJob(
            model=model, variant=recipe.variant if recipe else "",
            prune=PruneConfig(ratio, multiple=multiple or PruneConfig.multiple, min_channels=min_channels,
                              narrow_share=narrow_share, keep_narrow=spared),
            criterion=criterion, reconstruct=reconstruct, out=out,
            calib_dir=calib_dir, calib_count=calib_count, verify_dir=verify_dir, verify_count=verify_count, seed=seed,
            cache_dir=cache_dir, reconstruction=ReconstructConfig(samples=samples, ridge=ridge, seed=seed),
            finetune_epochs=finetune_epochs, late_upsample=LateUpsampleConfig(seed=seed) if late_upsample else None,
            lowrank=LowRankConfig(narrow_fraction=narrow_fraction, method=factor_method, min_outputs=whole_below or 0,
                                  images=LowRankConfig.images if lowrank_photos is None else lowrank_photos)
            if factor else None,
        )
        with err.status(f"Pruning {model}") as status:
            result = run(job, progress=lambda message: status.update(f"Pruning {model}: {message}"))
    print_summary(result, job.prune, job.calib_count)


def print_summary(r: PruneResult, config: PruneConfig, asked: int) -> None:
    """Before/after: parameters, GMAC, file size; then mask SSIM against the unpruned model; a warning when the refit
    had fewer calibration photos than asked for, because its held-out figure then overstates the model."""
    if r.ranks and r.channels_before == r.channels_after:
        title = f"{r.name}: {len(r.ranks)} Convs factored to ranks {min(r.ranks.values())}-{max(r.ranks.values())}"
    elif r.ranks:
        title = (f"{r.name}: {r.channels_before} -> {r.channels_after} channels ({r.channel_fraction:.0%} of each narrow "
                 f"group), {len(r.ranks)} wide Convs factored to ranks {min(r.ranks.values())}-{max(r.ranks.values())}")
    else:
        title = (f"{r.name}: {r.groups_pruned} channel groups, {r.channels_before} -> {r.channels_after} channels "
                 f"({r.channel_fraction:.0%} removed per{' wide' * (config.narrow_share != 1)} group)")
    table = Table(title=title)
    for column in ("", "params", "GMAC @320", "file"):
        table.add_column(column, no_wrap=True)
    for label, f in (("source", r.source), ("pruned", r.pruned)):
        table.add_row(label, f"{f.params / 1e6:.2f} M", f"{f.macs / 1e9:.2f}", f"{f.size_bytes / 1e6:.1f} MB")
    table.add_row("ratio", *(f"{a / b:.2f}x" for a, b in ((r.pruned.params, r.source.params),
                                                          (r.pruned.macs, r.source.macs),
                                                          (r.pruned.size_bytes, r.source.size_bytes))))
    table_console().print(table)
    f = r.fidelity
    print(f"mask SSIM vs unpruned on {len(f.ssim_per_image)} held-out photos: min {f.ssim_min:.4f}, "
          f"mean {f.ssim_mean:.4f}, MAE {f.mae_mean:.4f}")
    if r.reconstruction is not None:
        rec = r.reconstruction
        print(f"reconstruction: {rec.convs} Conv refit in {rec.passes} waves; calibration residual "
              f"{rec.error_sliced:.3f} -> {rec.error_refit:.3f} (of the target variance)")
    late = r.late_upsample
    if late is not None and late.sites:
        print(f"late upsampling: {len(late.sites)} decoder Convs, {late.saved_macs / 1e9:.2f} GMAC saved; calibration "
              f"residual {late.error_before:.3f} -> {late.error_after:.3f} (of the target variance)")
    elif late is not None:
        print("late upsampling: no decoder Conv saves 50 M MACs without widening its Resize; nothing moved")
    err.print(f"{r.export.onnx_path} (+ .ort, .json)", markup=False)
    for skipped in r.skipped_images:
        err.print(f"[yellow]skipped:[/yellow] {skipped}")
    if r.calibration_photos < asked:
        err.print(f"[yellow]warning:[/yellow] the refit had {r.calibration_photos} calibration photos ({asked} asked "
                  "for), so it fits them more than photos like yours. On u2net, --fast refit on the 2 bundled photos "
                  "scored mask SSIM mean 0.956 on 71 held-out davis-val photos, where a refit on 16 davis-val photos "
                  "of other scenes scored 0.976. Give --calib-dir a folder of 16 or more photos like yours.")


def _size_channels(values: list[str]) -> tuple[tuple[int, int], ...]:
    """["80:64"] -> ((80, 64),); a clear error for anything else."""
    found = []
    for value in values:
        size, _, channels = value.partition(":")
        if not (size.strip().isdigit() and channels.strip().isdigit()):
            raise CutqError(f"--keep-narrow takes SIZE:CHANNELS, such as 80:64, not '{value}'")
        found.append((int(size), int(channels)))
    return tuple(found)
