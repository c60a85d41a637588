"""Overload and shutdown test of `cutq serve`: a burst beyond the queue, then SIGTERM with requests in flight.

(a) burst: a server with --max-concurrency 2 --max-queue 16; --clients (64) threads, each with its own open
    connection and a prepared request (half POST /v1/cutout raw body, half rembg's multipart POST /api/remove),
    are released at once, --rounds times. Checks: every response is 200 or 503; the 503s come back within
    --refuse-ms (100 ms, measured per refused request from send to response; p50/p95/max reported, split into
    the client writing the body and the rest) and carry Retry-After; at least concurrency + queue requests are
    served and every 200 is a valid PNG cut-out of its photo; cutq_refused_total counts the 503s;
    cutq_inflight_peak stays within --max-concurrency; afterwards the process is alive, /healthz answers, a
    normal request gets its cut-out, the log holds no traceback and SIGTERM ends it with status 0.
    Controls, to read the 503 figure (reported, not checked): --alone refusals sent one at a time while the
    queue is full; the same burst of uploads to an unknown model (422 before the pool: no inference running);
    a burst of GET /healthz.
(b) SIGTERM: a fresh server (queue large enough); --inflight (8) requests are sent, and once /metrics shows
    them all running or queued the server gets SIGTERM. Checks: all complete with 200 and the same PNG bytes
    the idle server returned for the same photo beforehand, and the process then exits with status 0.

Bounded: (rounds + 2) x clients + alone + 2 x inflight + a few requests. Exit status: 0 all checks passed,
1 a check failed, 2 a server did not start.
"""

from __future__ import annotations

import argparse
import json
import signal
import subprocess
import sys
import threading
import time
from contextlib import suppress
from dataclasses import dataclass
from pathlib import Path

import httpx
from common import (
    Checks,
    Photo,
    Server,
    check_cutout,
    cpu_description,
    cutout_request,
    cutq_server,
    describe_photos,
    metrics,
    now,
    percentile,
    photos,
    post_cutout,
    table,
)

STYLES = ("v1-raw", "rembg")
NAN = float("nan")


@dataclass
class Result:
    photo: Photo | None
    style: str  # "v1-raw", "rembg", "v1-multipart" or "healthz" (GET /healthz)
    status: int  # 0: no response (connection error)
    seconds: float  # from send to the whole response
    upload: float  # from send until the client had written the last byte of the body
    retry_after: str | None = None
    problem: str | None = None  # for a 200 cut-out: what is wrong with the PNG; else the error text
    content: bytes = b""


def prepare(http: httpx.Client, url: str, photo: Photo | None, model: str, style: str) -> httpx.Request:
    if style == "healthz":
        return http.build_request("GET", url + "/healthz")
    return cutout_request(http, url, photo, model, style)


def timed_send(http: httpx.Client, request: httpx.Request, photo: Photo | None, style: str) -> Result:
    """Send a prepared request; time the whole exchange and, through httpcore's trace hook, the upload part."""
    sent: list[float] = []
    request.extensions["trace"] = lambda event, _: (
        sent.append(time.perf_counter()) if event == "http11.send_request_body.complete" else None)
    begun = time.perf_counter()
    try:
        response = http.send(request)
    except httpx.HTTPError as exc:
        return Result(photo, style, 0, time.perf_counter() - begun, NAN, problem=f"{type(exc).__name__}: {exc}")
    elapsed = time.perf_counter() - begun
    cutout = response.status_code == 200 and photo is not None
    problem = check_cutout(response, photo) if cutout else (None if response.status_code == 200 else response.text[:200])
    return Result(photo, style, response.status_code, elapsed, (sent[0] - begun) if sent else NAN,
                  response.headers.get("retry-after"), problem, response.content if cutout else b"")


def fire(server: Server, jobs: list[tuple[Photo | None, str]], model: str,
         on_sent: threading.Event | None = None) -> list[Result]:
    """Send one request per (photo, style) job, all at once: one thread and one already-open connection each, the
    request built before the start line, so the time measured is the server's answer (and the client's scheduling)."""
    results: list[Result | None] = [None] * len(jobs)
    barrier = threading.Barrier(len(jobs) + 1)

    def client(index: int, photo: Photo | None, style: str) -> None:
        with httpx.Client(timeout=httpx.Timeout(180.0)) as http:
            try:
                http.get(server.url + "/healthz")  # opens the keep-alive connection
                request = prepare(http, server.url, photo, model, style)
                barrier.wait()
            except (httpx.HTTPError, threading.BrokenBarrierError) as exc:
                barrier.abort()
                results[index] = Result(photo, style, 0, NAN, NAN, problem=f"before sending: {type(exc).__name__}: {exc}")
                return
            results[index] = timed_send(http, request, photo, style)

    threads = [threading.Thread(target=client, args=(i, *job), daemon=True) for i, job in enumerate(jobs)]
    for thread in threads:
        thread.start()
    with suppress(threading.BrokenBarrierError):  # a client that could not connect: its Result says so
        barrier.wait(timeout=60)
    if on_sent:
        on_sent.set()
    for thread in threads:
        thread.join(300)
    return [r or Result(jobs[i][0], jobs[i][1], 0, NAN, NAN, problem="client thread did not finish")
            for i, r in enumerate(results)]


