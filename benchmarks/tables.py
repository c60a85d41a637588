"""The two tables every renderer shows (terminal, Markdown, HTML): speed and size, then mask quality.

Defined once, as header + formatted cells, so the README, the terminal and the HTML report never disagree
about a column's meaning or rounding.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from .results import BenchReport, VariantRow


@dataclass(frozen=True)
class Column:
    header: str
    cell: Callable[[VariantRow], str]
    help: str = ""


def _f(value: float | int | None, spec: str, scale: float = 1.0, suffix: str = "") -> str:
    return "-" if value is None else f"{value * scale:{spec}}{suffix}"


def _x(value: float | None) -> str:
    return _f(value, ".2f", suffix="x")


SPEED = (
    Column("variant", lambda r: r.name),
    Column("size MB", lambda r: _f(r.size_bytes, ".1f", 1e-6), "file size"),
    Column("size vs FP32", lambda r: _x(r.size_vs_fp32)),
    Column("params M", lambda r: _f(r.params, ".2f", 1e-6), "Conv weights and biases"),
    Column("GMAC", lambda r: _f(r.gmac, ".1f"), "multiply-accumulates at 320x320"),
    Column("load ms", lambda r: _f(r.load_ms, ".0f"), "session creation"),
    Column("1 thread p50 ms", lambda r: _f(r.latency_1t_p50_ms, ".0f"), "session run, one thread"),
    Column("p50 ms", lambda r: _f(r.latency_p50_ms, ".0f"), "session run, all cores"),
    Column("p95 ms", lambda r: _f(r.latency_p95_ms, ".0f")),
    Column("latency vs FP32", lambda r: _x(r.latency_vs_fp32), "p50, all cores"),
    Column("e2e ms", lambda r: _f(r.e2e_ms, ".0f"), "bytes in to PNG out, mean per photo"),
    Column("e2e vs rembg", lambda r: _x(r.e2e_vs_rembg)),
    Column("img/s", lambda r: _f(r.throughput_ips, ".2f"), "folder run"),
    Column("peak RSS MB", lambda r: _f(r.peak_rss_mb, ".0f"), "separate process"),
)

QUALITY = (
    Column("variant", lambda r: r.name),
    Column("vs", lambda r: r.reference or "-"),
    Column("SSIM min", lambda r: _f(r.ssim_vs_fp32_min, ".4f"), "mask vs its FP32 model, worst photo"),
    Column("SSIM mean", lambda r: _f(r.ssim_vs_fp32_mean, ".4f")),
    Column("MAE vs FP32", lambda r: _f(r.mae_vs_fp32, ".4f")),
    Column("GT MAE", lambda r: _f(r.gt_mae, ".4f"), "vs ground truth, lower is better"),
    Column("GT IoU", lambda r: _f(r.gt_iou, ".3f"), "at 0.5"),
    Column("max Fβ", lambda r: _f(r.gt_max_fbeta, ".3f"), "beta² = 0.3"),
    Column("S-measure", lambda r: _f(r.gt_s_measure, ".3f")),
)


def cells(report: BenchReport, columns: tuple[Column, ...]) -> tuple[list[str], list[list[str]]]:
    return [c.header for c in columns], [[c.cell(row) for c in columns] for row in report.variants]


def markdown_table(report: BenchReport, columns: tuple[Column, ...]) -> str:
    headers, rows = cells(report, columns)
    align = ["---"] + ["--:"] * (len(headers) - 1)
    lines = [headers, align, *rows]
    return "\n".join("| " + " | ".join(cell.replace("|", "\\|") for cell in line) + " |" for line in lines)
