"""Results of the e2e benchmark and their plain-text rendering: the e2e table, the stage table, the summary line.

Kept apart from the measuring code so the JSON schema (these dataclasses) and the printed layout are
read in one place.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from .stages import STAGES


@dataclass
class GroupResult:
    """One model on one group of images (the photos, or the large image)."""

    group: str  # "photos" or "large"
    label: str
    images: int
    runs: int
    rembg_ms: float
    cutq_ms: float
    ratio: float  # mean cutq / mean rembg: below 1 means cutq is faster
    speedup: float  # mean rembg / mean cutq
    paired_median_ratio: float  # median of per-pair cutq/rembg, robust to drift between pairs
    alpha_max_diff: int
    rgba_max_diff: int
    rembg_png_kb: float
    cutq_png_kb: float
    rembg_stages_ms: dict[str, float]
    cutq_stages_ms: dict[str, float]


@dataclass
class ModelResult:
    """Everything measured for one model, as written to the JSON file."""

    model: str
    model_path: str
    groups: list[GroupResult]
    notes: list[str] = field(default_factory=list)


def _table(headers: list[str], rows: list[list[str]]) -> str:
    """A plain aligned text table: first column left-aligned, the rest right-aligned."""
    widths = [max(len(str(row[c])) for row in [headers, *rows]) for c in range(len(headers))]

    def line(row: list[str]) -> str:
        return "  ".join(v.ljust(w) if c == 0 else v.rjust(w) for c, (v, w) in enumerate(zip(row, widths, strict=True)))

    return "\n".join([line(headers), "  ".join("-" * w for w in widths), *(line(r) for r in rows)])


def report(result: ModelResult) -> str:
    """The e2e table and the stage breakdown for one model."""
    e2e_rows = [[g.label, str(g.runs), f"{g.rembg_ms:.1f}", f"{g.cutq_ms:.1f}", f"{g.ratio:.2f}x",
                 f"{g.speedup:.2f}x", f"{g.paired_median_ratio:.2f}x", str(g.alpha_max_diff),
                 f"{g.rembg_png_kb:.0f}", f"{g.cutq_png_kb:.0f}"] for g in result.groups]
    parts = [f"== {result.model} ({result.model_path}) ==",
             _table(["images", "runs", "rembg ms", "cutq ms", "cutq/rembg", "speed-up", "paired med",
                     "alpha Δmax", "rembg KB", "cutq KB"], e2e_rows)]
    headers, rows = ["stage (mean ms)"], [[s] for s in (*STAGES, "sum of stages", "remove() e2e")]
    for g in result.groups:
        headers += [f"rembg {g.group}", f"cutq {g.group}", "cutq/rembg"]
        for row, stage in zip(rows, STAGES, strict=False):
            r, c = g.rembg_stages_ms[stage], g.cutq_stages_ms[stage]
            row += [f"{r:.1f}", f"{c:.1f}", f"{c / r:.2f}x" if r > 0 else "-"]
        r, c = sum(g.rembg_stages_ms.values()), sum(g.cutq_stages_ms.values())
        rows[-2] += [f"{r:.1f}", f"{c:.1f}", f"{c / r:.2f}x"]
        rows[-1] += [f"{g.rembg_ms:.1f}", f"{g.cutq_ms:.1f}", f"{g.ratio:.2f}x"]
    parts += ["", _table(headers, rows), *(f"note: {n}" for n in result.notes)]
    return "\n".join(parts)


def summary(result: ModelResult) -> str:
    """One line per model: the photo ratio first, the large image after it."""
    parts = []
    for g in result.groups:
        if not parts:
            parts.append(f"{result.model}: cutq e2e {g.ratio:.2f}x rembg ({g.speedup:.2f}x faster) "
                         f"on {g.label.split(' photos')[0]} photos")
        else:
            parts.append(f"{g.ratio:.2f}x ({g.speedup:.2f}x faster) on the {g.label.split()[-1]} image")
    return "; ".join(parts)
