"""`--html PATH`: one self-contained page a person can read and look at.

Charts are inline SVG (`svg.py`), thumbnails are base64 JPEGs, styles are inline: the file opens offline,
from an e-mail attachment or a CI artefact, with nothing fetched. The cut-out grid has one row per photo
and one column per variant (the photo first, rembg last), on a checkerboard so halos and holes show.
"""

from __future__ import annotations

import base64
import re
from collections.abc import Callable
from html import escape

from . import svg
from .machine import describe
from .markdown import key_ratios
from .results import BenchReport, VariantRow
from .tables import QUALITY, SPEED, Column, cells

PALETTE = ("#1f77b4", "#ff7f0e", "#2ca02c", "#9467bd", "#8c564b", "#17becf")
REMBG_COLOR = "#888888"

STYLE = """
body { font-family: system-ui, sans-serif; margin: 24px; color: #222; }
h1 { font-size: 22px; } h2 { font-size: 18px; margin-top: 28px; }
.charts { display: flex; flex-wrap: wrap; gap: 16px; }
.charts svg { border: 1px solid #ddd; background: #fff; padding: 4px; }
table { border-collapse: collapse; font-size: 13px; }
th, td { border: 1px solid #ddd; padding: 4px 8px; text-align: right; white-space: nowrap; }
th:first-child, td:first-child { text-align: left; }
th { background: #f4f4f4; }
table.grid { table-layout: fixed; width: 100%; }
table.grid td, table.grid th { padding: 2px; text-align: center; white-space: normal; }
table.grid img { width: 100%; display: block; }
.notes { color: #555; font-size: 13px; }
"""


def _colors(report: BenchReport) -> dict[str, str]:
    """One colour per FP32 family (a variant and its sources share it), grey for rembg."""
    families = sorted({row.reference or row.name for row in report.variants})
    family_color = {name: PALETTE[i % len(PALETTE)] for i, name in enumerate(families)}
    return {row.name: REMBG_COLOR if row.engine == "rembg" else family_color[row.reference or row.name]
            for row in report.variants}


def _table(report: BenchReport, columns: tuple[Column, ...]) -> str:
    headers, rows = cells(report, columns)
    head = "".join(f'<th title="{escape(c.help)}">{escape(h)}</th>' for c, h in zip(columns, headers, strict=True))
    body = "".join("<tr>" + "".join(f"<td>{escape(v)}</td>" for v in row) + "</tr>" for row in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _charts(report: BenchReport) -> str:
    colors = _colors(report)
    rows = report.variants

    def bar_items(value: Callable[[VariantRow], float | None]) -> list[tuple[str, float, str]]:
        return [(r.name, v, colors[r.name]) for r in rows if (v := value(r)) is not None]

    points = [svg.Point(r.name, r.latency_p50_ms, r.ssim_vs_fp32_mean, r.ssim_vs_fp32_min, colors[r.name])
              for r in rows if r.latency_p50_ms is not None and r.ssim_vs_fp32_mean is not None
              and r.ssim_vs_fp32_min is not None]
    charts = [
        svg.scatter(points, "Latency against fidelity (up and left is better)", "session latency p50, all cores (ms)",
                    "mask SSIM vs FP32 (dot: mean, line: min)"),
        svg.bars(bar_items(lambda r: r.size_bytes / 1e6), "Model file size", "MB"),
        svg.bars(bar_items(lambda r: r.peak_rss_mb), "Peak memory (RSS, separate process)", "MB"),
        svg.bars(bar_items(lambda r: r.e2e_ms), "End to end per photo (bytes in, PNG out)", "ms"),
    ]
    return '<div class="charts">' + "".join(charts) + "</div>"


def _code(markdown: str) -> str:
    """Escape a Markdown sentence and turn its `code` spans into <code> elements."""
    return re.sub(r"`([^`]*)`", r"<code>\1</code>", escape(markdown))


def _img(data: bytes, alt: str) -> str:
    return f'<img alt="{escape(alt)}" src="data:image/jpeg;base64,{base64.b64encode(data).decode()}">'


def _grid(report: BenchReport) -> str:
    grid = report.grid
    names = [r.name for r in report.variants if len(grid.cutouts.get(r.name, [])) == len(grid.labels)]
    if not grid.labels or not names:
        return "<p>No cut-outs were kept.</p>"
    head = "<th>photo</th>" + "".join(f"<th>{escape(n)}</th>" for n in names)
    body = []
    for i, label in enumerate(grid.labels):
        cols = [f"<td>{_img(grid.photos[i], label)}<br>{escape(label)}</td>"]
        cols += [f"<td>{_img(grid.cutouts[n][i], f'{label}, {n}')}</td>" for n in names]
        body.append("<tr>" + "".join(cols) + "</tr>")
    return f'<table class="grid"><thead><tr>{head}</tr></thead><tbody>{"".join(body)}</tbody></table>'


def render(report: BenchReport, command: str = "cutq bench --all") -> str:
    machine = report.machine
    ratios = "".join(f"<li>{_code(line[2:])}</li>" for line in key_ratios(report))
    notes = "".join(f"<li>{escape(note)}</li>" for note in report.notes)
    images = report.images
    return "\n".join([
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8"><title>cutq bench</title>',
        f"<style>{STYLE}</style></head><body>",
        "<h1>cutq bench: every variant, one run, this machine</h1>",
        f"<p>{escape(describe(machine))}; load average {machine.get('load_average_start')} at start, "
        f"{machine.get('load_average_end')} at end. <code>{escape(command)}</code>, {report.duration_s:.0f} s. "
        f"{len(images['eval'])} photos for quality ({images['ground_truth']} with ground truth), "
        f"{len(images['timing'])} for timing. Compare ratios within this page, not milliseconds across machines.</p>",
        f"<ul>{ratios}</ul>" if ratios else "",
        _charts(report),
        "<h2>Speed, size and memory</h2>",
        _table(report, SPEED),
        "<h2>Mask quality</h2>",
        _table(report, QUALITY),
        "<h2>Cut-outs</h2>",
        _grid(report),
        f'<h2>Notes</h2><ul class="notes">{notes}</ul>' if notes else "",
        "</body></html>",
    ]) + "\n"
