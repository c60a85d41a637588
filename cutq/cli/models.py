"""`cutq models`: list, pull, locate and import models in the cache."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from cutq_runtime import cpu, models

from .ui import CACHE_HELP, DownloadBar, errors_exit, table_console

app = typer.Typer(help="List, download and import models.", no_args_is_help=True)
CacheOpt = Annotated[Path | None, typer.Option("--cache-dir", help=CACHE_HELP)]


@app.command("list")
def list_(cache_dir: CacheOpt = None) -> None:
    """Released models (downloaded or not) and every variant in the cache, with the CPUs each runs exactly on."""
    with errors_exit():
        rows = models.list_models(models.cache_dir(cache_dir))
    table = Table("name", "kind", "size", "CPUs", "location", "description")
    for info in rows:
        size = f"{info.size_bytes / 1e6:.1f} MB" if info.size_bytes else "-"
        cpus = cpu.LABELS[info.cpus] + ("" if info.exact_here else " [red](not here)[/red]")
        table.add_row(info.name, info.kind, size, cpus, str(info.path) if info.path else "[dim]not downloaded[/dim]",
                      info.description)
    console = table_console()
    console.print(table)
    if not all(info.exact_here for info in rows):
        console.print(f"[red](not here)[/red] {cpu.NOT_HERE}", highlight=False)


@app.command()
def pull(name: Annotated[str, typer.Argument(help="u2net or u2netp")], cache_dir: CacheOpt = None) -> None:
    """Download a released model into the cache (reusing rembg's copy if it has one) and verify it."""
    with errors_exit():
        print(models.pull(name, models.cache_dir(cache_dir), DownloadBar(f"Downloading {name}")))


@app.command()
def path(name: Annotated[str, typer.Argument(help="Variant name.")], cache_dir: CacheOpt = None) -> None:
    """Print the verified file behind a model name, pulling it if missing."""
    with errors_exit():
        print(models.resolve(name, models.cache_dir(cache_dir), progress=DownloadBar(f"Downloading {name}")).path)


@app.command("import")
def import_(
    file: Annotated[Path, typer.Argument(help=".onnx or .ort file.")],
    name: Annotated[str, typer.Option("--name", help="Name to use with --model.")],
    base: Annotated[str | None, typer.Option("--base", help="Released model whose preprocessing it uses.")] = None,
    cache_dir: CacheOpt = None,
) -> None:
    """Copy a model file into the cache under NAME with a manifest, so `--model NAME` works everywhere."""
    with errors_exit():
        print(models.import_model(file, name, models.cache_dir(cache_dir), base=base))
