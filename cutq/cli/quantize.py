"""`cutq quantize`: static INT8 with accuracy-aware mixed precision, then a summary table."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from cutq.quantize.calibrate import METHODS, CalibrationConfig
from cutq.quantize.center import CenterConfig
from cutq.quantize.equalize import EqualizeConfig
from cutq.quantize.pack import PackConfig
from cutq.quantize.pipeline import QuantizeJob, QuantizeResult, run
from cutq.quantize.qdq import QuantConfig
from cutq.quantize.rounding import RoundingConfig
from cutq.quantize.search import SearchConfig
from cutq_runtime.errors import CutqError

from .ui import CACHE_HELP, err, errors_exit, table_console

CALIB_HELP = "Calibration photos (default: the bundled calibration_data/). Use photos like the ones you will cut out."
CENTER_HELP = ("Move the offset of near-constant channels (e.g. always 226-228) into the next Convs' biases and "
               "scale what varies up, so it is not lost below one INT8 step. Exact except at the image border.")
EQUALIZE_HELP = ("Scale outlier channels down and their consumers' weights up before calibrating (the float model's "
                 "function is unchanged), so one channel no longer sets a whole tensor's INT8 step.")
TENSOR_HEADROOM_HELP = ("Equalization also scales down a channel (or a whole Concat branch) louder than this times the "
                        "typical channel of a tensor a Conv reads. Lower moves more: finer INT8 steps on photos like the "
                        "calibration ones, less room on unlike ones (u2net: 2, u2netp: 3; see the README).")
INT4_HELP = ("Store the weights of every INT8 Conv with at least this many weights at 4 bits (0: off), written as "
             "<name>-int8w4. The Convs still run at 8 bits, so latency is unchanged; the file is smaller and the masks "
             "a little less faithful (u2net-p50: 22.2 -> 12.6 MB at 200000; see the README). Needs onnxruntime >= 1.23 to load.")
ROUNDING_HELP = ("gptq: round the 4-bit weights so each Conv's output on the calibration photos stays closest to the "
                 "INT8 one (a few minutes for u2net); nearest: round each weight on its own.")
WEIGHT_RANGE_HELP = ("7bit (default): integer weights in [-64, 64], exact on every CPU. 8bit: the full range, a little "
                     "more faithful, but only CPUs with AVX-512 VNNI / AVX-VNNI, or ARM, compute it exactly; AVX2 and "
                     "older x86 CPUs saturate and give wrong masks. The manifest records the choice.")
WEIGHT_ROUNDING_HELP = ("gptq (default): round each Conv's weights so its output on the calibration photos stays closest "
                        "to FP32; nearest: round each weight on its own.")
BIAS_CORRECTION_HELP = "Add each Conv's mean rounding error on the calibration photos back into its bias."
VERIFY_HELP = "Held-out photos to measure fidelity on. Default: split --calib-dir by scene, half for each."


def quantize(
    model: Annotated[list[str], typer.Option("--model", "-m", help="Variant name (u2net, u2netp, u2net-p50, ...) or "
                                             ".onnx path; repeat it to quantize several into one table.")],
    out: Annotated[Path | None, typer.Option("--out", "-o", help="Output .onnx (default: cache, as <name>-int8).")] = None,
    calib_dir: Annotated[Path | None, typer.Option("--calib-dir", help=CALIB_HELP)] = None,
    calib_count: Annotated[int, typer.Option("--calib-count", min=2, help="Calibration photos to sample.")] = 16,
    verify_dir: Annotated[Path | None, typer.Option("--verify-dir", help=VERIFY_HELP)] = None,
    verify_count: Annotated[int, typer.Option("--verify-count", min=1, help="Verification photos to sample.")] = 24,
    method: Annotated[str, typer.Option("--method", help=f"Calibration: {', '.join(METHODS)}.")] = "minmax",
    percentile: Annotated[float, typer.Option("--percentile", help="For --method percentile.")] = 99.999,
    center: Annotated[bool, typer.Option("--center/--no-center", help=CENTER_HELP)] = True,
    equalize: Annotated[bool, typer.Option("--equalize/--no-equalize", help=EQUALIZE_HELP)] = True,
    tensor_headroom: Annotated[float, typer.Option("--tensor-headroom", min=1.0, help=TENSOR_HEADROOM_HELP)] = 3.0,
    weight_range: Annotated[str, typer.Option("--weight-range", help=WEIGHT_RANGE_HELP)] = "7bit",
    weight_rounding: Annotated[str, typer.Option("--weight-rounding", help=WEIGHT_ROUNDING_HELP)] = "gptq",
    bias_correction: Annotated[bool, typer.Option("--bias-correction/--no-bias-correction", help=BIAS_CORRECTION_HELP)] = True,
    target_ssim: Annotated[float, typer.Option("--target-ssim", min=0, max=1, help="Minimum mask SSIM vs FP32.")] = 0.98,
    max_float_nodes: Annotated[int, typer.Option("--max-float-nodes", min=0, help="Give up after this many.")] = 8,
    int4_min_weights: Annotated[int, typer.Option("--int4-min-weights", min=0, help=INT4_HELP)] = 0,
    int4_rounding: Annotated[str, typer.Option("--int4-rounding", help=ROUNDING_HELP)] = "gptq",
    seed: Annotated[int, typer.Option("--seed", help="Seed for sampling and splitting photos.")] = 0,
    cache_dir: Annotated[Path | None, typer.Option("--cache-dir", help=CACHE_HELP)] = None,
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
                center=CenterConfig(enabled=center), equalize=EqualizeConfig(enabled=equalize, tensor_headroom=tensor_headroom),
                calibration=CalibrationConfig(method=method, percentile=percentile),
                quant=QuantConfig(weight_range=weight_range),
                rounding=RoundingConfig(method=weight_rounding, bias_correction=bias_correction, seed=seed),
                search=SearchConfig(target_ssim=target_ssim, max_float_nodes=max_float_nodes),
                pack=PackConfig(min_weights=int4_min_weights, rounding=int4_rounding),
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
