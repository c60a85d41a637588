"""The result of `cutq bench`: one row per variant plus the machine, as written to `--json` (schema 1).

Renderers (terminal, Markdown, HTML) read only these types. Fields are None when not measured (no ground
truth, `--no-rss`, an `.ort` file onnx cannot parse, no FP32 reference). Keep names stable: README tables
and users' scripts read them; add fields rather than rename them, and bump `SCHEMA` when one must change.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from typing import Any

SCHEMA = 1


@dataclass
class VariantRow:
    name: str
    kind: str  # fp32, int8, pruned, pruned-int8, rembg, other
    engine: str  # cutq or rembg
    reference: str | None  # the FP32 model the "vs FP32" figures compare with
    file: str
    size_bytes: int
    params: int | None = None
    gmac: float | None = None  # multiply-accumulates of the Convs at 320x320, in billions
    load_ms: float | None = None
    latency_p50_ms: float | None = None  # session run, all cores
    latency_p95_ms: float | None = None
    latency_1t_p50_ms: float | None = None  # session run, one thread
    latency_1t_p95_ms: float | None = None
    e2e_ms: float | None = None  # mean per image, bytes in to PNG bytes out
    e2e_p50_ms: float | None = None
    throughput_ips: float | None = None  # images per second over a folder run
    peak_rss_mb: float | None = None  # separate process: load, remove the timing photos
    imports_rss_mb: float | None = None  # the same process after imports, before loading the model
    ssim_vs_fp32_min: float | None = None
    ssim_vs_fp32_mean: float | None = None
    mae_vs_fp32: float | None = None
    gt_mae: float | None = None
    gt_iou: float | None = None
    gt_max_fbeta: float | None = None
    gt_s_measure: float | None = None
    gt_images: int | None = None
    size_vs_fp32: float | None = None  # ratios to the reference row, measured in this run
    latency_vs_fp32: float | None = None
    latency_1t_vs_fp32: float | None = None
    e2e_vs_fp32: float | None = None
    e2e_vs_rembg: float | None = None  # e2e time / rembg's on the same FP32 model; below 1 is faster
    peak_rss_vs_rembg: float | None = None


@dataclass
class Grid:
    """Cut-out thumbnails for the HTML report (JPEG bytes), never written to JSON."""

    labels: list[str] = field(default_factory=list)
    photos: list[bytes] = field(default_factory=list)
    cutouts: dict[str, list[bytes]] = field(default_factory=dict)


@dataclass
class BenchReport:
    machine: dict[str, Any]
    config: dict[str, Any]
    images: dict[str, Any]
    variants: list[VariantRow]
    notes: list[str]
    duration_s: float = 0.0
    grid: Grid = field(default_factory=Grid)

    def to_json(self) -> str:
        payload = {"schema": SCHEMA, "machine": self.machine, "config": self.config, "images": self.images,
                   "variants": [asdict(v) for v in self.variants], "notes": self.notes,
                   "duration_s": round(self.duration_s, 1)}
        return json.dumps(payload, indent=2, default=str) + "\n"
