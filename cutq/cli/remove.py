"""`cutq remove`: cut backgrounds out of files, globs, folders or stdin."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from cutq_runtime import batch
from cutq_runtime.api import DEFAULT_MODEL, DEFAULT_PNG_LEVEL, RemoveOptions
from cutq_runtime.errors import shown_warnings
from cutq_runtime.session import SessionConfig, new_session

from .ui import CACHE_HELP, DownloadBar, err, errors_exit, file_progress

MODEL_HELP = "Variant name (u2net, u2netp, u2netp-int8, ...) or an .onnx/.ort path."
PIXELS_HELP = "Refuse images with more pixels, a decompression-bomb guard (default 89478485)."
PNG_HELP = "PNG compression 0-9: higher gives smaller files and takes longer; pixels are the same."
LOW_MEMORY_HELP = ("Free the model's working memory after each image, so a large photo's cut-out does not stack on it "
                   "(small devices; a little slower per image).")
STRICT_HELP = "Refuse a model this CPU may compute wrong masks with, instead of warning (also CUTQ_STRICT_CPU=1)."


def remove(
    inputs: Annotated[list[str], typer.Argument(help="Image files, globs or folders; '-' reads stdin.")],
    out: Annotated[str | None, typer.Option("-o", "--out", help="Output PNG for one input; '-' writes stdout.")] = None,
    out_dir: Annotated[str | None, typer.Option("--out-dir", help="Folder for <stem>.png outputs.")] = None,
    model: Annotated[str, typer.Option("--model", "-m", help=MODEL_HELP)] = DEFAULT_MODEL,
    only_mask: Annotated[bool, typer.Option("--only-mask", help="Write the 8-bit mask instead of the cut-out.")] = False,
    bgcolor: Annotated[str | None, typer.Option("--bgcolor", help="Flatten onto R,G,B,A instead of transparency.")] = None,
    threads: Annotated[int | None, typer.Option("--threads", help="onnxruntime threads (default: all cores).")] = None,
    max_pixels: Annotated[int | None, typer.Option("--max-pixels", help=PIXELS_HELP)] = None,
    png_level: Annotated[int, typer.Option("--png-level", min=0, max=9, help=PNG_HELP)] = DEFAULT_PNG_LEVEL,
    cache_dir: Annotated[Path | None, typer.Option("--cache-dir", help=CACHE_HELP)] = None,
    strict_cpu: Annotated[bool, typer.Option("--strict-cpu", help=STRICT_HELP)] = False,
    low_memory: Annotated[bool, typer.Option("--low-memory", help=LOW_MEMORY_HELP)] = False,
) -> None:
    """Remove backgrounds. Bad files are reported by name and skipped; the exit code is 1 if any failed."""
    with errors_exit():
        jobs = batch.plan(batch.expand_inputs(inputs), out, out_dir)
        options = RemoveOptions(only_mask, batch.parse_bgcolor(bgcolor), max_pixels, png_level)
        with shown_warnings(lambda text: err.print(f"[yellow]warning:[/yellow] {text}", markup=True, highlight=False)):
            session = new_session(model, cache_dir=cache_dir, config=SessionConfig(threads=threads, strict_cpu=strict_cpu,
                                                                                       low_memory=low_memory),
                                  progress=DownloadBar(f"Downloading {model}"))
    with file_progress() as progress:
        task = progress.add_task("Removing backgrounds", total=len(jobs))

        def report(job: batch.Job, error: str | None) -> None:
            if error:
                progress.console.print(f"[red]error:[/red] {error}", highlight=False)
            progress.advance(task)

        result = batch.run(jobs, session, options, report)
    if result.failed:
        err.print(f"{len(result.failed)} of {len(jobs)} failed")
        raise typer.Exit(1)
    if out_dir and len(jobs) > 1:
        err.print(f"{len(result.done)} cut-outs written to {out_dir}")
