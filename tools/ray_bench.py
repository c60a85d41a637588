"""Images/s of a folder run: the local engine (`batch.run`) vs the Ray engine on a local instance of Ray.

    .venv/bin/python tools/ray_bench.py                      # 100 davis-val photos, u2netp-int8 (else u2netp)
    .venv/bin/python tools/ray_bench.py --limit 20 --json out.json

The local engine runs three ways: 1 worker and 2 workers on a session with onnxruntime's default threads (all
cores), and 2 workers on a 1-thread session (the same layout as Ray's default, 2 actors x 1 thread). Every run
takes the same photos with the same model and options into a fresh folder with a resume ledger, as
`cutq remove --out-dir` does; the Ray outputs are checked against the local engine's, byte for byte. Ray's
overhead is split in two: starting Ray (`ray.init` of a private local instance) and, per image, the Ray run's wall
time minus the fastest local run's, divided by the number of images (it includes starting the actors and loading
the model in each). It also times the driver's serial part, `Ledger.commit`, alone (500 commits), the ceiling of
any cluster's rate on that filesystem. Bounded: at most --limit photos, and the whole benchmark is stopped after
--timeout seconds.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path

from cutq_runtime import batch, models
from cutq_runtime import ledger as ledgers
from cutq_runtime.api import RemoveOptions
from cutq_runtime.session import new_session

ROOT = Path(__file__).resolve().parents[1]
DAVIS = Path(os.environ.get("CUTQ_DAVIS", ROOT.parent / "shared" / "data" / "davis-val")) / "images"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog=__doc__.split("\n\n", 2)[2])
    parser.add_argument("--images", type=Path, default=DAVIS, help="folder of photos (default: davis-val beside the repo)")
    parser.add_argument("--limit", type=int, default=100, help="photos to run, the first N by name (default 100)")
    parser.add_argument("--model", default=None, help="model (default: u2netp-int8 if in the cache, else u2netp)")
    parser.add_argument("--actors", type=int, default=2, help="Ray actors (default 2)")
    parser.add_argument("--threads-per-actor", type=int, default=1, help="onnxruntime threads per Ray actor (default 1)")
    parser.add_argument("--batch-size", type=int, default=4, help="images per Ray task (default 4)")
    parser.add_argument("--timeout", type=float, default=900, help="stop the whole benchmark after this many seconds")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args(argv)
    if args.limit < 1:
        parser.error("--limit must be positive")

    signal.signal(signal.SIGALRM, lambda *_: sys.exit(f"ray_bench: stopped after --timeout {args.timeout:g} s"))
    signal.setitimer(signal.ITIMER_REAL, args.timeout)
    try:
        from cutq.engines import ray_engine
    except ImportError as exc:
        sys.exit(f'ray_bench: {exc} (pip install "cutq[ray]")')
    photos = sorted(p for p in args.images.glob("*") if p.suffix.lower() in batch.IMAGE_SUFFIXES)[: args.limit]
    if not photos:
        sys.exit(f"ray_bench: no photos in {args.images}")
    model = args.model or _default_model()
    options = RemoveOptions()
    key = batch.settings_key(model, options)
    scratch = Path(tempfile.mkdtemp(prefix="cutq-ray-bench-"))
    rows: list[dict] = []
    try:
        src = scratch / "src"
        src.mkdir()
        for photo in photos:
            shutil.copy(photo, src / photo.name)
        inputs = batch.expand_inputs([str(src)])
        sessions = {None: new_session(model), 1: new_session(model, threads=1)}
        batch.run(batch.plan(inputs[:2], None, str(scratch / "warm")), sessions[None], options)  # page the model in

        local_best = None
        for workers, threads in ((1, None), (2, None), (2, 1)):
            session = sessions[threads]
            out = scratch / f"local-{workers}-{threads}"
            jobs = batch.plan(inputs, None, str(out))
            book = ledgers.Ledger(out, key, resume=False)
            times: list[float] = []
            start = time.perf_counter()
            result = batch.run(jobs, session, options, _stamp(times), workers=workers, ledger=book)
            seconds = time.perf_counter() - start
            book.close()
            _check(result, len(jobs))
            rows.append({"engine": f"local, workers={workers}, 1 session with onnxruntime threads={threads or 'all cores'}",
                         "seconds": seconds, **_timing(times, start), "images": len(jobs)})
            local_best = seconds if local_best is None else min(local_best, seconds)

        import ray
        import ray.data  # configures Ray Data's logging, which _quiet_ray_data then turns down

        os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
        start = time.perf_counter()
        ray.init(address="local", num_cpus=args.actors * args.threads_per_actor, include_dashboard=False,
                 logging_level=logging.ERROR)
        startup = time.perf_counter() - start
        ray_engine._quiet_ray_data()  # as when run() starts Ray itself: Ray Data's notices to its log file only
        out = scratch / "ray"
        jobs = batch.plan(inputs, None, str(out))
        book = ledgers.Ledger(out, key, resume=False)
        times = []
        config = ray_engine.RayConfig(actors=args.actors, threads_per_actor=args.threads_per_actor, batch_size=args.batch_size)
        start = time.perf_counter()
        result = ray_engine.run(jobs, model, options, config, book, _stamp(times))
        seconds = time.perf_counter() - start
        book.close()
        stop = time.perf_counter()
        ray.shutdown()
        shutdown = time.perf_counter() - stop
        _check(result, len(jobs))
        sizes = {"input_kb": sum(p.stat().st_size for p in photos) / len(photos) / 1024,
                 "output_kb": sum(Path(job.target).stat().st_size for job in jobs) / len(jobs) / 1024}
        commits = _commit_rate(scratch / "commit", str(src / photos[0].name))
        same = sum((out / name).read_bytes() == (scratch / "local-1-None" / name).read_bytes()
                   for name in (Path(job.target).name for job in jobs))
        assert local_best is not None
        rows.append({"engine": f"Ray, local instance, {args.actors} actors x {args.threads_per_actor} thread(s), "
                               f"batch {args.batch_size}",
                     "seconds": seconds, **_timing(times, start), "images": len(jobs),
                     "ray_init_s": startup, "ray_shutdown_s": shutdown,
                     "overhead_ms_per_image": (seconds - local_best) / len(jobs) * 1000,
                     "identical_to_local": same, **sizes, "driver_commits_per_s": commits})
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
        signal.setitimer(signal.ITIMER_REAL, 0)

    report = {"date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"), "cpu": _cpu_model(),
              "cores": os.cpu_count(), "python": platform.python_version(), "ray": _version("ray"),
              "onnxruntime": _version("onnxruntime"), "model": model, "photos": f"{len(photos)} from {args.images}",
              "command": " ".join(["tools/ray_bench.py", *(argv if argv is not None else sys.argv[1:])]), "rows": rows}
    print(_markdown(report))
    if args.json:
        args.json.write_text(json.dumps(report, indent=2) + "\n")
    return 0


def _default_model() -> str:
    try:
        models.resolve("u2netp-int8", pull_missing=False)
        return "u2netp-int8"
    except Exception:  # noqa: BLE001 - missing or unverifiable: fall back to the released model
        return "u2netp"


def _commit_rate(folder: Path, source: str, count: int = 500) -> float:
    """The driver's serial work per image: `Ledger.commit` (an fsynced ledger line, then the rename) of small temp
    files, per second, on the scratch folder's filesystem."""
    folder.mkdir()
    book = ledgers.Ledger(folder, "bench", resume=False)
    temps = [ledgers.write_temp(str(folder / f"{i}.png"), b"\0" * 1024) for i in range(count)]
    start = time.perf_counter()
    for i, temp in enumerate(temps):
        book.commit(source, str(folder / f"{i}.png"), temp)
    seconds = time.perf_counter() - start
    book.close()
    return count / seconds


