"""Hand-written inline SVG charts for the HTML report: no JavaScript, no CDN, no plotting dependency.

Two shapes cover the report: a scatter (latency against mask fidelity, with the Pareto front drawn and
each point labelled) and horizontal bars (size, memory, time). Coordinates are rounded to 0.1 px so the
same results give the same bytes.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from html import escape

FONT = 'font-family="system-ui, sans-serif" font-size="12"'


@dataclass(frozen=True)
class Point:
    label: str
    x: float
    y: float
    y_low: float  # drawn as a whisker from y down to y_low (e.g. SSIM mean down to min)
    color: str


def _nice_max(value: float) -> float:
    """A round axis end at or above `value` (1, 2, 2.5 or 5 times a power of ten)."""
    if value <= 0:
        return 1.0
    power = 10 ** math.floor(math.log10(value))
    return next(m * power for m in (1, 2, 2.5, 5, 10) if m * power >= value)


def _n(value: float) -> str:
    return f"{value:.1f}".rstrip("0").rstrip(".")


def pareto_front(points: list[Point]) -> list[Point]:
    """Points no other point beats on both axes (faster and at least as faithful), left to right."""
    front, best = [], -math.inf
    for point in sorted(points, key=lambda p: (p.x, -p.y)):
        if point.y > best:
            front.append(point)
            best = point.y
    return front


def scatter(points: list[Point], title: str, x_label: str, y_label: str, width: int = 640, height: int = 400) -> str:
    left, right, top, bottom = 64, 24, 44, 48
    plot_w, plot_h = width - left - right, height - top - bottom
    x_max = _nice_max(max((p.x for p in points), default=1) * 1.05)
    y_min = min(min((p.y_low for p in points), default=0.9), 0.999)
    y_min = math.floor(y_min * 100) / 100 if y_min > 0.5 else 0.0
    y_span = max(1.0 - y_min, 1e-6)

    def sx(x: float) -> float:
        return left + plot_w * x / x_max

    def sy(y: float) -> float:
        return top + plot_h * (1.0 - (min(y, 1.0) - y_min) / y_span)

    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" {FONT} role="img">',
             f"<title>{escape(title)}</title>",
             f'<text x="{left}" y="20" font-size="14" font-weight="600">{escape(title)}</text>']
    for i in range(6):
        x, y = x_max * i / 5, y_min + y_span * i / 5
        parts.append(f'<line x1="{_n(sx(x))}" y1="{top}" x2="{_n(sx(x))}" y2="{top + plot_h}" stroke="#eee"/>')
        parts.append(f'<text x="{_n(sx(x))}" y="{top + plot_h + 16}" text-anchor="middle">{x:g}</text>')
        parts.append(f'<line x1="{left}" y1="{_n(sy(y))}" x2="{left + plot_w}" y2="{_n(sy(y))}" stroke="#eee"/>')
        parts.append(f'<text x="{left - 6}" y="{_n(sy(y) + 4)}" text-anchor="end">{y:.3f}</text>')
    parts.append(f'<rect x="{left}" y="{top}" width="{plot_w}" height="{plot_h}" fill="none" stroke="#999"/>')
    parts.append(f'<text x="{left + plot_w / 2}" y="{height - 8}" text-anchor="middle">{escape(x_label)}</text>')
    parts.append(f'<text transform="translate(14 {top + plot_h / 2}) rotate(-90)" text-anchor="middle">'
                 f"{escape(y_label)}</text>")
    front = pareto_front(points)
    if len(front) > 1:
        path = " ".join(f"{_n(sx(p.x))},{_n(sy(p.y))}" for p in front)
        parts.append(f'<polyline points="{path}" fill="none" stroke="#2a9d8f" stroke-dasharray="5 4" stroke-width="1.5"/>')
    placed: list[tuple[float, float, float, float]] = []
    for p in sorted(points, key=lambda p: (p.x, p.label)):
        x, y = sx(p.x), sy(p.y)
        parts.append(f'<line x1="{_n(x)}" y1="{_n(y)}" x2="{_n(x)}" y2="{_n(sy(p.y_low))}" stroke="{p.color}"/>')
        parts.append(f'<circle cx="{_n(x)}" cy="{_n(y)}" r="5" fill="{p.color}"><title>{escape(p.label)}: '
                     f"{p.x:.0f} ms, SSIM {p.y:.4f} (min {p.y_low:.4f})</title></circle>")
        tx, ty, anchor = _place_label(p.label, x, y, placed, (left, top, left + plot_w, top + plot_h))
        parts.append(f'<text x="{_n(tx)}" y="{_n(ty)}" text-anchor="{anchor}" fill="{p.color}">{escape(p.label)}</text>')
    parts.append("</svg>")
    return "\n".join(parts)


def _place_label(label: str, x: float, y: float, placed: list[tuple[float, float, float, float]],
                 plot: tuple[float, float, float, float]) -> tuple[float, float, str]:
    """The first spot beside a point (right, then left, then further down) that overlaps no earlier label."""
    width = 6.6 * len(label)  # about 12 px system-ui
    for dy in (4, 18, -10, 32, -24, 46, 60):
        for side in (1, -1):
            x0 = x + 8 if side == 1 else x - 8 - width
            box = (x0, y + dy - 11, x0 + width, y + dy + 3)
            inside = plot[0] <= box[0] and box[2] <= plot[2] and plot[1] <= box[1] and box[3] <= plot[3]
            if inside and not any(b[0] < box[2] and box[0] < b[2] and b[1] < box[3] and box[1] < b[3] for b in placed):
                placed.append(box)
                return (x + 8, y + dy, "start") if side == 1 else (x - 8, y + dy, "end")
    return x + 8, y + 4, "start"


def bars(items: list[tuple[str, float, str]], title: str, unit: str, width: int = 640) -> str:
    """Horizontal bars, one per (label, value, colour), in the given order, each with its value written."""
    label_w, bar_h, gap, top = 150, 20, 6, 36
    height = top + len(items) * (bar_h + gap) + 12
    v_max = max((v for _, v, _ in items), default=1) or 1
    plot_w = width - label_w - 90
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" {FONT} role="img">',
             f"<title>{escape(title)}</title>",
             f'<text x="0" y="20" font-size="14" font-weight="600">{escape(title)}</text>']
    for i, (label, value, color) in enumerate(items):
        y = top + i * (bar_h + gap)
        w = plot_w * value / v_max
        parts.append(f'<text x="{label_w - 8}" y="{y + 14}" text-anchor="end">{escape(label)}</text>')
        parts.append(f'<rect x="{label_w}" y="{y}" width="{_n(max(w, 1))}" height="{bar_h}" fill="{color}"/>')
        parts.append(f'<text x="{_n(label_w + w + 6)}" y="{y + 14}">{value:,.1f} {escape(unit)}</text>')
    parts.append("</svg>")
    return "\n".join(parts)
