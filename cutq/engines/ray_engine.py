"""Folder runs on a Ray cluster: `cutq remove --engine ray [--address ADDR] SRC --out-dir DST` (`pip install "cutq[ray]"`).

The driver (this process) plans as the local engine does, skips what the resume ledger lists as finished, and
streams the rest through a Ray Data pipeline: a pool of actors, each with one cutq_runtime session loaded once,
runs exactly the local engine's per-image code (`batch.process_one`: read, decode, cut, PNG) and writes the
result to the temp file beside its target (`ledger.write_temp`). Only the driver appends to the ledger and
renames temp files into place (`Ledger.commit`), so every output is committed exactly once however often Ray
retries a task or restarts an actor, and a rerun after a killed driver resumes where it stopped.

The dataset holds paths, not image bytes: each actor reads its inputs itself, so a large photo never goes
through Ray's object store, and the temp file it writes has to be visible to the driver anyway. Every node must
therefore see the input and output folders at the same absolute paths (one machine, or a shared filesystem);
see docs/ray.md. The model file is shipped from the driver through the object store once per run, so worker
nodes need `cutq-runtime` and `ray` installed but no model cache (variants built here work there too).

A bad file is an error for its row, never a crashed task. A worker process that dies (killed, out of memory,
node lost) is restarted by Ray and its batch retried; a batch that kills its worker `max_task_retries + 1`
times is retried image by image, and an image that still kills its worker is reported as failed.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import math
import os
import re
import sys
import tempfile
import warnings
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cutq_runtime import batch, models
from cutq_runtime import ledger as ledgers
from cutq_runtime.api import RemoveOptions
from cutq_runtime.batch import STDIO, BatchResult, Job
from cutq_runtime.errors import CutqError
from cutq_runtime.fsutil import atomic_write_bytes
from cutq_runtime.session import SessionConfig, new_session

INSTALL_HINT = 'the Ray engine needs Ray: pip install "cutq[ray]"'
MAX_BLOCKS = 10_000  # dataset blocks of paths; beyond this a block holds several batches
_COLUMNS = ("source", "target", "temp", "error", "stamp")
_ANSI = re.compile(r"\x1b\[[0-9;]*m")
_RAISED = re.compile(r"^(?:[A-Za-z_][\w.]*\.)?(?P<kind>[A-Z]\w*(?:Error|Exception)): (?P<message>.+)$")


@dataclass(frozen=True)
class RayConfig:
    """Where and how wide to run. `actors=None`: the cluster's CPUs // `threads_per_actor`."""

    address: str | None = None  # "host:port" of a head node, or "auto"; None: $RAY_ADDRESS, else a private local instance
    actors: int | None = None
    threads_per_actor: int = 1  # onnxruntime threads per actor, and the CPUs it reserves
    batch_size: int = 4  # images per Ray task (small: results are committed per task)
    max_task_retries: int = 3  # retries of a batch whose worker process died, before it is retried image by image
    strict_cpu: bool = False  # refuse a model a worker's CPU may compute wrong masks with (SessionConfig.strict_cpu)
    low_memory: bool = False  # SessionConfig.low_memory on every actor


