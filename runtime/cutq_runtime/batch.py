"""Many inputs -> many cut-outs: expanding files, globs and folders, planning outputs, running, reporting.

Both command lines (`python -m cutq_runtime` and `cutq`) use this; they differ only in how they draw
progress. A bad file is reported by name and skipped; nothing is written for it.

`run` keeps `max(2, workers)` images in flight on threads that share one session, `workers` of them in the
model at once: while one image is in the model, the others are read, decoded, resized, composited and
PNG-encoded (Pillow, zlib and ONNX Runtime all release the GIL). Nothing more is held, so memory stays flat on
a folder of any size. With a
`Ledger` (folder runs), finished inputs are skipped and every output is committed exactly once (ledger.py).
"""

from __future__ import annotations

import contextlib
import ctypes
import glob
import hashlib
import json
import os
import stat
import sys
import threading
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import BinaryIO

from . import images
from . import ledger as ledgers
from .api import RemoveOptions, remove
from .cpu import usable_cores
from .errors import CutqError, ImageError, OutputError
from .fsutil import atomic_write_bytes
from .session import Session, SessionConfig

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".webp", ".bmp", ".tif", ".tiff", ".gif", ".jfif", ".ppm"}
STDIO = "-"


@dataclass(frozen=True)
class Job:
    """One input and where its result goes (`-` is stdin or stdout)."""

    source: str
    target: str


@dataclass
class BatchResult:
    done: list[Job] = field(default_factory=list)
    failed: list[tuple[Job, str]] = field(default_factory=list)
    skipped: list[Job] = field(default_factory=list)  # finished by an earlier run (resume)

    def write_report(self, path: str) -> None:
        """The failure report: one JSON line per failed input with its reason (an empty file when none failed)."""
        lines = "".join(json.dumps({"source": j.source, "target": j.target, "error": e}) + "\n" for j, e in self.failed)
        atomic_write_bytes(path, lines.encode())


