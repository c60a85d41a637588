"""The child side of the remove() fuzz: one process, every input in turn, time and peak memory for each.

tests/test_fuzz.py writes the corpus (tests/fuzz_corpus.py) and a jobs file per child, then runs

    .venv/bin/python -m tests.fuzz_probe JOBS.json RESULTS.jsonl [MODEL]

and reads one JSON line per input back. tools/fuzz_long.py measures its inputs with `measured` too.
"""

from __future__ import annotations

import io
import json
import resource
import sys
import time
import traceback
from pathlib import Path

from PIL import Image

from .fuzz_formats import encode


def rss_kb(field: str = "VmRSS") -> int:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    return 0


def reset_peak() -> bool:
    """Reset VmHWM to the current RSS (Linux 4.0+), so each input's own peak can be read; False if refused."""
    try:
        with open("/proc/self/clear_refs", "w") as handle:
            handle.write("5")
        return True
    except OSError:
        return False


def measured(call) -> tuple[object, BaseException | None, float, int]:
    """Run `call()`; its result or exception, the wall time and how far the peak RSS rose above the RSS before it
    (in kB; from VmHWM when it can be reset, else from ru_maxrss, which only shows new process-wide peaks)."""
    exact = reset_peak()
    before, before_max = rss_kb(), resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    started = time.perf_counter()
    result, error = None, None
    try:
        result = call()
    except BaseException as exc:  # noqa: BLE001 - the caller classifies it (only ImageError is allowed)
        error = exc
    seconds = time.perf_counter() - started
    growth = rss_kb("VmHWM") - before if exact else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before_max
    return result, error, seconds, max(0, growth)


def probe(jobs_file: str, results_file: str, model: str = "u2netp") -> int:
    """For each job {"name", "path"} in `jobs_file`: remove(bytes, source=name), one JSON line in `results_file`.

    A "start" line is written (and flushed) before each input, so a hang or a crash of the process itself is
    pinned on the input in flight. A PNG result is decoded completely and its size recorded."""
    from cutq_runtime import ImageError, RemoveOptions, SessionConfig, new_session, remove

    jobs = json.loads(Path(jobs_file).read_text())
    session = new_session(model, config=SessionConfig(threads=1))  # one core each: the tests run two probes at once
    warm = encode(Image.new("RGB", (64, 48), (90, 120, 200)), "PNG")
    remove(warm, session, source="warm-up")
    with open(results_file, "w", encoding="utf-8") as out:
        for job in jobs:
            out.write(json.dumps({"start": job["name"]}) + "\n")
            out.flush()
            data = Path(job["path"]).read_bytes()
            png, error, seconds, growth = measured(lambda d=data, n=job["name"]: remove(d, session, source=n,
                                                                                          options=RemoveOptions()))
            record: dict = {"name": job["name"], "seconds": round(seconds, 4), "growth_mb": round(growth / 1024, 1)}
            if error is None:
                try:
                    with Image.open(io.BytesIO(png)) as result:  # type: ignore[arg-type]
                        result.load()
                        record.update(outcome="ok", size=list(result.size), mode=result.mode)
                except Exception as exc:  # noqa: BLE001 - reported as a bad output, not a crash of the probe
                    record.update(outcome="bad-output", error=f"{type(exc).__name__}: {exc}")
            elif isinstance(error, ImageError):
                record.update(outcome="ImageError", error=str(error), error_kind=error.kind)
            else:
                record.update(outcome=type(error).__name__, error=str(error),
                              traceback="".join(traceback.format_exception(error)))
            out.write(json.dumps(record) + "\n")
            out.flush()
            if isinstance(error, (KeyboardInterrupt, SystemExit)):
                raise error
    return 0



def main(argv: list[str]) -> int:
    if len(argv) in (2, 3):
        return probe(*argv)
    print("usage: python -m tests.fuzz_probe JOBS.json RESULTS.jsonl [MODEL]", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
