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
                search=SearchConfig(target_ssim=target_ssim, max_float_nodes=max_float_nodes),
                pack=PackConfig(min_weights=int4_min_weights, rounding=int4_rounding),
            )
            with err.status(f"Quantizing {name}") as status:
                results.append(run(job, progress=lambda message, n=name: status.update(f"Quantizing {n}: {message}")))
            err.print(f"{name}: done")
    print_summary(results, target_ssim)
    missed = [r for r in results if not r.reached]
    for r in missed:
        hint = ("4-bit weights cost fidelity: raise --int4-min-weights, or drop it for an all-INT8 model."
                if r.packed and r.packed.convs else
                "Try --method percentile, more --max-float-nodes, or calibration photos closer to your own.")
        err.print(f"[red]target not reached for {r.name}:[/red] SSIM min {r.fidelity.ssim_min:.4f} < {target_ssim} on "
                  f"the verification photos; the best model found was written anyway. {hint}")
    if missed:
        raise typer.Exit(1)


def print_summary(results: list[QuantizeResult], target_ssim: float) -> None:
    """One row per variant: size, latency vs FP32, SSIM min/mean, float nodes."""
    table = Table(title=f"INT8 variants (target SSIM min {target_ssim})")
    for column in ("variant", "size", "vs FP32", "latency vs FP32", "SSIM min", "SSIM mean", "MAE", "float convs", "float MACs"):
        table.add_column(column, no_wrap=True)
    for r in results:
        floats = f"{len(r.head)} head + {len(r.float_nodes)}"
        mark = "" if r.reached else " [red]< target[/red]"
        table.add_row(
            r.export.onnx_path.stem, f"{r.export.size_bytes / 1e6:.1f} MB", f"{r.export.size_bytes / r.source_size:.2f}x",
            f"{r.latency_ratio:.2f}x", f"{r.fidelity.ssim_min:.4f}{mark}", f"{r.fidelity.ssim_mean:.4f}",
            f"{r.fidelity.mae_mean:.4f}", floats, f"{r.float_mac_share:.1%}",
        )
    table_console().print(table)
    for r in results:
        err.print(f"{r.export.onnx_path} (+ .ort, .json)")
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
        for skipped in r.skipped_images:
            err.print(f"[yellow]skipped:[/yellow] {skipped}")