def settings_key(model: str, options: RemoveOptions) -> str:
    """What must match for a resumed run to keep an earlier output: the model file (path, size and time, when
    `model` is a file) and the options."""
    stamp = ledgers.fingerprint(model) if os.path.isfile(model) else ""
    text = json.dumps({"model": model, "stamp": stamp, **asdict(options)}, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def expand_inputs(patterns: Sequence[str]) -> list[str]:
    """Files as given, globs expanded, folders to their image files (sorted, not recursive); `-` kept.

    A name that exists is taken as it is, even with glob characters (`glob_[1].png`). A pattern that matches
    nothing and a folder that cannot be listed stay in the list as they are, so that reading them fails with
    the reason, named, while the other inputs go on."""
    found: list[str] = []
    for pattern in patterns:
        if pattern == STDIO or (os.path.lexists(pattern) and not os.path.isdir(pattern)):
            found.append(pattern)
        elif os.path.isdir(pattern):
            try:
                found += sorted(str(p) for p in Path(pattern).iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
            except OSError:
                found.append(pattern)
        elif glob.has_magic(pattern):
            matches = sorted(m for m in glob.glob(pattern, recursive=True) if os.path.isfile(m))
            found += matches or [pattern]
        else:
            found.append(pattern)
    seen: set[str] = set()
    return [p for p in found if not (p in seen or seen.add(p))]  # type: ignore[func-returns-value]


def plan(inputs: Sequence[str], out: str | None, out_dir: str | None) -> list[Job]:
    """Pair inputs with outputs; refuse anything that would overwrite an input or write two results to one file."""
    if not inputs:
        raise CutqError("no input images")
    if (out is None) == (out_dir is None):
        raise CutqError("give exactly one of `out` (a file) or `out_dir` (a folder)")
    if out is not None:
        if len(inputs) > 1:
            raise CutqError(f"{len(inputs)} inputs but one output file: use `out_dir` (a folder) for several inputs")
        jobs = [Job(inputs[0], out)]
    else:
        assert out_dir is not None
        if os.path.lexists(out_dir) and not os.path.isdir(out_dir):
            raise OutputError(f"`out_dir` {out_dir}: is a file, not a folder")
        try:
            os.makedirs(out_dir, exist_ok=True)
        except OSError as exc:
            raise OutputError(f"`out_dir` {out_dir}: cannot make that folder ({exc.strerror or exc})") from exc
        jobs = [Job(src, os.path.join(out_dir, f"{'stdin' if src == STDIO else Path(src).stem}.png")) for src in inputs]
    sources = {os.path.realpath(j.source) for j in jobs if j.source != STDIO}
    targets: dict[str, str] = {}
    for job in jobs:
        if job.target == STDIO:
            continue
        real = os.path.realpath(job.target)
        if real in sources:
            raise OutputError(f"{job.target}: would overwrite an input; choose another output")
        if real in targets:
            raise OutputError(f"{targets[real]} and {job.source} would both be written to {job.target}")
        targets[real] = job.source
    return jobs


def run(jobs: Sequence[Job], session: Session, options: RemoveOptions,
        on_result: Callable[[Job, str | None], None] | None = None, *, workers: int = 1,
        ledger: ledgers.Ledger | None = None) -> BatchResult:
    """Process jobs with `max(2, workers)` images in flight; `on_result(job, error_or_None)` is called after each
    one, in the caller's thread. With a ledger, inputs it lists as finished are skipped (and reported as skipped).

    How many of them are in the model at once is the session's `parallel_runs` (the CLIs set it to `workers`):
    with one worker, one inference uses every core while the other image is decoded or encoded."""
    result = BatchResult()
    todo: list[Job] = []
    for job in jobs:
        if ledger is not None and job.source != STDIO and ledger.finished(job.source, job.target):
            result.skipped.append(job)
        else:
            todo.append(job)
    if ledger is not None:
        ledgers.remove_stale_temps([j.target for j in todo if j.target != STDIO])

    def finish(job: Job, error: str | None) -> None:
        (result.done.append(job) if error is None else result.failed.append((job, error)))
        if on_result:
            on_result(job, error)

    in_flight = 1 if len(todo) <= 1 else max(2, workers)
    budget = PixelBudget(PAIR_PIXELS) if workers == 1 else None
    if in_flight == 1:
        for job in todo:
            finish(job, _run_one(job, session, options, ledger))
        return result
    pending: dict[Future, Job] = {}
    with ThreadPoolExecutor(in_flight, thread_name_prefix="cutq-batch") as pool:
        for job in todo:
            if len(pending) >= in_flight:  # bounded: at most `in_flight` images held at once
                finished, _ = wait(pending, return_when=FIRST_COMPLETED)
                for future in finished:
                    finish(pending.pop(future), future.result())
            pending[pool.submit(_run_one, job, session, options, ledger, budget)] = job
        for future in list(pending):
            finish(pending.pop(future), future.result())
    return result


PAIR_PIXELS = 4_000_000
"""With one worker, a second photo is decoded beside the one in the model only if both together have at most
this many pixels: two davis-size (0.4 MP) photos overlap, a 12 MP photo is alone. Each megapixel in flight
holds about 10 MB (RGB, mask, RGBA and PNG), so the pair stays within about 1.1x one cut-out's memory."""


def share_one_heap() -> None:
    """Make glibc's malloc serve every thread from one heap. By default each thread gets its own, which keeps what
    that thread freed: with one worker, a 12 MP photo's buffers then stayed allocated once per thread, and a folder
    run peaked at 1.26x a single cut-out instead of 1.05x (same speed). Process-wide, so only the command lines'
    `session_config` calls it; a no-op where malloc is not glibc's."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None).mallopt(-8, 1)  # M_ARENA_MAX = 1


class PixelBudget:
    """At most `limit` decoded pixels in flight; one photo always fits, however large."""

    def __init__(self, limit: int) -> None:
        self.limit, self.used = limit, 0
        self._changed = threading.Condition()

    @contextlib.contextmanager
    def hold(self, pixels: int) -> Iterator[None]:
        with self._changed:  # a waiting thread holds nothing, so the holders always finish and wake it
            self._changed.wait_for(lambda: self.used == 0 or self.used + pixels <= self.limit)
            self.used += pixels
        try:
            yield
        finally:
            with self._changed:
                self.used -= pixels
                self._changed.notify_all()


def _run_one(job: Job, session: Session, options: RemoveOptions, ledger: ledgers.Ledger | None = None,
             budget: PixelBudget | None = None) -> str | None:
    error = process_one(job, session, options, ledger, budget)
    if error is not None and ledger is not None and job.source != STDIO:
        ledger.fail(job.source, job.target, error)
    return error


def process_one(job: Job, session: Session, options: RemoveOptions, ledger: ledgers.Ledger | None = None,
                budget: PixelBudget | None = None) -> str | None:
    """Read, cut out and write one job; the error message, or None. Never raises: one odd file must not stop a run.
    With a `budget`, the photo waits until its pixels fit beside the others in flight."""
    try:
        limit = options.max_bytes or images.max_bytes_default()
        if job.source == STDIO:
            stamp, data = None, read_capped(sys.stdin.buffer, "stdin", limit)
        else:
            stamp, data = read_input(job.source, limit)
        with budget.hold(images.header_pixels(data)) if budget else contextlib.nullcontext():
            png = remove(data, session, source=job.source, options=options)
        if job.target == STDIO:
            sys.stdout.buffer.write(png)
            sys.stdout.buffer.flush()
        elif ledger is not None:
            ledger.commit(job.source, job.target, ledgers.write_temp(job.target, png), stamp)
        else:
            atomic_write_bytes(job.target, png)
    except CutqError as exc:
        return str(exc)
    except OSError as exc:
        return f"{job.target if job.target != STDIO else job.source}: {exc.strerror or exc}"
    except MemoryError:
        return f"{job.source}: out of memory (lower `max_pixels`, or set `workers` to 1)"
    except Exception as exc:  # noqa: BLE001 - one odd file must not stop a folder run
        return f"{job.source}: unexpected {type(exc).__name__}: {exc}"
    return None


_KINDS = ((stat.S_ISFIFO, "a FIFO"), (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"),
          (stat.S_ISSOCK, "a socket"), (stat.S_ISDIR, "a folder"))


def read_input(path: str, limit: int) -> tuple[str, bytes]:
    """A regular file's fingerprint and bytes, at most `limit` of them. Anything else is refused before it is
    opened (a FIFO would block the run forever, /dev/zero never ends); the file is then opened non-blocking and
    checked again, in case it was swapped for one between the two looks."""
    try:
        info = os.stat(path)
    except OSError as exc:
        reason = "no file matches this pattern" if glob.has_magic(path) and not os.path.lexists(path) else exc.strerror
        raise CutqError(f"{path}: cannot read ({reason or exc})") from exc
    _require_regular(path, info)
    images.check_bytes(info.st_size, path, limit)
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_NOCTTY", 0))
    except OSError as exc:
        raise CutqError(f"{path}: cannot read ({exc.strerror or exc})") from exc
    with os.fdopen(fd, "rb") as handle:
        opened = os.fstat(handle.fileno())
        _require_regular(path, opened)
        return ledgers.stamp_of(opened), read_capped(handle, path, limit)


def _require_regular(path: str, info: os.stat_result) -> None:
    if stat.S_ISREG(info.st_mode):
        return
    kind = next((name for test, name in _KINDS if test(info.st_mode)), "not a regular file")
    if kind == "a folder":
        try:
            os.listdir(path)
        except OSError as exc:
            raise CutqError(f"{path}: a folder cutq cannot list ({exc.strerror or exc})") from exc
    raise ImageError(path, f"is {kind}, not a file; only regular files are read", "not_image")


def read_capped(handle: BinaryIO, source: str, limit: int) -> bytes:
    """At most `limit` bytes from a stream; `ImageError` if there are more (an endless pipe ends here)."""
    try:
        data = handle.read(limit + 1)
    except OSError as exc:
        raise CutqError(f"{source}: cannot read ({exc.strerror or exc})") from exc
    images.check_bytes(len(data), source, limit, at_least=True)
    return data


def parse_bgcolor(text: str | None, label: str = "`bgcolor`") -> tuple[int, int, int, int] | None:
    """`R,G,B[,A]` with 0-255 integers (A defaults to 255); `label` names the option in the error."""
    if text is None or text == "":
        return None
    parts = [p.strip() for p in text.split(",")]
    values = [int(p) for p in parts] if all(p.isdigit() for p in parts) else []
    if len(values) == 3:
        values.append(255)
    if len(values) != 4 or not all(0 <= v <= 255 for v in values):
        raise CutqError(f"{label} '{text}': expected R,G,B[,A] with integers 0-255")
    return (values[0], values[1], values[2], values[3])


def default_workers() -> int:
    """Inferences at once: one per core, capped at 4 (beyond that they only hold memory)."""
    return max(1, min(4, usable_cores()))


def session_config(workers: int | None, threads: int | None, *, strict_cpu: bool = False,
                   low_memory: bool = False) -> tuple[int, SessionConfig]:
    """The CLIs' worker and thread counts: workers (default one per core) and the session that serves them,
    with at most `workers` inferences at once and cores / workers ONNX Runtime threads each. With one worker, the
    process's threads share one heap (`share_one_heap`): called before the session starts ONNX Runtime's threads."""
    workers = workers or default_workers()
    if workers == 1:
        share_one_heap()
    return workers, SessionConfig(threads=threads or max(1, default_workers() // workers), strict_cpu=strict_cpu,
                                  low_memory=low_memory, parallel_runs=workers)


def open_ledger(jobs: Sequence[Job], out_dir: str | None, key: str, resume: bool) -> ledgers.Ledger | None:
    """The run's ledger: folder runs only (a single -o file or stdout has nothing to resume)."""
    if out_dir is None or all(j.source == STDIO for j in jobs):
        return None
    return ledgers.Ledger(out_dir, key, resume)
