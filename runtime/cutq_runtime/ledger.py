"""The resume ledger of a folder run: which inputs are finished, so an interrupted run goes on where it stopped.

A ledger is `.cutq-ledger.jsonl` in the output folder, one JSON line per finished input (done or failed),
appended and fsynced. It is the commit point of every output, which makes a rerun exactly-once:

1. the worker writes the PNG to a temp file beside the target (`write_temp`, any process or node);
2. the run appends the input's "done" line to the ledger (`commit`, one writer: the process that runs the job);
3. it renames the temp file over the target.

Killed between 2 and 3, the next run finds the line and the temp file and finishes the rename (`recover`);
killed before 2, it removes the temp file and does the input again. An input counts as done only with the same
bytes (size and modification time) and the same settings (`key`: model and options), so changing the model or
an option redoes everything. A torn last line (killed mid-append) is ignored.
"""

from __future__ import annotations

import contextlib
import json
import os
import threading
from dataclasses import dataclass
from pathlib import Path

from .errors import OutputError
from .fsutil import temp_prefix

LEDGER_NAME = ".cutq-ledger.jsonl"
TEMP_SUFFIX = ".cutq-part"


def fingerprint(path: str) -> str:
    """Size and modification time: a changed input is done again."""
    return stamp_of(os.stat(path))


def stamp_of(info: os.stat_result) -> str:
    return f"{info.st_size}:{info.st_mtime_ns}"


def temp_path(target: str) -> str:
    folder, name = os.path.split(target)
    return os.path.join(folder, temp_prefix(name, len(TEMP_SUFFIX)) + TEMP_SUFFIX)


def write_temp(target: str, data: bytes) -> str:
    """Write a result beside its target, fsynced; returns the temp path for `Ledger.commit`."""
    path = temp_path(target)
    with open(path, "wb") as handle:
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())
    return path


@dataclass(frozen=True)
class Record:
    source: str
    target: str
    status: str  # "done" or "failed"
    fingerprint: str
    key: str
    error: str | None = None


class Ledger:
    """The ledger of one output folder for one `key` (settings); thread-safe appends."""

    def __init__(self, out_dir: str | os.PathLike[str], key: str, resume: bool = True) -> None:
        self.path = Path(out_dir) / LEDGER_NAME
        self.key = key
        self._lock = threading.Lock()
        self.records: dict[str, Record] = {} if not resume else self._read()
        if not resume and self.path.exists():
            self.path.unlink()
        self._cut_torn_line()
        try:
            self._handle = open(self.path, "a", encoding="utf-8", errors="surrogateescape")  # noqa: SIM115  (held for the run's appends)
        except OSError as exc:
            raise OutputError(f"{self.path}: cannot write the resume ledger ({exc.strerror or exc})") from exc

    def _read(self) -> dict[str, Record]:
        records: dict[str, Record] = {}
        with contextlib.suppress(FileNotFoundError), open(self.path, encoding="utf-8", errors="surrogateescape") as handle:
            for line in handle:
                try:
                    record = Record(**json.loads(line))
                except (ValueError, TypeError):
                    continue  # a torn last line
                records[record.source] = record
        return records

    def _cut_torn_line(self) -> None:
        """A run killed mid-append leaves a line without its newline; cut it, or the next append would join it."""
        with contextlib.suppress(FileNotFoundError), open(self.path, "rb+") as handle:
            data = handle.read()
            if data and not data.endswith(b"\n"):
                handle.truncate(data.rfind(b"\n") + 1)

    def finished(self, source: str, target: str) -> bool:
        """Done before with these bytes and settings, and its output is in place (recovered if need be)."""
        record = self.records.get(source)
        if record is None or record.status != "done" or record.key != self.key or record.target != target:
            return False
        try:
            if record.fingerprint != fingerprint(source):
                return False
        except OSError:
            return False
        if not os.path.exists(target) and os.path.exists(temp_path(target)):
            os.replace(temp_path(target), target)  # committed, then killed before the rename
        return os.path.exists(target)

    def commit(self, source: str, target: str, temp: str, stamp: str | None = None) -> None:
        """Record `source` as done, then move its result into place. `stamp`: the input's fingerprint when it was
        read (a file changed during the run is then done again by the next one)."""
        self._append(Record(source, target, "done", stamp or fingerprint(source), self.key))
        os.replace(temp, target)

    def fail(self, source: str, target: str, error: str) -> None:
        """Record a failure (retried by the next run; the report lists it)."""
        try:
            stamp = fingerprint(source)
        except OSError:
            stamp = ""
        self._append(Record(source, target, "failed", stamp, self.key, error))

    def _append(self, record: Record) -> None:
        line = json.dumps(record.__dict__, ensure_ascii=False) + "\n"
        with self._lock:
            self._handle.write(line)
            self._handle.flush()
            os.fsync(self._handle.fileno())
            self.records[record.source] = record

    def close(self) -> None:
        self._handle.close()


def remove_stale_temps(targets: list[str]) -> None:
    """Temp files of outputs that were never committed (a run killed mid-write)."""
    for target in targets:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temp_path(target))