def wait_idle(http: httpx.Client, url: str, timeout: float = 120.0) -> dict[str, float]:
    deadline = time.monotonic() + timeout
    while True:
        values = metrics(http, url)
        if (values["cutq_inflight"] == 0 and values["cutq_queue_depth"] == 0) or time.monotonic() > deadline:
            return values
        time.sleep(0.1)


def alone(server: Server, args: argparse.Namespace, items: list[Photo]) -> list[Result]:
    """Control: with both workers busy and the queue full (held by background requests), refuse --alone requests
    one at a time, each followed by a GET /healthz, so a lone 503's cost is known."""
    filled = [(items[i % len(items)], "v1-raw") for i in range(args.max_concurrency + args.max_queue)]
    filler = threading.Thread(target=fire, args=(server, filled, args.model), daemon=True)
    filler.start()
    out = []
    with httpx.Client(timeout=120) as http:
        deadline = time.monotonic() + 60
        while metrics(http, server.url)["cutq_queue_depth"] < args.max_queue and time.monotonic() < deadline:
            time.sleep(0.005)
        for i in range(args.alone):
            photo, style = items[i % len(items)], STYLES[i % 2]
            out.append(timed_send(http, prepare(http, server.url, photo, args.model, style), photo, style))
            out.append(timed_send(http, prepare(http, server.url, None, args.model, "healthz"), None, "healthz"))
        filler.join(300)
        wait_idle(http, server.url)
    return out


def ms_row(label: str, results: list[Result]) -> tuple:
    """label, count, then p50/p95/max in ms of: the whole exchange, the upload, the rest."""
    parts = ([r.seconds * 1000 for r in results], [r.upload * 1000 for r in results],
             [(r.seconds - r.upload) * 1000 for r in results])
    return (label, len(results), *(f"{value:.1f}" for values in parts
                                   for value in (percentile(values, 50), percentile(values, 95), max(values, default=NAN))))


MS_HEADERS = ["requests", "n", "total p50", "p95", "max", "upload p50", "p95", "max", "rest p50", "p95", "max"]


