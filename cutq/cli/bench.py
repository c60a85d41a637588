"""`cutq bench`: every variant compared in one run (speed, size, memory, fidelity), as tables and reports."""

from __future__ import annotations

import dataclasses
import shlex
import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from cutq.benchmarks import html_report, markdown
from cutq.benchmarks.harness import QUICK, BenchConfig, run
from cutq.benchmarks.results import BenchReport
from cutq.benchmarks.tables import QUALITY, SPEED, Column, cells
from cutq_runtime import models
from cutq_runtime.errors import OutputError
from cutq_runtime.fsutil import atomic_write_bytes

from .ui import CACHE_HELP, err, errors_exit, table_console

EVAL_HELP = "Photos (images/) with ground-truth masks (masks/<stem>.png). Default: ../shared/data/davis-val if present."


def _amount(flag: str, text: str, minimum: int = 1) -> typer.models.OptionInfo:
    """An option overriding one of BenchConfig's amounts; its help shows the default and the --quick value."""
    field = flag.removeprefix("--").replace("-", "_")
    return typer.Option(flag, min=minimum, help=f"{text} (default {getattr(BenchConfig, field)}, --quick {QUICK[field]}).")


def bench(
    all_: Annotated[bool, typer.Option("--all", help="Every model in the cache: FP32, INT8, pruned; rembg if present.")] = False,
    model: Annotated[list[str] | None, typer.Option("--model", "-m", help="Variant name or .onnx/.ort path; repeatable.")] = None,
    quick: Annotated[bool, typer.Option("--quick", help="A few photos and runs: a first look in a few minutes.")] = False,
    eval_dir: Annotated[Path | None, typer.Option("--eval-dir", help=EVAL_HELP)] = None,
    eval_count: Annotated[int | None, _amount("--eval-count", "Photos for quality")] = None,
    timing_count: Annotated[int | None, _amount("--timing-count", "Photos for timing")] = None,
    runs: Annotated[int | None, _amount("--runs", "Timed session runs per variant")] = None,
    warmup: Annotated[int | None, _amount("--warmup", "Untimed session runs first", minimum=0)] = None,
    repeats: Annotated[int | None, _amount("--repeats", "Passes for e2e and throughput")] = None,
    seed: Annotated[int, typer.Option("--seed", help="Seeds the interleaving order.")] = 0,
    rss: Annotated[bool, typer.Option("--rss/--no-rss", help="Peak memory, one process per variant.")] = True,
    rembg: Annotated[bool, typer.Option("--rembg/--no-rembg", help="rembg rows, when rembg is installed.")] = True,
    pull: Annotated[bool, typer.Option("--pull/--no-pull", help="Download missing released models.")] = True,
    json_path: Annotated[Path | None, typer.Option("--json", help="Write the results as JSON.")] = None,
    markdown_path: Annotated[Path | None, typer.Option("--markdown", help="Write the README tables.")] = None,
    html_path: Annotated[Path | None, typer.Option("--html", help="Write a self-contained HTML report.")] = None,
    cache_dir: Annotated[Path | None, typer.Option("--cache-dir", help=CACHE_HELP)] = None,
) -> None:
    """Measure every variant on this machine in one interleaved run: size, latency, end to end, memory, quality.

    Missing variants are skipped with a note. Compare the ratios: absolute times depend on the machine's load.
    """
    with errors_exit():
        if eval_dir is not None and not eval_dir.is_dir():
            raise OutputError(f"{eval_dir}: --eval-dir is not a folder")
        preset = QUICK if quick else {}
        overrides = {"eval_count": eval_count, "timing_count": timing_count, "runs": runs, "warmup": warmup,
                     "repeats": repeats}
        cfg = BenchConfig(cache=models.cache_dir(cache_dir), models=tuple(model or ()), everything=all_ or not model,
                          eval_dir=eval_dir, seed=seed, rss=rss, rembg=rembg, pull=pull, **preset)
        cfg = dataclasses.replace(cfg, **{k: v for k, v in overrides.items() if v is not None})
        with err.status("Benchmarking") as status:
            report = run(cfg, progress=lambda message: status.update(f"Benchmarking: {message}"))
        command = shlex.join(["cutq", *sys.argv[1:]]) if sys.argv[1:2] == ["bench"] else "cutq bench"
        outputs = {json_path: report.to_json, markdown_path: lambda: markdown.render(report, command),
                   html_path: lambda: html_report.render(report, command)}
        for path, text in outputs.items():
            if path is not None:
                _write(path, text())
    print_report(report)


def _write(path: Path, text: str) -> None:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(path, text.encode())
    except OSError as exc:
        raise OutputError(f"{path}: cannot write ({exc.strerror or exc})") from exc
    err.print(f"wrote {path}", markup=False)


def _rich_table(report: BenchReport, columns: tuple[Column, ...], title: str) -> Table:
    headers, rows = cells(report, columns)
    table = Table(title=title)
    for column, header in zip(columns, headers, strict=True):
        table.add_column(header, justify="left" if column is columns[0] else "right", overflow="fold")
    for row in rows:
        table.add_row(*row)
    return table


def print_report(report: BenchReport) -> None:
    console = table_console()
    console.print(_rich_table(report, SPEED, "Speed, size and memory"))
    console.print(_rich_table(report, QUALITY, "Mask quality (vs FP32 at 320x320; GT = ground truth)"))
    for line in markdown.key_ratios(report):
        console.print(line, highlight=False, markup=False)
    for note in report.notes:
        err.print(f"[yellow]note:[/yellow] {note}", highlight=False)
    load = (report.machine.get("load_average_start"), report.machine.get("load_average_end"))
    err.print(f"{report.duration_s:.0f} s; load average {load[0]} -> {load[1]} on {report.machine['cores']} cores")
