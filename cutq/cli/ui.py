"""Shared console helpers: one place that turns `CutqError` into a clean message and draws progress."""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Iterator
from typing import Any

import typer
from rich.console import Console
from rich.markup import escape
from rich.progress import (
    BarColumn,
    DownloadColumn,
    MofNCompleteColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeRemainingColumn,
    TransferSpeedColumn,
)

from cutq_runtime.errors import CutqError
from cutq_runtime.flags import RUNTIME_FLAGS, for_cli

err = Console(stderr=True, soft_wrap=True, emoji=False)  # one line per message, even in a log file 80 columns would wrap


def table_console() -> Console:
    """Console for result tables: the terminal's width, or wide enough for every column when piped to a file."""
    return Console(width=None if sys.stdout.isatty() else 200)


CACHE_HELP = "Model cache (default: $CUTQ_HOME or ~/.cache/cutq)."

# The library's settings as `cutq`'s flags spell them, for its error messages (`cutq_runtime.flags`).
FLAGS = {
    **RUNTIME_FLAGS,
    "ratio": "--ratio",
    "narrow_fraction": "--narrow-fraction",
    "min_outputs": "--whole-below",
    "spare": "--spare",
    "min_channels": "--min-channels",
    "calib_count": "--calib-count",
    "verify_count": "--verify-count",
    "samples": "--samples",
    "ridge": "--ridge",
    "target_ssim": "--target-ssim",
    "max_float_nodes": "--max-float-nodes",
    "tensor_headroom": "--tensor-headroom",
    "min_weights": "--int4-min-weights",  # PackConfig's; LowRankConfig's is not a flag and not in its messages
    "EqualizeConfig.enabled": "--no-equalize",
    "lr": "--lr",
    "epochs": "--epochs",
    "batch_size": "--batch-size",
    "threads": "--threads",
    "train_count": "--train-count",
    "keep_worse": "--keep-worse",
}


def cli_text(message: str) -> str:
    """A library message with its settings named as `cutq`'s flags."""
    return for_cli(message, FLAGS)


def option(*names: str, help: str, metavar: str | None = None, panel: str | None = None, hidden: bool = False) -> Any:
    """A `typer.Option` for the pipeline commands, whose help must fit a screen: no default or range column (the
    help text states the defaults that matter; the library checks the values and names them in its errors)."""
    return typer.Option(*names, help=help, metavar=metavar, rich_help_panel=panel, show_default=False, hidden=hidden)


@contextlib.contextmanager
def errors_exit(code: int = 2) -> Iterator[None]:
    """Print a `CutqError` as `error: ...` and exit with `code`, instead of a traceback."""
    try:
        yield
    except CutqError as exc:
        err.print(f"[red]error:[/red] {escape(cli_text(str(exc)))}", highlight=False)
        raise typer.Exit(code) from None


class DownloadBar:
    """A rich progress bar behind the runtime's `progress(done, total)` callback."""

    def __init__(self, label: str) -> None:
        self.progress = Progress(
            TextColumn(escape(label).replace("{", "{{").replace("}", "}}")),  # a model path may hold [ ] or { }
            BarColumn(), DownloadColumn(), TransferSpeedColumn(), TimeRemainingColumn(),
            console=err, transient=True, disable=not sys.stderr.isatty(),
        )
        self.task: TaskID | None = None

    def __call__(self, done: int, total: int) -> None:
        if self.task is None:
            self.progress.start()
            self.task = self.progress.add_task("", total=total or None)
        self.progress.update(self.task, completed=done)
        if total and done >= total:
            self.progress.stop()


def file_progress() -> Progress:
    return Progress(
        TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
        console=err, disable=not sys.stderr.isatty(),
    )