def burst(args: argparse.Namespace, items: list[Photo], checks: Checks) -> dict:
    extra = ["--max-concurrency", str(args.max_concurrency), "--max-queue", str(args.max_queue)]
    print(f"\n(a) burst: {args.rounds} x {args.clients} clients at once, --max-concurrency {args.max_concurrency} "
          f"--max-queue {args.max_queue}, model {args.model}", flush=True)
    admitted = args.max_concurrency + args.max_queue
    jobs = [(items[i % len(items)], STYLES[i % 2]) for i in range(args.clients)]
    rounds, every = [], []
    with cutq_server([args.model], *extra, name="load-burst") as server, httpx.Client(timeout=60) as http:
        before = metrics(http, server.url)
        for round_no in range(1, args.rounds + 1):
            started = time.perf_counter()
            results = fire(server, jobs, args.model)
            wall = time.perf_counter() - started
            every += results
            ok = [r for r in results if r.status == 200]
            refused = [r for r in results if r.status == 503]
            rounds.append({"round": round_no, "ok": len(ok), "refused": len(refused),
                           "other": len(results) - len(ok) - len(refused),
                           "slowest_ok_s": max((r.seconds for r in ok), default=NAN), "round_s": wall})
            print(f"  round {round_no}: {len(ok)} x 200, {len(refused)} x 503 in {wall:.1f} s", flush=True)
            checks.add(f"round {round_no}: at least concurrency + queue served", len(ok) >= admitted,
                       f"{len(ok)} x 200, {len(refused)} x 503; {admitted} fit (503s if all arrive before one finishes: "
                       f"{max(0, args.clients - admitted)})")
            wait_idle(http, server.url)
        after = metrics(http, server.url)
        print("  controls ...", flush=True)
        lone = alone(server, args, items)
        unknown = fire(server, jobs, "no-such-model")
        health_burst = fire(server, [(None, "healthz")] * args.clients, args.model)
        peak = metrics(http, server.url)["cutq_inflight_peak"]
        alive = server.alive()
        health = http.get(server.url + "/healthz").status_code if alive else 0
        normal = post_cutout(http, server.url, items[0], args.model) if alive else None
        exit_status = server.stop()

    refused = [r for r in every if r.status == 503]
    rows = [ms_row(f"burst 503, {style}", [r for r in refused if r.style == style]) for style in STYLES]
    rows += [ms_row("burst 503, all", refused),
             ms_row("control: 503 alone, queue full", [r for r in lone if r.style != "healthz" and r.status == 503]),
             ms_row("control: GET /healthz between those", [r for r in lone if r.style == "healthz"]),
             ms_row(f"control: {args.clients} at once, unknown model (422, no inference)", unknown),
             ms_row(f"control: {args.clients} x GET /healthz at once (no inference)", health_burst)]
    print("\n" + table(["round", "200", "503", "other", "slowest 200 s", "round s"],
                       [(r["round"], r["ok"], r["refused"], r["other"], f"{r['slowest_ok_s']:.1f}", f"{r['round_s']:.1f}")
                        for r in rounds]))
    print("\nlatency in ms: send -> whole response, of which the client writing the body (upload) and the rest")
    print(table(MS_HEADERS, rows))

    statuses = sorted({r.status for r in every})
    refused_ms = [r.seconds * 1000 for r in refused]
    bad_png = [f"{r.photo.name}: {r.problem}" for r in every if r.status == 200 and r.problem]
    others = [f"{r.status}: {r.problem}" for r in every if r.status not in (200, 503)]
    checks.add("every response 200 or 503", not others, "; ".join(others[:3]) or f"statuses {statuses}")
    checks.add(f"503s within {args.refuse_ms:g} ms", bool(refused_ms) and max(refused_ms) <= args.refuse_ms,
               f"{len(refused_ms)} refused: max {max(refused_ms, default=NAN):.1f} ms, "
               f"p95 {percentile(refused_ms, 95):.1f} ms, p50 {percentile(refused_ms, 50):.1f} ms")
    checks.add("503s carry Retry-After", all(r.retry_after for r in refused),
               f"values {sorted({r.retry_after for r in refused} - {None})}")
    checks.add("every 200 a valid PNG cut-out", not bad_png,
               "; ".join(bad_png[:3]) or f"{sum(r.status == 200 for r in every)} checked")
    counted = after["cutq_refused_total"] - before["cutq_refused_total"]
    checks.add("cutq_refused_total counts the 503s", counted == len(refused), f"metrics {counted:.0f}, client {len(refused)}")
    checks.add("cutq_inflight_peak <= max-concurrency", peak <= args.max_concurrency,
               f"peak {peak:.0f}, limit {args.max_concurrency}")
    checks.add("alive after: /healthz and a normal request", alive and health == 200 and normal is not None
               and check_cutout(normal, items[0]) is None,
               f"alive {alive}, /healthz {health}, cut-out {normal.status_code if normal is not None else '-'}")
    tracebacks = server.log.read_text(errors="replace").count("Traceback")
    checks.add("no traceback in the burst server's log", tracebacks == 0, f"{tracebacks} in {server.log}")
    checks.add("burst server exits 0 on SIGTERM", exit_status == 0, f"exit status {exit_status}")
    return {"rounds": rounds, "latency_ms": [dict(zip(MS_HEADERS, row, strict=True)) for row in rows]}


