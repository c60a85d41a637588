"""`--markdown PATH`: the tables the README shows, with the machine and the command that produced them."""

from __future__ import annotations

from .machine import describe
from .results import BenchReport
from .tables import QUALITY, SPEED, markdown_table


def key_ratios(report: BenchReport) -> list[str]:
    """Plain sentences for the headline figures: each derived variant against its FP32 model and rembg."""
    lines = []
    for row in report.variants:
        if row.engine != "cutq" or row.reference in (None, row.name):
            continue
        parts = []
        if row.size_vs_fp32 is not None:
            parts.append(f"{row.size_vs_fp32:.2f}x the size")
        if row.latency_vs_fp32 is not None:
            parts.append(f"{row.latency_vs_fp32:.2f}x the session latency")
        if row.ssim_vs_fp32_min is not None:
            parts.append(f"mask SSIM min {row.ssim_vs_fp32_min:.3f}")
        if row.e2e_vs_rembg is not None:
            ratio = row.e2e_vs_rembg
            parts.append(f"{1 / ratio:.1f}x faster than rembg end to end" if ratio < 1
                         else f"{ratio:.2f}x rembg's end-to-end time (slower)")
        lines.append(f"- `{row.name}` vs `{row.reference}`: " + ", ".join(parts))
    return lines


def _unseen(images: dict) -> str:
    avoided = images.get("calibration_scenes_avoided") or []
    return f"; none from the {len(avoided)} scenes the variants were calibrated on" if avoided else ""


def render(report: BenchReport, command: str = "cutq bench --all") -> str:
    machine = report.machine
    load = f"load average {machine.get('load_average_start')} -> {machine.get('load_average_end')}"
    images = report.images
    parts = [
        f"Measured with `{command}` on {describe(machine)} ({load}); {len(images['eval'])} photos from "
        f"`{images['eval_dir'].rsplit('/', 1)[-1]}` for quality ({images['ground_truth']} with ground truth"
        f"{_unseen(images)}), "
        f"{len(images['timing'])} of them for timing; {report.duration_s:.0f} s in total. "
        "Compare ratios, not milliseconds: absolute times depend on the machine and its load.",
        "",
        "**Speed, size and memory** (latency = one session run; e2e = bytes in to PNG bytes out)",
        "",
        markdown_table(report, SPEED),
        "",
        "**Mask quality** (SSIM/MAE vs the variant's FP32 model at 320x320; GT = against the ground-truth masks)",
        "",
        markdown_table(report, QUALITY),
    ]
    ratios = key_ratios(report)
    if ratios:
        parts += ["", *ratios]
    if report.notes:
        parts += ["", *(f"- note: {note}" for note in report.notes)]
    return "\n".join(parts) + "\n"