def run(jobs: Sequence[Job], model: str, options: RemoveOptions, config: RayConfig, ledger: ledgers.Ledger | None,
        on_result: Callable[[Job, str | None], None] | None = None,
        cache_dir: str | os.PathLike[str] | None = None) -> BatchResult:
    """Process `jobs` on Ray; the same result, ledger and `on_result(job, error_or_None)` calls (in this thread) as
    `batch.run`. Raises `CutqError` when Ray is missing, the cluster cannot be reached or the run breaks off (what
    was committed until then stays committed; a rerun resumes)."""
    for job in jobs:
        if STDIO in (job.source, job.target):
            raise CutqError("the Ray engine reads and writes files; '-' (stdin/stdout) needs the local engine")
    if config.threads_per_actor < 1 or config.batch_size < 1 or (config.actors is not None and config.actors < 1):
        raise CutqError(f"Ray engine: actors, threads_per_actor and batch_size must be positive ({config})")
    result = BatchResult()
    todo: list[Job] = []
    for job in jobs:
        if ledger is not None and ledger.finished(job.source, job.target):
            result.skipped.append(job)
        else:
            todo.append(job)
    ledgers.remove_stale_temps([job.target for job in todo])
    if not todo:
        return result
    ray = _import_ray()
    _pickle_by_value([sys.modules[__name__]])
    resolved = models.resolve(model, models.cache_dir(cache_dir))  # an unknown model fails here, before Ray starts
    started = _connect(ray, config)
    try:
        _Driver(ray, todo, resolved, options, config, ledger, result, on_result).run()
    finally:
        if started:
            ray.shutdown()
    return result


def _import_ray() -> Any:
    try:
        import ray
        import ray.data  # the [data] extra: pyarrow, pandas
    except ImportError as exc:
        raise CutqError(f"{INSTALL_HINT} ({exc})") from exc
    return ray


def _connect(ray: Any, config: RayConfig) -> bool:
    """Join `config.address`, or start a local instance; True when this call started (and must stop) Ray."""
    if ray.is_initialized():
        return False
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")  # no usage reports to the internet
    kwargs: dict[str, Any] = {"logging_level": logging.ERROR, "configure_logging": True}  # no notices, errors only
    # No address: $RAY_ADDRESS (set for drivers run with `ray job submit`), else a private instance on this machine,
    # never whatever cluster `ray start` last left in /tmp/ray (Ray's own default for address=None).
    address = config.address or os.environ.get("RAY_ADDRESS") or "local"
    if address == "local":
        kwargs["include_dashboard"] = False
    try:
        ray.init(address=address, **kwargs)
    except Exception as exc:  # ConnectionError, RuntimeError, ValueError... all mean "no cluster"
        where = "a local instance" if address == "local" else address
        raise CutqError(f"Ray: cannot start or join {where}: {_first_line(exc)}") from exc
    _quiet_ray_data()
    return True


def _quiet_ray_data() -> None:
    """Ray Data's notices (execution plan, timings) stay in its log file; the console gets its errors only."""
    for handler in logging.getLogger("ray.data").handlers:
        if not isinstance(handler, logging.FileHandler) and "File" not in type(handler).__name__:
            handler.setLevel(logging.ERROR)