def sigterm(args: argparse.Namespace, items: list[Photo], checks: Checks) -> dict:
    queue = max(args.max_queue, args.inflight)
    extra = ["--max-concurrency", str(args.max_concurrency), "--max-queue", str(queue)]
    print(f"\n(b) SIGTERM with {args.inflight} requests in flight, --max-concurrency {args.max_concurrency} "
          f"--max-queue {queue}, model {args.model}", flush=True)
    jobs = [(items[i % len(items)], "v1-multipart") for i in range(args.inflight)]
    with cutq_server([args.model], *extra, name="load-sigterm") as server, httpx.Client(timeout=120) as http:
        reference = {photo.name: post_cutout(http, server.url, photo, args.model).content for photo, _ in jobs}
        sent = threading.Event()
        box: dict[str, object] = {}

        def terminate() -> None:
            """Once every request is running or queued, SIGTERM; remember what the server held at that moment."""
            sent.wait(60)
            deadline = time.monotonic() + 60
            with httpx.Client(timeout=10) as watcher:
                while time.monotonic() < deadline:
                    values = metrics(watcher, server.url)
                    held = values["cutq_inflight"] + values["cutq_queue_depth"]
                    if held >= args.inflight:
                        server.process.send_signal(signal.SIGTERM)
                        box.update(at=time.perf_counter(), inflight=values["cutq_inflight"], queued=values["cutq_queue_depth"])
                        return
                    time.sleep(0.01)
            box["error"] = "the requests never were all in flight at once"

        killer = threading.Thread(target=terminate, daemon=True)
        killer.start()
        results = fire(server, jobs, args.model, on_sent=sent)
        answered = time.perf_counter()
        killer.join(5)
        try:
            exit_status = server.process.wait(120)
        except subprocess.TimeoutExpired:  # a hung server is a failed check; cutq_server's exit kills it
            exit_status = None
        exited = time.perf_counter()
    problems = []
    for r in results:
        if r.status != 200:
            problems.append(f"{r.photo.name}: status {r.status} {r.problem or ''}")
        elif r.problem or r.content != reference[r.photo.name]:
            problems.append(f"{r.photo.name}: {r.problem or 'bytes differ from the idle server answer'}")
    held = f"{box.get('inflight', 0):.0f} running + {box.get('queued', 0):.0f} queued" if "at" in box else box.get("error")
    checks.add(f"{args.inflight} in flight at SIGTERM", "at" in box, str(held))
    checks.add(f"all {args.inflight} complete with 200 and the correct PNG", not problems,
               "; ".join(problems[:3]) or f"all equal to the idle server's cut-outs, last one "
               f"{(answered - box['at']) if 'at' in box else float('nan'):.1f} s after SIGTERM")
    checks.add("process exits 0 after SIGTERM", exit_status == 0,
               f"exit status {exit_status}, {exited - box['at'] if 'at' in box else float('nan'):.1f} s after SIGTERM")
    return {"held_at_sigterm": held, "statuses": [r.status for r in results], "exit_status": exit_status}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="u2net-int8",
                        help="variant to serve (default: u2net-int8; a slow one keeps the burst ahead of the workers)")
    parser.add_argument("--clients", type=int, default=64, help="(a) clients released at once (default: 64; at most 256)")
    parser.add_argument("--rounds", type=int, default=2, help="(a) bursts (default: 2; at most 10)")
    parser.add_argument("--max-concurrency", type=int, default=2, help="server's --max-concurrency (default: 2)")
    parser.add_argument("--max-queue", type=int, default=16, help="(a) server's --max-queue (default: 16)")
    parser.add_argument("--refuse-ms", type=float, default=100.0, help="(a) slowest allowed 503 (default: 100 ms)")
    parser.add_argument("--alone", type=int, default=10,
                        help="(a) control: refusals sent one at a time with the queue full (default: 10; at most 50)")
    parser.add_argument("--inflight", type=int, default=8, help="(b) requests in flight at SIGTERM (default: 8; at most 64)")
    parser.add_argument("--only", choices=["burst", "sigterm"], help="run one part only")
    parser.add_argument("--davis", type=int, default=5, help="DAVIS scenes among the photos (default: 5)")
    parser.add_argument("--json", type=Path, help="also write the figures and checks as JSON here")
    args = parser.parse_args()
    if not (1 <= args.clients <= 256 and 1 <= args.rounds <= 10 and 1 <= args.inflight <= 64 and 1 <= args.alone <= 50):
        parser.error("need 1 <= --clients <= 256, 1 <= --rounds <= 10, 1 <= --inflight <= 64, 1 <= --alone <= 50")
    items = photos(args.davis)
    print(f"load: CPU {cpu_description()}\nphotos: {describe_photos(items)}", flush=True)
    checks, out = Checks(), {}
    try:
        if args.only != "sigterm":
            out["burst"] = burst(args, items, checks)
        if args.only != "burst":
            out["sigterm"] = sigterm(args, items, checks)
    except RuntimeError as exc:
        print(f"load: {exc}", file=sys.stderr)
        return 2
    print()
    status = checks.report()
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"date": now(), "cpu": cpu_description(), "command": " ".join(sys.argv), **out,
                                         "checks": [{"name": n, "ok": ok, "detail": d} for n, ok, d in checks.results]},
                                        indent=2, default=str))
    return status


if __name__ == "__main__":
    sys.exit(main())
