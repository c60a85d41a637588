"""The `cutq` command line. Each command is a thin layer: parse, call the library, print."""

from __future__ import annotations

import typer

from . import bench, models, prune, quantize, remove, serve

app = typer.Typer(
    help="Quantize, prune, benchmark and run U²-Net background removal on CPU.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
app.command("remove")(remove.remove)
app.command("quantize")(quantize.quantize)
app.command("prune")(prune.prune)
app.command("bench")(bench.bench)
app.command("serve", context_settings=serve.SETTINGS, add_help_option=False)(serve.serve)
app.add_typer(models.app, name="models")


def main() -> None:
    app()