class _Driver:
    """One run's driver side: stream the jobs through the actor pool, commit what comes back, exactly once."""

    def __init__(self, ray: Any, todo: list[Job], resolved: models.ResolvedModel, options: RemoveOptions,
                 config: RayConfig, ledger: ledgers.Ledger | None, result: BatchResult,
                 on_result: Callable[[Job, str | None], None] | None) -> None:
        self.ray, self.todo, self.options, self.config = ray, todo, options, config
        self.ledger, self.result, self.on_result = ledger, result, on_result
        self.model = _ship_model(ray, resolved)
        # Workers get absolute paths (their working directory is not ours); results are mapped back to the jobs.
        self.by_target = {os.path.abspath(job.target): job for job in todo}
        self.handled: set[Job] = set()

    def run(self) -> None:
        from ray.data import DataContext

        context = DataContext.get_current()
        saved = context.max_errored_blocks, context.enable_progress_bars
        # A task that failed for good (its worker died on every try) drops its block instead of ending the run:
        # the jobs that never come back are retried one by one, then reported (`finish_lost`).
        context.max_errored_blocks, context.enable_progress_bars = -1, False
        try:
            self.stream(self.todo, self.config.batch_size)
            lost = [job for job in self.todo if job not in self.handled]
            if lost:  # one image per task and one task per actor at a time: a crash takes no other image with it
                self.stream(lost, 1, isolate=True)
            self.finish_lost()
        finally:
            context.max_errored_blocks, context.enable_progress_bars = saved

    def stream(self, jobs: list[Job], batch_size: int, isolate: bool = False) -> None:
        ray = self.ray
        threads = self.config.threads_per_actor
        actors = self.config.actors or max(1, int(ray.cluster_resources().get("CPU", 1)) // threads)
        actors = min(actors, math.ceil(len(jobs) / batch_size))
        rows = [{"source": os.path.abspath(job.source), "target": os.path.abspath(job.target)} for job in jobs]
        dataset = ray.data.from_items(rows, override_num_blocks=min(MAX_BLOCKS, math.ceil(len(rows) / batch_size)))
        pool = ray.data.ActorPoolStrategy(size=actors, **({"max_tasks_in_flight_per_actor": 1} if isolate else {}))
        args = {"fn_constructor_args": (self.model, self.options, threads, self.config.strict_cpu, self.config.low_memory),
                "batch_size": batch_size, "batch_format": "numpy", "compute": pool,
                "num_cpus": threads}
        # A dead worker process is always replaced, and its batch retried a bounded number of times (Ray Data's own
        # default retries forever, so an image that kills its worker would never let the run end). Ray 2.60
        # deprecates these pass-through actor options with no named replacement yet: without them (a Ray that no
        # longer takes them), its defaults apply.
        retries = {"max_restarts": -1, "max_task_retries": self.config.max_task_retries}
        try:
            with warnings.catch_warnings():
                warnings.filterwarnings("ignore", message=".*ray_remote_args.*deprecated")
                dataset = dataset.map_batches(_CutWorker, **args, **retries)
        except TypeError:
            dataset = dataset.map_batches(_CutWorker, **args)
        try:
            for row in dataset.iter_rows():
                self.handle(row)
        except CutqError:
            raise
        except Exception as exc:  # any Ray failure ends the run with what is committed so far
            done = len(self.handled)
            raise CutqError(f"Ray: the run broke off after {done} of {len(self.todo)} images "
                            f"(committed ones are kept; rerun to resume): {_reason(exc)}") from exc

    def handle(self, row: dict[str, Any]) -> None:
        job = self.by_target.get(str(row["target"]))
        if job is None:
            raise CutqError(f"Ray returned a result for an unknown target {row['target']!r}")
        temp, error = row.get("temp") or None, row.get("error") or None
        if job in self.handled:  # a retried task delivered it again: it was committed already, keep nothing new
            if temp:
                _unlink(str(temp))
            return
        self.handled.add(job)
        if error is not None:
            error = _relabel(str(error), job)
        elif temp is None:
            error = f"{job.source}: the worker returned no result"
        else:
            error = self.commit(job, str(temp), row.get("stamp") or None)
        if error is not None:
            _unlink(ledgers.temp_path(job.target))  # a half-written temp file from a failed write
            if self.ledger is not None:
                self.ledger.fail(job.source, job.target, error)
        self.finish(job, error)

    def commit(self, job: Job, temp: str, stamp: str | None) -> str | None:
        """The commit point: the ledger line, then the rename (`Ledger.commit`); the error, or None."""
        try:
            if self.ledger is not None:
                self.ledger.commit(job.source, job.target, temp, stamp)
            else:
                os.replace(temp, job.target)
        except OSError as exc:
            return f"{job.target}: {exc.strerror or exc}"
        return None

    def finish_lost(self) -> None:
        tries = self.config.max_task_retries + 1
        for job in self.todo:
            if job not in self.handled:
                self.handled.add(job)
                error = f"{job.source}: its worker process died on each of {tries} tries (crash or out of memory); not written"
                _unlink(ledgers.temp_path(job.target))
                if self.ledger is not None:
                    self.ledger.fail(job.source, job.target, error)
                self.finish(job, error)

    def finish(self, job: Job, error: str | None) -> None:
        (self.result.done.append(job) if error is None else self.result.failed.append((job, error)))
        if self.on_result:
            self.on_result(job, error)


def _ship_model(ray: Any, resolved: models.ResolvedModel) -> dict[str, Any]:
    """The verified model file, put in the object store once, with what an actor needs to load it the same way."""
    data = resolved.path.read_bytes()
    manifest = resolved.manifest if resolved.manifest is not None else {"input": models.input_spec_dict(resolved.input)}
    return {"name": resolved.name, "suffix": resolved.path.suffix, "sha256": hashlib.sha256(data).hexdigest(),
            "manifest": manifest, "data": [ray.put(data)]}  # in a list, so Ray passes the reference, not the bytes


def _materialize(model: dict[str, Any]) -> Path:
    """The shipped model as a file on this node (written once per node and model, atomically)."""
    import json

    import ray

    folder = Path(tempfile.gettempdir()) / "cutq-ray-models" / model["sha256"][:16]
    path = folder / f"{model['name']}{model['suffix']}"
    if not path.is_file():
        folder.mkdir(parents=True, exist_ok=True)
        manifest = json.dumps(model["manifest"], indent=2, sort_keys=True).encode()
        atomic_write_bytes(models.manifest_path(path), manifest)
        atomic_write_bytes(path, ray.get(model["data"][0]))
    return path


class _Staged:
    """Stands in for the ledger in `batch.process_one` on a worker: keeps the temp file `write_temp` wrote and
    commits nothing, because only the driver commits."""

    temp: str | None = None
    stamp: str | None = None

    def commit(self, source: str, target: str, temp: str, stamp: str | None = None) -> None:
        self.temp, self.stamp = temp, stamp  # the input's fingerprint when the worker read it


class _CutWorker:
    """One Ray actor: a session loaded once, then batches of {source, target} paths in, their temp files out."""

    def __init__(self, model: dict[str, Any], options: RemoveOptions, threads: int, strict_cpu: bool,
                 low_memory: bool) -> None:
        config = SessionConfig(threads=threads, strict_cpu=strict_cpu, low_memory=low_memory)
        self.session = new_session(_materialize(model), config=config)
        self.options = options

    def __call__(self, rows: dict[str, Any]) -> dict[str, Any]:
        import numpy as np

        out: dict[str, list[str | None]] = {name: [] for name in _COLUMNS}
        for source, target in zip(rows["source"], rows["target"], strict=True):
            job, staged = Job(str(source), str(target)), _Staged()
            error = batch.process_one(job, self.session, self.options, staged)  # type: ignore[arg-type]
            values = (job.source, job.target, staged.temp if error is None else None, error, staged.stamp)
            for name, value in zip(_COLUMNS, values, strict=True):
                out[name].append(value)
        return {name: np.array(values, dtype=object) for name, values in out.items()}


def _relabel(error: str, job: Job) -> str:
    """A worker's message names the absolute paths it was given; name the job's paths as the user gave them."""
    for given in (job.source, job.target):
        absolute = os.path.abspath(given)
        if absolute != given:
            error = error.replace(absolute, given)
    return error


def _unlink(path: str) -> None:
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _reason(exc: BaseException) -> str:
    """What a Ray error says went wrong: the worker's own exception when it carries a traceback (an actor that could
    not load the model: "ModelError: ..."), else its first line."""
    lines = [_ANSI.sub("", line).strip() for line in str(exc).splitlines()]
    raised = [match for line in lines if (match := _RAISED.match(line))]
    return f"{raised[-1]['kind']}: {raised[-1]['message']}" if raised else _first_line(exc)


def _pickle_by_value(modules: Iterable[Any]) -> None:
    """Ship this module's code to the workers with the task, so worker nodes need cutq-runtime but not cutq."""
    try:
        from ray import cloudpickle
    except ImportError:
        return
    for module in modules:
        with contextlib.suppress(ValueError):  # registered already
            cloudpickle.register_pickle_by_value(module)