def _stamp(times: list[float]) -> Callable[[batch.Job, str | None], None]:
    """An `on_result` that notes when each result arrived."""

    def on_result(job: batch.Job, error: str | None) -> None:
        times.append(time.perf_counter())

    return on_result


def _timing(times: list[float], start: float) -> dict[str, float]:
    """When the first result came, and the rate after it: images that came later over the time they took (Ray's
    results come a batch at a time, so the images that came with the first one are left out)."""
    burst = sum(1 for t in times if t - times[0] < 0.02)
    later = len(times) - burst
    steady = later / (times[-1] - times[0]) if later else float("nan")
    return {"first_result_s": times[0] - start, "steady_images_per_s": steady}


def _check(result: batch.BatchResult, expected: int) -> None:
    if result.failed or len(result.done) != expected:
        sys.exit(f"ray_bench: {len(result.done)} of {expected} done, failed: {result.failed[:3]}")


def _cpu_model() -> str:
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        return platform.processor() or "unknown"
    return next((line.split(":", 1)[1].strip() for line in out.splitlines() if line.startswith("Model name")), "unknown")


def _version(name: str) -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(name)
    except PackageNotFoundError:
        return "-"


def _number(value: float) -> str:
    return "-" if value != value else f"{value:.2f}"  # NaN: every result came at once


def _markdown(report: dict) -> str:
    lines = [f"{report['date']}, {report['cpu']} ({report['cores']} cores), Python {report['python']}, "
             f"onnxruntime {report['onnxruntime']}, Ray {report['ray']}; {report['model']}, {report['photos']}",
             f"command: `{report['command']}`", "",
             "| engine | wall s | images/s | ms/image | first result s | images/s after the first result |",
             "|---|---:|---:|---:|---:|---:|"]
    for row in report["rows"]:
        lines.append(f"| {row['engine']} | {row['seconds']:.2f} | {row['images'] / row['seconds']:.2f} | "
                     f"{row['seconds'] / row['images'] * 1000:.0f} | {row['first_result_s']:.2f} | "
                     f"{_number(row['steady_images_per_s'])} |")
    ray_row = report["rows"][-1]
    lines += ["", f"Ray start (`ray.init`, private local instance): {ray_row['ray_init_s']:.2f} s; "
                  f"`ray.shutdown`: {ray_row['ray_shutdown_s']:.2f} s (neither is in the Ray row's wall time).",
              f"Ray overhead per image vs the fastest local run: {ray_row['overhead_ms_per_image']:+.0f} ms "
              f"(actor start and model load included). Ray outputs identical to the local engine's: "
              f"{ray_row['identical_to_local']}/{ray_row['images']}.",
              f"Photos {ray_row['input_kb']:.0f} KB, cut-outs {ray_row['output_kb']:.0f} KB on average. The driver's "
              f"commit (`Ledger.commit`: fsynced ledger line + rename) on the scratch filesystem: "
              f"{ray_row['driver_commits_per_s']:.0f}/s."]
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
