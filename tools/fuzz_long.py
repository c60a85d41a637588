"""The long fuzz run: mutated real photos through `remove()` for minutes, with figures at the end.

    .venv/bin/python tools/fuzz_long.py --minutes 10 --seed 29 --out .cache/fuzz-long
    .venv/bin/python tools/fuzz_long.py --count 2000            # a fixed number of inputs instead of a time budget

Why a script and not a test: `make test` runs the fixed corpus of tests/fuzz_corpus.py in about a minute; this
explores further (stacked mutations, random declared sizes, complete extreme-aspect PNGs) and reports figures for
docs/hostile-input.md: inputs tried by kind, outcomes by error kind, the worst time and peak-RSS growth of any
rejected input, and every crash.

Why a random loop and not Hypothesis: Hypothesis is only in the venv as a dependency of schemathesis, not a
declared dev dependency, and its shrinking needs the failing call in-process, while here a failure may be a hang
or a dead process. Input `i` of seed `s` is made from `random.Random(f"{s}:{i}")` alone, so any input can be
regenerated (`--show I` writes it to a file) without replaying the run.

How: a worker child process (`--worker`) loads the model once and feeds inputs to `remove()` in-process under an
RLIMIT_DATA ceiling, writing a line before and after each input. The parent watches those lines: an input that
takes longer than --input-timeout, or a worker that dies (signal, abort, MemoryError in C++), is recorded against
the input in flight, its bytes saved to OUT/repro/, and a fresh worker goes on with the next input. A non-ImageError
exception is saved the same way, with its traceback.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import random
import resource
import signal
import struct
import subprocess
import sys
import time
import traceback
from collections import Counter
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from tests.fuzz_corpus import FORMATS, source_photos  # noqa: E402  (the repo root must be on the path first)
from tests.fuzz_formats import (  # noqa: E402
    bitflips,
    bmp_dims,
    byterun,
    declared_png,
    gif_screen,
    jpeg_dims,
    patch,
    png_dims,
    tiff_dims,
    webp_dims,
)
from tests.fuzz_probe import measured  # noqa: E402

OPS = ("truncate", "bitflip", "byterun", "dims", "splice")


# ---------------------------------------------------------------------------------------------------------------
# Inputs


def bases(seed: int) -> dict[str, bytes]:
    """One encoding of a small real photo per format (the corpus's photos for this seed)."""
    rng = random.Random(seed)
    photos = source_photos(rng)
    return {fmt: encoder(photos[i % len(photos)]) for i, (fmt, (_, encoder)) in enumerate(FORMATS.items())}  # type: ignore[operator]


def random_dims(rng: random.Random, limit: int) -> tuple[int, int]:
    """Declared sizes a decoder must survive: near the real size, zero, one, huge, extreme aspect."""
    choice = rng.random()
    if choice < 0.3:
        return rng.randint(1, 400), rng.randint(1, 400)
    if choice < 0.4:
        return rng.choice([(0, rng.randint(1, 400)), (rng.randint(1, 400), 0), (1, 1)])
    if choice < 0.7:
        return rng.randint(1, limit), rng.randint(1, limit)
    long = rng.randint(min(limit, 20_000), limit)
    return (long, rng.randint(1, 4)) if rng.random() < 0.5 else (rng.randint(1, 4), long)


def with_dims(fmt: str, data: bytes, width: int, height: int) -> bytes:
    """`data` with its header's dimensions replaced (checksums fixed where the format has them)."""
    if fmt == "png":
        return png_dims(data, width, height)
    if fmt in ("jpeg", "pjpeg", "mpo"):
        return jpeg_dims(data, min(width, 65535), min(height, 65535))
    if fmt == "gif":
        return gif_screen(data, min(width, 65535), min(height, 65535))
    if fmt == "bmp":
        return bmp_dims(data, min(width, 2**31 - 1), min(height, 2**31 - 1))
    if fmt in ("tiff", "tiff-lzw"):
        return tiff_dims(data, width, height)
    if fmt == "webp":
        return webp_dims(data, min(width, 16383), min(height, 16383))
    if fmt == "ppm":
        body = data.split(b"\n", 3)[3]
        return b"P6\n%d %d\n255\n" % (width, height) + body
    if fmt == "ico":
        return patch(data, 6, bytes([width & 0xFF, height & 0xFF]))
    raise ValueError(fmt)


DIM_LIMIT = {"png": 2**31 - 1, "jpeg": 65535, "pjpeg": 65535, "mpo": 65535, "gif": 65535, "bmp": 2**31 - 1,
             "tiff": 2**32 - 1, "tiff-lzw": 2**32 - 1, "webp": 16383, "ppm": 10**9, "ico": 255}


def make_input(seed: int, index: int, base: dict[str, bytes]) -> tuple[bytes, str]:
    """Input `index` of `seed` and its kind ("fmt:op+op"), from its own random stream."""
    rng = random.Random(f"{seed}:{index}")
    if rng.random() < 0.03:  # a complete, decodable extreme-aspect PNG: must be refused by the long-side limit
        long = rng.randint(70_000, 40_000_000)
        short = rng.randint(1, max(1, 60_000_000 // long))
        width, height = (long, short) if rng.random() < 0.5 else (short, long)
        return declared_png(width, height, rng.choice([1, 8])), f"png-bomb:{width}x{height}"
    fmt = rng.choice(sorted(base))
    data = base[fmt]
    ops = [rng.choice(OPS) for _ in range(rng.choice([1, 1, 2, 3]))]
    for op in ops:
        if not data:
            break
        if op == "truncate":
            data = data[:rng.randrange(len(data))]
        elif op == "bitflip":
            data, _ = bitflips(data, rng, rng.choice([1, 2, 8, 64]), within=rng.choice([None, 64, 512]))
        elif op == "byterun":
            data, _ = byterun(data, rng)
        elif op == "dims":
            dims = random_dims(rng, DIM_LIMIT[fmt])
            with contextlib.suppress(ValueError, KeyError, IndexError, struct.error):  # an earlier op broke the header
                data = with_dims(fmt, data, *dims)
        else:  # splice: a slice of the file copied elsewhere (repeated chunks, segments, IFDs)
            start = rng.randrange(len(data))
            piece = data[start:start + rng.randint(1, 512)]
            at = rng.randrange(len(data))
            data = data[:at] + piece * rng.choice([1, 1, 4, 64]) + data[at:]
    return data, f"{fmt}:{'+'.join(ops)}"


# ---------------------------------------------------------------------------------------------------------------
# The worker: the model loaded once, inputs in turn


def worker(args: argparse.Namespace) -> int:
    from cutq_runtime import ImageError, RemoveOptions, new_session, remove

    base = bases(args.seed)
    session = new_session(args.model)
    options = RemoveOptions(max_pixels=args.max_pixels)
    remove(base["png"], session, source="warm-up", options=options)
    repro = Path(args.out) / "repro"
    with open(Path(args.out) / "progress.jsonl", "a", encoding="utf-8") as log:
        for index in range(args.start, args.stop):
            if time.time() > args.deadline:
                break
            data, kind = make_input(args.seed, index, base)
            log.write(json.dumps({"start": index, "kind": kind, "bytes": len(data)}) + "\n")
            log.flush()
            source = f"fuzz-{index}"
            _, error, seconds, growth = measured(lambda d=data, s=source: remove(d, session, source=s, options=options))
            record = {"i": index, "kind": kind, "seconds": round(seconds, 4), "growth_mb": round(growth / 1024, 1)}
            if error is None:
                record["outcome"] = "ok"
            elif isinstance(error, ImageError):
                record.update(outcome="rejected", error_kind=error.kind, named=str(error).startswith(f"{source}: "),
                              error=str(error)[:200])
            else:
                record.update(outcome="crash", error=f"{type(error).__name__}: {error}"[:500])
                save_repro(repro, args.seed, index, kind, data, record["error"],
                           "".join(traceback.format_exception(error)))
            log.write(json.dumps(record) + "\n")
            log.flush()
            if isinstance(error, (KeyboardInterrupt, SystemExit)):
                raise error
    return 0


def save_repro(folder: Path, seed: int, index: int, kind: str, data: bytes, what: str, trace: str = "") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"seed{seed}-{index:06d}.bin"
    path.write_bytes(data)
    command = (f".venv/bin/python -c \"from cutq_runtime import remove, new_session; "
               f"remove(open('{path}', 'rb').read(), new_session('u2netp'), source='{path.name}')\"")
    path.with_suffix(".json").write_text(json.dumps({"seed": seed, "index": index, "kind": kind, "what": what,
                                                     "traceback": trace, "reproduce": command}, indent=1))
    return path


# ---------------------------------------------------------------------------------------------------------------
# The parent: workers under watch, figures at the end


def read_lines(path: Path, offset: int) -> tuple[list[dict], int]:
    """Complete JSON lines appended since `offset`, and the new offset."""
    if not path.exists():
        return [], offset
    with open(path, "rb") as handle:
        handle.seek(offset)
        chunk = handle.read()
    end = chunk.rfind(b"\n") + 1
    return [json.loads(line) for line in chunk[:end].splitlines() if line.strip()], offset + end


def supervise(args: argparse.Namespace) -> int:
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    progress = out / "progress.jsonl"
    progress.unlink(missing_ok=True)
    deadline = time.time() + args.minutes * 60 if args.minutes else float("inf")
    stop = args.count if args.count else 10**9
    base = None
    records: list[dict] = []
    incidents: list[dict] = []
    offset, index, workers, idle, seen = 0, 0, 0, 0, 0
    started_all = time.time()
    ceiling = args.memory_mb << 20

    def limit() -> None:
        resource.setrlimit(resource.RLIMIT_DATA, (ceiling, ceiling))

    while index < stop and time.time() < deadline:
        argv = [sys.executable, __file__, "--worker", "--seed", str(args.seed), "--out", str(out), "--model", args.model,
                "--start", str(index), "--stop", str(stop), "--deadline", str(deadline)]
        if args.max_pixels:
            argv += ["--max-pixels", str(args.max_pixels)]
        workers += 1
        with open(out / "worker.log", "ab") as wlog:
            proc = subprocess.Popen(argv, stdout=wlog, stderr=wlog, start_new_session=True, preexec_fn=limit)
        in_flight: dict | None = None
        since = time.time()
        while True:
            lines, offset = read_lines(progress, offset)
            for line in lines:
                if "start" in line:
                    in_flight, since = line, time.time()
                else:
                    records.append(line)
                    in_flight, index = None, line["i"] + 1
                    done = len(records)
                    if done % 200 == 0:
                        print(f"{done} inputs, {time.time() - started_all:.0f} s", file=sys.stderr, flush=True)
            code = proc.poll()
            hung = in_flight is not None and time.time() - since > args.input_timeout
            if code is not None or hung:
                break
            time.sleep(0.05)
        if hung:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        lines, offset = read_lines(progress, offset)
        for line in lines:
            if "start" in line:
                in_flight = line
            else:
                records.append(line)
                in_flight, index = None, line["i"] + 1
        if in_flight is None:
            if proc.returncode == 0:
                break  # the worker reached the deadline or the count
            idle = idle + 1 if len(records) == seen else 0
            seen = len(records)
            if idle >= 3:
                print(f"workers keep failing between inputs; see {out / 'worker.log'}", file=sys.stderr)
                return 2
            continue
        what = (f"hung: no answer after {args.input_timeout:g} s" if hung
                else f"worker died: exit {proc.returncode}" + (f" ({signal.Signals(-proc.returncode).name})"
                                                               if proc.returncode < 0 else ""))
        base = base or bases(args.seed)
        data, kind = make_input(args.seed, in_flight["start"], base)
        path = save_repro(out / "repro", args.seed, in_flight["start"], kind, data, what)
        incidents.append({"i": in_flight["start"], "kind": kind, "what": what, "repro": str(path)})
        records.append({"i": in_flight["start"], "kind": kind, "outcome": "hang" if hung else "died",
                        "seconds": round(time.time() - since, 1), "growth_mb": None})
        index = in_flight["start"] + 1
    summary = figures(records, incidents, time.time() - started_all, workers, args)
    (out / "summary.json").write_text(json.dumps(summary, indent=1))
    print_figures(summary)
    return 1 if summary["crashes"] or incidents or summary["unnamed_errors"] else 0


def figures(records: list[dict], incidents: list[dict], seconds: float, workers: int, args: argparse.Namespace) -> dict:
    rejected = [r for r in records if r["outcome"] == "rejected"]
    accepted = [r for r in records if r["outcome"] == "ok"]

    def worst(rows: list[dict], key: str) -> dict | None:
        rows = [r for r in rows if r.get(key) is not None]
        top = max(rows, key=lambda r: r[key], default=None)
        return None if top is None else {key: top[key], "i": top["i"], "kind": top["kind"], "error": top.get("error")}

    return {
        "seed": args.seed, "model": args.model, "max_pixels": args.max_pixels, "inputs": len(records),
        "seconds": round(seconds), "workers_started": workers,
        "by_format": dict(Counter(r["kind"].split(":")[0] for r in records).most_common()),
        "by_op": dict(Counter(op for r in records for op in r["kind"].split(":")[1].split("+")
                              if not r["kind"].startswith("png-bomb")).most_common()),
        "outcomes": dict(Counter(r["outcome"] for r in records).most_common()),
        "rejected_by_error_kind": dict(Counter(r.get("error_kind") for r in rejected).most_common()),
        "unnamed_errors": sum(not r.get("named", True) for r in rejected),
        "worst_rejected_time": worst(rejected, "seconds"),
        "worst_rejected_growth": worst(rejected, "growth_mb"),
        "worst_accepted_time": worst(accepted, "seconds"),
        "worst_accepted_growth": worst(accepted, "growth_mb"),
        "crashes": [{"i": r["i"], "kind": r["kind"], "error": r["error"]} for r in records if r["outcome"] == "crash"],
        "hangs_and_deaths": incidents,
    }


def print_figures(s: dict) -> None:
    print(f"\n{s['inputs']} inputs in {s['seconds']} s (seed {s['seed']}, {s['model']}, {s['workers_started']} worker(s))")
    print("by format:  " + ", ".join(f"{k} {v}" for k, v in s["by_format"].items()))
    print("by op:      " + ", ".join(f"{k} {v}" for k, v in s["by_op"].items()))
    print("outcomes:   " + ", ".join(f"{k} {v}" for k, v in s["outcomes"].items()))
    print("rejections: " + ", ".join(f"{k} {v}" for k, v in s["rejected_by_error_kind"].items()))
    for label, key, unit in (("worst rejected time", "worst_rejected_time", "seconds"),
                             ("worst rejected RSS growth", "worst_rejected_growth", "growth_mb"),
                             ("worst accepted time", "worst_accepted_time", "seconds"),
                             ("worst accepted RSS growth", "worst_accepted_growth", "growth_mb")):
        row = s[key]
        if row:
            print(f"{label}: {row[unit]} {'s' if unit == 'seconds' else 'MB'} (input {row['i']}, {row['kind']})")
    print(f"errors not naming their source: {s['unnamed_errors']}")
    print(f"crashes (non-ImageError): {len(s['crashes'])}")
    for crash in s["crashes"][:20]:
        print(f"  input {crash['i']} ({crash['kind']}): {crash['error']}")
    print(f"hangs and worker deaths: {len(s['hangs_and_deaths'])}")
    for item in s["hangs_and_deaths"][:20]:
        print(f"  input {item['i']} ({item['kind']}): {item['what']} -> {item['repro']}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seed", type=int, default=29)
    parser.add_argument("--minutes", type=float, default=0, help="time budget (default: 10 unless --count is given)")
    parser.add_argument("--count", type=int, default=0, help="stop after this many inputs")
    parser.add_argument("--out", default=str(REPO / ".cache" / "fuzz-long"), help="progress, summary and reproducers")
    parser.add_argument("--model", default="u2netp")
    parser.add_argument("--max-pixels", type=int, help="RemoveOptions.max_pixels (default: the runtime's)")
    parser.add_argument("--input-timeout", type=float, default=60.0, help="seconds one input may take before it is a hang")
    parser.add_argument("--memory-mb", type=int, default=4096, help="RLIMIT_DATA of the worker")
    parser.add_argument("--show", type=int, metavar="I", help="write input I of --seed to OUT/input-I.bin and exit")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--start", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--stop", type=int, default=10**9, help=argparse.SUPPRESS)
    parser.add_argument("--deadline", type=float, default=float("inf"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.show is not None:
        data, kind = make_input(args.seed, args.show, bases(args.seed))
        path = Path(args.out) / f"input-{args.show}.bin"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        print(f"{path} ({kind}, {len(data)} bytes)")
        return 0
    if args.worker:
        return worker(args)
    if not args.minutes and not args.count:
        args.minutes = 10
    return supervise(args)


if __name__ == "__main__":
    sys.exit(main())
