"""Shared console helpers: one place that turns `CutqError` into a clean message and draws progress."""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Iterator

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

err = Console(stderr=True, soft_wrap=True)  # one line per message, even in a log file 80 columns would wrap


def table_console() -> Console:
    """Console for result tables: the terminal's width, or wide enough for every column when piped to a file."""
    return Console(width=None if sys.stdout.isatty() else 200)
CACHE_HELP = "Model cache folder (default: $CUTQ_HOME or ~/.cache/cutq)."


@contextlib.contextmanager
def errors_exit(code: int = 2) -> Iterator[None]:
    """Print a `CutqError` as `error: ...` and exit with `code`, instead of a traceback."""
    try:
        yield
    except CutqError as exc:
        err.print(f"[red]error:[/red] {escape(str(exc))}", highlight=False)
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
