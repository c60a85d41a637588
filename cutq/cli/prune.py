"""`cutq prune`: shrink a model by a recipe (factoring, channel removal, late upsampling), refit it on photos,
then print a summary table."""

from __future__ import annotations

from enum import Enum
from pathlib import Path
from typing import Annotated

from rich.table import Table

from cutq.prune.lowrank import LowRankConfig
from cutq.prune.pipeline import PruneJob, PruneResult, run
from cutq.prune.pruner import MAX_RATIO, PruneConfig
from cutq.prune.recipes import RECIPES, Recipe
from cutq.prune.reconstruct import ReconstructConfig
from cutq.prune.upsample import LateUpsampleConfig
from cutq_runtime.errors import CutqError

from .quantize import CALIB_HELP, VERIFY_HELP
from .ui import CACHE_HELP, err, errors_exit, option, table_console

OWN = "Your own recipe (on top of --recipe default)"
REFIT = "Photos and refit"
RECIPE_HELP = "default: the best masks for the size. fast: fewer MACs, for speed; cached as <name>-pNN-fast."
RecipeName = Enum("RecipeName", {name: name for name in RECIPES}, type=str)  # the --recipe choices


def prune(
    model: Annotated[str, option("--model", "-m", metavar="NAME", help="Variant name or .onnx path.")],
    ratio: Annotated[float, option("--ratio", "-r", metavar="R", help=f"Share of the parameters to remove, (0, {MAX_RATIO}].")],
    recipe_name: Annotated[RecipeName, option("--recipe", metavar="NAME", help=RECIPE_HELP)] = RecipeName["default"],
    out: Annotated[Path | None, option("--out", "-o", metavar="FILE", help="Output .onnx (default: the cache).")] = None,
    calib_dir: Annotated[Path | None, option("--calib-dir", metavar="DIR", help=CALIB_HELP)] = None,
    verify_dir: Annotated[Path | None, option("--verify-dir", metavar="DIR", help=VERIFY_HELP)] = None,
    cache_dir: Annotated[Path | None, option("--cache-dir", metavar="DIR", help=CACHE_HELP)] = None,
    narrow_fraction: Annotated[float | None, option("--narrow-fraction", panel=OWN, metavar="F", help=(
        "Remove this share of each narrow group's channels (< 256)."))] = None,
    multiple: Annotated[int | None, option("--channel-multiple", panel=OWN, metavar="N", help=(
        "Round kept channel counts to a multiple of N (default 4)."))] = None,
    whole_below: Annotated[int | None, option("--whole-below", panel=OWN, metavar="N", help=(
        "Leave Convs with fewer than N outputs unfactored."))] = None,
    late_upsample: Annotated[bool, option("--late-upsample", panel=OWN, metavar="", help=(
        "Run decoder Convs on the coarse map, then upsample."))] = False,
    spare: Annotated[list[str] | None, option("--spare", panel=OWN, metavar="SIZE:CH", help=(
        "Spare narrow groups of CH+ channels on SIZE x SIZE maps."))] = None,
    min_channels: Annotated[int, option("--min-channels", panel=OWN, metavar="N", help=(
        "Never cut a group below N channels (default 16)."))] = PruneConfig.min_channels,
    calib_count: Annotated[int, option("--calib-count", panel=REFIT, metavar="N", help=(
        "Calibration photos to sample (default 16)."))] = 16,
    verify_count: Annotated[int, option("--verify-count", panel=REFIT, metavar="N", help=(
        "Verification photos to sample (default 16)."))] = 16,
    samples: Annotated[int, option("--samples", panel=REFIT, metavar="N", help=(
        "Refit positions per photo and Conv (default 1024)."))] = ReconstructConfig.samples,
    ridge: Annotated[float, option("--ridge", panel=REFIT, metavar="L", help=(
        "Refit pull toward the sliced weights (default 0.1)."))] = ReconstructConfig.ridge,
    no_reconstruct: Annotated[bool, option("--no-reconstruct", panel=REFIT, metavar="", help="Skip the refit.")] = False,
    seed: Annotated[int, option("--seed", panel=REFIT, metavar="N", help="Seed for sampling photos.")] = 0,
    fast: Annotated[bool, option("--fast", hidden=True, help="Old spelling of --recipe fast.")] = False,
    keep_narrow: Annotated[list[str] | None, option("--keep-narrow", hidden=True, help="Old spelling of --spare.")] = None,
) -> None:
    """Shrink a U²-Net by --ratio of its parameters with a recipe, then refit it on calibration photos (no training).

    Give --calib-dir a folder of 16 or more photos like yours."""
    with errors_exit():
        recipe = _recipe(RECIPES["fast" if fast else recipe_name.value], narrow_fraction, multiple, whole_below,
                         late_upsample, _size_channels([*(spare or []), *(keep_narrow or [])]))
        job = PruneJob(
            model=model, variant=recipe.variant,
            prune=PruneConfig(ratio, multiple=recipe.channel_multiple, min_channels=min_channels, spare=recipe.spare),
            reconstruct=not no_reconstruct, out=out, calib_dir=calib_dir, calib_count=calib_count,
            verify_dir=verify_dir, verify_count=verify_count, seed=seed, cache_dir=cache_dir,
            reconstruction=ReconstructConfig(samples=samples, ridge=ridge, seed=seed),
            late_upsample=LateUpsampleConfig(seed=seed) if recipe.late_upsample else None,
            lowrank=LowRankConfig(narrow_fraction=recipe.narrow_fraction, min_outputs=recipe.whole_below),
        )
        with err.status(f"Pruning {model}") as status:
            result = run(job, progress=lambda message: status.update(f"Pruning {model}: {message}"))
    print_summary(result, job.prune, job.calib_count)


def _recipe(base: Recipe, narrow_fraction: float | None, multiple: int | None, whole_below: int | None,
            late_upsample: bool, spare: tuple[tuple[int, int], ...]) -> Recipe:
    """`base` with the flags of a recipe of one's own applied; only the default recipe takes them, so that another
    recipe's cached name always means its own settings."""
    given = narrow_fraction is not None or multiple is not None or whole_below is not None or late_upsample or spare
    if not given:
        return base
    if base.variant:
        raise CutqError(f"--recipe {base.name} sets --narrow-fraction, --channel-multiple, --whole-below, "
                        "--late-upsample and --spare itself; give those flags with --recipe default for a recipe of "
                        "your own")
    return Recipe("own", narrow_fraction, base.channel_multiple if multiple is None else multiple,
                  base.whole_below if whole_below is None else whole_below, late_upsample, spare)


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
                  "for), so it fits them more than photos like yours and its held-out figure overstates the model. "
                  "Give --calib-dir a folder of 16 or more photos like yours.")


def _size_channels(values: list[str]) -> tuple[tuple[int, int], ...]:
    """["80:64"] -> ((80, 64),); a clear error for anything else."""
    found = []
    for value in values:
        size, _, channels = value.partition(":")
        if not (size.strip().isdigit() and channels.strip().isdigit()):
            raise CutqError(f"--spare takes SIZE:CHANNELS, such as 80:64, not '{value}'")
        found.append((int(size), int(channels)))
    return tuple(found)
