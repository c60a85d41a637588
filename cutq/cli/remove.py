"""`cutq remove`: cut backgrounds out of files, globs, folders or stdin."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape

from cutq_runtime import batch, models
from cutq_runtime.api import DEFAULT_MODEL, DEFAULT_PNG_LEVEL, RemoveOptions
from cutq_runtime.errors import CutqError, shown_warnings
from cutq_runtime.session import new_session

from .ui import CACHE_HELP, DownloadBar, cli_text, err, errors_exit, file_progress

MODEL_HELP = "Variant name (u2net, u2netp, u2netp-int8, ...) or an .onnx/.ort path."
PIXELS_HELP = "Refuse images with more pixels, a decompression-bomb guard (default 89478485; also CUTQ_MAX_PIXELS)."
BYTES_HELP = "Refuse files (and stdin) over this many bytes before reading them (default 268435456; also CUTQ_MAX_BYTES)."
PNG_HELP = "PNG compression 0-9: higher gives smaller files and takes longer; pixels are the same."
LOW_MEMORY_HELP = ("Free the model's working memory after each image, so a large photo's cut-out does not stack on it "
                   "(small devices; a little slower per image).")
STRICT_HELP = "Refuse a model this CPU may compute wrong masks with, instead of warning (also CUTQ_STRICT_CPU=1)."
WORKERS_HELP = ("Inferences at once, sharing one model, while other photos are decoded and encoded (default: one per "
                "core, at most 4; threads each: cores / workers, unless --threads). 1 uses the least memory.")
RESUME_HELP = ("With --out-dir: skip inputs an earlier run into the same folder finished with the same model and options "
               "(its ledger, .cutq-ledger.jsonl, is there). --no-resume does every input again.")
REPORT_HELP = "Write one JSON line per failed input, with its reason, to this file."
ENGINE_HELP = ("local: this machine. ray: a Ray cluster (make setup EXTRAS=dev,ray, or pip install 'cutq\\[ray]'); "
               "--address joins one, else a local one.")


def remove(
    inputs: Annotated[list[str], typer.Argument(help="Image files, globs or folders; '-' reads stdin.")],
    out: Annotated[str | None, typer.Option("-o", "--out", help="Output PNG for one input; '-' writes stdout.")] = None,
    out_dir: Annotated[str | None, typer.Option("--out-dir", help="Folder for <stem>.png outputs.")] = None,
    model: Annotated[str, typer.Option("--model", "-m", help=MODEL_HELP)] = DEFAULT_MODEL,
    only_mask: Annotated[bool, typer.Option("--only-mask", help="Write the 8-bit mask instead of the cut-out.")] = False,
    bgcolor: Annotated[str | None, typer.Option("--bgcolor", help="Flatten onto R,G,B,A instead of transparency.")] = None,
    threads: Annotated[int | None, typer.Option("--threads", help="onnxruntime threads (default: all cores).")] = None,
    max_pixels: Annotated[int | None, typer.Option("--max-pixels", min=1, help=PIXELS_HELP)] = None,
    max_bytes: Annotated[int | None, typer.Option("--max-bytes", min=1, help=BYTES_HELP)] = None,
    png_level: Annotated[int, typer.Option("--png-level", min=0, max=9, help=PNG_HELP)] = DEFAULT_PNG_LEVEL,
    cache_dir: Annotated[Path | None, typer.Option("--cache-dir", help=CACHE_HELP)] = None,
    strict_cpu: Annotated[bool, typer.Option("--strict-cpu", help=STRICT_HELP)] = False,
    low_memory: Annotated[bool, typer.Option("--low-memory", help=LOW_MEMORY_HELP)] = False,
    workers: Annotated[int | None, typer.Option("--workers", min=1, help=WORKERS_HELP)] = None,
    resume: Annotated[bool, typer.Option("--resume/--no-resume", help=RESUME_HELP)] = True,
    report_file: Annotated[Path | None, typer.Option("--report", help=REPORT_HELP)] = None,
    engine: Annotated[str, typer.Option("--engine", help=ENGINE_HELP)] = "local",
    address: Annotated[str | None, typer.Option("--address", help="Ray cluster address (with --engine ray).")] = None,
) -> None:
    """Remove backgrounds. Bad files are reported by name and skipped; the exit code is 1 if any failed.

    Folder runs can be interrupted and run again: finished inputs are skipped (see --resume)."""
    with errors_exit():
        if engine not in ("local", "ray"):
            raise CutqError(f"--engine '{engine}': expected local or ray")
        jobs = batch.plan(batch.expand_inputs(inputs), out, out_dir)
        options = RemoveOptions(only_mask, batch.parse_bgcolor(bgcolor), max_pixels, png_level, max_bytes)
        workers, session_config = batch.session_config(workers, threads, strict_cpu=strict_cpu, low_memory=low_memory)
        download = DownloadBar(f"Downloading {model}")
        if engine == "ray":  # the actors load the model; the driver only needs its file, for the ledger's key
            session, model_path = None, models.resolve(model, models.cache_dir(cache_dir), progress=download).path
        else:
            with shown_warnings(lambda text: err.print(f"[yellow]warning:[/yellow] {escape(text)}", highlight=False)):
                session = new_session(model, cache_dir=cache_dir, progress=download, config=session_config)
            model_path = session.model.path
        ledger = batch.open_ledger(jobs, out_dir, batch.settings_key(str(model_path), options), resume)
    with file_progress() as progress:
        task = progress.add_task("Removing backgrounds", total=len(jobs))

        def report(job: batch.Job, error: str | None) -> None:
            if error:
                progress.console.print(f"[red]error:[/red] {escape(cli_text(error))}", highlight=False)
            progress.advance(task)

        try:
            if engine == "ray":
                from cutq.engines.ray_engine import RayConfig
                from cutq.engines.ray_engine import run as run_ray

                config = RayConfig(address=address, threads_per_actor=session_config.threads or 1, strict_cpu=strict_cpu,
                                   low_memory=low_memory)
                result = run_ray(jobs, model, options, config, ledger, report, cache_dir=cache_dir)
            else:
                result = batch.run(jobs, session, options, report, workers=workers, ledger=ledger)
        finally:
            if ledger is not None:
                ledger.close()
        progress.advance(task, len(result.skipped))
    if report_file is not None:
        result.write_report(str(report_file))
    _summary(result, len(jobs), out_dir)


def _summary(result: batch.BatchResult, total: int, out_dir: str | None) -> None:
    if out_dir and total > 1:
        skipped = f", {len(result.skipped)} already done (skipped)" if result.skipped else ""
        err.print(f"{len(result.done)} cut-outs written to {out_dir}{skipped}, {len(result.failed)} failed", markup=False)
    if result.failed:
        err.print(f"{len(result.failed)} of {total} failed")
        raise typer.Exit(1)
