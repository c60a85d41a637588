"""`cutq serve`: the runtime's HTTP server (cutq_runtime.serve); its options are defined once, there."""

from __future__ import annotations

import typer

SETTINGS = {"allow_extra_args": True, "ignore_unknown_options": True, "help_option_names": []}


def serve(ctx: typer.Context) -> None:
    """Serve variants over HTTP: rembg's /api/remove, cutq's /v1 API, health, metrics and a web page at /.

    `cutq serve --help` lists the options (--model NAME, repeatable; --host; --port; --max-concurrency; ...)."""
    from cutq_runtime.serve import main

    raise typer.Exit(main(ctx.args, prog="cutq serve"))
