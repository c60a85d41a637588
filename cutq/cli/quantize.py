"""`cutq quantize`: static INT8 with accuracy-aware mixed precision, then a summary table."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from cutq.quantize.calibrate import METHODS, CalibrationConfig
from cutq.quantize.equalize import EqualizeConfig
from cutq.quantize.pack import PackConfig
from cutq.quantize.pipeline import QuantizeJob, QuantizeResult, run
from cutq.quantize.qdq import QuantConfig
from cutq.quantize.rounding import RoundingConfig
from cutq.quantize.search import SearchConfig
from cutq_runtime.errors import CutqError

from .ui import CACHE_HELP, err, errors_exit, option, table_console

CALIB_HELP = "Photos like yours to calibrate on (default: the bundled calibration_data/)."
VERIFY_HELP = "Held-out photos (default: the scenes of --calib-dir not calibrated on)."
EXPERT = "Expert"
HEADROOM_HELP = "Equalize channels louder than H x their tensor's typical one (default 3; 2 suits u2net)."
INT4_HELP = "Store the weights of Convs with N+ weights at 4 bits, as <name>-int8w4 (needs onnxruntime >= 1.23)."
WEIGHT_RANGE_HELP = "7bit (default): exact on every CPU. 8bit: exact only on VNNI x86 and ARM."


def quantize(
    model: Annotated[list[str], option("--model", "-m", metavar="NAME", help="Variant name or .onnx path; repeatable.")],
    out: Annotated[Path | None, option("--out", "-o", metavar="FILE", help="Output .onnx (default: the cache).")] = None,
    calib_dir: Annotated[Path | None, option("--calib-dir", metavar="DIR", help=CALIB_HELP)] = None,
    verify_dir: Annotated[Path | None, option("--verify-dir", metavar="DIR", help=VERIFY_HELP)] = None,
    target_ssim: Annotated[float, option("--target-ssim", metavar="S", help=(
        "Mask SSIM vs FP32 the worst held-out photo must reach (default 0.98)."))] = SearchConfig.target_ssim,
    tensor_headroom: Annotated[float, option("--tensor-headroom", metavar="H", help=HEADROOM_HELP)] = (
        EqualizeConfig.tensor_headroom),
    int4_min_weights: Annotated[int, option("--int4-min-weights", metavar="N", help=INT4_HELP)] = 0,
    cache_dir: Annotated[Path | None, option("--cache-dir", metavar="DIR", help=CACHE_HELP)] = None,
    weight_range: Annotated[str, option("--weight-range", panel=EXPERT, metavar="7bit|8bit", help=WEIGHT_RANGE_HELP)] = "7bit",
    method: Annotated[str, option("--method", panel=EXPERT, metavar="NAME", help=(
        f"Calibration: {', '.join(METHODS)} (default {CalibrationConfig.method})."))] = CalibrationConfig.method,
    percentile: Annotated[float, option("--percentile", panel=EXPERT, metavar="P", help=(
        "For --method percentile (default 99.999)."))] = CalibrationConfig.percentile,
    max_float_nodes: Annotated[int, option("--max-float-nodes", panel=EXPERT, metavar="N", help=(
        "Convs the search may keep in float (default 8)."))] = SearchConfig.max_float_nodes,
    no_equalize: Annotated[bool, option("--no-equalize", panel=EXPERT, metavar="", help=(
        "Skip range equalization (for a model it cannot rescale)."))] = False,
    calib_count: Annotated[int, option("--calib-count", panel=EXPERT, metavar="N", help=(
        "Calibration photos to sample (default 16)."))] = 16,
    verify_count: Annotated[int, option("--verify-count", panel=EXPERT, metavar="N", help=(
        "Verification photos to sample (default 24)."))] = 24,
    seed: Annotated[int, option("--seed", panel=EXPERT, metavar="N", help="Seed for sampling photos.")] = 0,
) -> None:
    """Quantize to INT8, keeping the fewest Conv nodes in float that hold mask SSIM above --target-ssim.

    Exit code 1 when the target is not reached on the verification photos (the best model is still written).
    """
    results = []
    with errors_exit():
        if out is not None and len(model) > 1:
            raise CutqError("--out names one file: drop it to write each variant to the cache as <name>-int8")
        for name in model:
            job = QuantizeJob(
                model=name, out=out, calib_dir=calib_dir, calib_count=calib_count, verify_dir=verify_dir,
                verify_count=verify_count, seed=seed, cache_dir=cache_dir,
                equalize=EqualizeConfig(enabled=not no_equalize, tensor_headroom=tensor_headroom),
                calibration=CalibrationConfig(method=method, percentile=percentile),
                quant=QuantConfig(weight_range=weight_range),
                rounding=RoundingConfig(seed=seed),
                search=SearchConfig(target_ssim=target_ssim, max_float_nodes=max_float_nodes),
                pack=PackConfig(min_weights=int4_min_weights),
            )
            with err.status(f"Quantizing {name}") as status:
                results.append(run(job, progress=lambda message, n=name: status.update(f"Quantizing {n}: {message}")))
            err.print(f"{name}: done")
    print_summary(results, target_ssim)
    missed = [r for r in results if not r.reached]
    for r in results:
        if r.portability is not None and not r.portability.portable:
            err.print(f"[red]{r.name}: not portable:[/red] its integer kernels depart from its own arithmetic on this CPU; "
                      "--weight-range 7bit (the default) makes every CPU compute it exactly.")
    for r in missed:
        hint = ("4-bit weights cost fidelity: raise --int4-min-weights, or drop it for an all-INT8 model."
                if r.packed and r.packed.convs else
                "Try --method percentile, more --max-float-nodes, or calibration photos closer to your own.")
        err.print(f"[red]target not reached for {r.name}:[/red] SSIM min {r.fidelity.ssim_min:.4f} < {target_ssim} on "
                  f"the verification photos; the best model found was written anyway. {hint}")
    if missed or any(r.portability is not None and not r.portability.portable for r in results):
        raise typer.Exit(1)


def _cpus(r: QuantizeResult) -> str:
    """Where the file computes exactly what it says: every CPU (7-bit weights), VNNI/ARM only, or not even here."""
    if r.portability is not None and not r.portability.portable:
        return "[red]not portable[/red]"
    return "any" if r.exact_on == "any" else "VNNI/ARM only"


def print_summary(results: list[QuantizeResult], target_ssim: float) -> None:
    """One row per variant: size, latency vs FP32, SSIM min/mean, float nodes."""
    table = Table(title=f"INT8 variants (target SSIM min {target_ssim})")
    columns = ("variant", "size", "vs FP32", "latency vs FP32", "SSIM min", "SSIM mean", "MAE", "float convs", "float MACs",
               "CPUs")
    for column in columns:
        table.add_column(column, no_wrap=True)
    for r in results:
        floats = f"{len(r.head)} head + {len(r.float_nodes)}"
        mark = "" if r.reached else " [red]< target[/red]"
        table.add_row(
            r.export.onnx_path.stem, f"{r.export.size_bytes / 1e6:.1f} MB", f"{r.export.size_bytes / r.source_size:.2f}x",
            f"{r.latency_ratio:.2f}x", f"{r.fidelity.ssim_min:.4f}{mark}", f"{r.fidelity.ssim_mean:.4f}",
            f"{r.fidelity.mae_mean:.4f}", floats, f"{r.float_mac_share:.1%}", _cpus(r),
        )
    table_console().print(table)
    for r in results:
        err.print(f"{r.export.onnx_path} (+ .ort, .json)", markup=False)
        err.print(f"  float head: {', '.join(r.head) or 'none'} (side outputs and fusion: their logits set the mask)")
        if r.centered_channels:
            err.print(f"  centered: {r.centered_channels} near-constant channel(s), offset moved into the next Convs' biases")
        if r.packed and r.packed.convs:
            err.print(f"  4-bit weights: {len(r.packed.convs)} Conv(s), {r.packed.weights / max(r.packed.int8_weights, 1):.0%} "
                      f"of the INT8 weights, {r.packed.rounding} rounding")
        if r.equalized_channels:
            err.print(f"  equalized: {r.equalized_channels} outlier channel(s) scaled into the next Convs' weights")
        for n in r.float_nodes:
            err.print(f"  float: {n.node} (loses {n.drop_db:.1f} dB in INT8; search SSIM min "
                      f"{n.ssim_min_before:.4f} -> {n.ssim_min_after:.4f})")
        if r.portability is not None:
            verdict = "agree" if r.portability.portable else "[red]DISAGREE: the kernels saturate on this CPU[/red]"
            err.print(f"  integer kernels vs exact arithmetic on this CPU: {verdict} (mask SSIM min "
                      f"{r.portability.ssim_min:.4f}, largest difference {r.portability.max_abs * 255:.1f}/255)")
        for skipped in r.skipped_images:
            err.print(f"[yellow]skipped:[/yellow] {skipped}")
