"""Soak test of `cutq serve`: thousands of real cut-outs through one server process, watching its memory and sessions.

Starts `python -m cutq_runtime serve` on 127.0.0.1 with u2netp-int8 (and any other --model given), sends
--requests cut-outs (default 2,000) of real photos from --clients threads, mixing the three request styles
(POST /v1/cutout multipart, /v1/cutout raw body, rembg's POST /api/remove alternately with om=true and bgc) and,
when more variants are served, sending every --other-every-th request to one of the others. Every --every
requests it reads the server's VmRSS from /proc/<pid>/status and GET /metrics, then checks:

  * RSS growth from request --baseline (100) to the last request <= --max-growth-mb (50 MB), both as /proc
    VmRSS and as the process_resident_memory_bytes gauge;
  * cutq_onnx_sessions == number of variants at every reading (a session per request would show);
  * cutq_inflight_peak <= --max-concurrency at every reading;
  * zero 5xx (client side and in the server's own counters), every response a 200 with a valid PNG of the
    photo's size, no traceback in the server log, and the server exits 0 on SIGTERM.

Exit status: 0 all checks passed, 1 a check failed, 2 the server did not start.
"""

from __future__ import annotations

import argparse
import json
import sys
import threading
import time
from collections import Counter, defaultdict
from dataclasses import dataclass
from pathlib import Path

import httpx
from common import (
    MB,
    Checks,
    Photo,
    Server,
    check_cutout,
    cpu_description,
    cutq_server,
    describe_photos,
    metrics,
    now,
    percentile,
    photos,
    post_cutout,
    proc_status,
    table,
)

STYLES = ("v1-multipart", "v1-raw", "rembg")


@dataclass(frozen=True)
class Job:
    index: int
    photo: Photo
    model: str
    style: str
    params: dict[str, str]
    colour: int  # the PNG colour type expected back: 6 RGBA, 0 a grey mask (om)


def plan(index: int, items: list[Photo], models: list[str], other_every: int) -> Job:
    """Request `index`: photo, variant and style cycle so every combination recurs through the soak."""
    model = models[0]
    others = models[1:]
    if others and other_every > 0 and index % other_every == other_every - 1:
        model = others[(index // other_every) % len(others)]
    style = STYLES[index % len(STYLES)]
    params, colour = {}, 6
    if style == "rembg" and index % 6 == 2:
        params, colour = {"om": "true"}, 0
    elif style == "rembg" and index % 6 == 5:
        params = {"bgc": "255,255,255,255"}
    return Job(index, items[index % len(items)], model, style, params, colour)


@dataclass
class Reading:
    requests: int  # responses received when the reading was taken
    seconds: float
    vmrss: int
    metrics_rss: int
    sessions: int
    inflight: int
    inflight_peak: int
    queue: int
    errors_5xx: int


class Soak:
    def __init__(self, server: Server, args: argparse.Namespace, items: list[Photo]) -> None:
        self.server, self.args, self.items = server, args, items
        self.lock = threading.Condition()
        self.next_index = 0
        self.done = 0
        self.statuses: Counter[int] = Counter()
        self.latency: dict[str, list[float]] = defaultdict(list)
        self.problems: list[str] = []
        self.started = time.perf_counter()

    def worker(self) -> None:
        with httpx.Client(timeout=httpx.Timeout(120.0)) as client:
            while True:
                with self.lock:
                    index = self.next_index
                    self.next_index += 1
                if index >= self.args.requests:
                    return
                job = plan(index, self.items, self.args.models, self.args.other_every)
                begun = time.perf_counter()
                try:
                    response = post_cutout(client, self.server.url, job.photo, job.model, job.style, **job.params)
                    status, problem = response.status_code, check_cutout(response, job.photo, job.colour)
                except httpx.HTTPError as exc:
                    status, problem = 0, f"{type(exc).__name__}: {exc}"
                elapsed = time.perf_counter() - begun
                with self.lock:
                    self.done += 1
                    self.statuses[status] += 1
                    self.latency[job.model].append(elapsed)
                    if problem and len(self.problems) < 20:
                        self.problems.append(f"request {index} ({job.model}, {job.style}, {job.photo.name}): {problem}")
                    self.lock.notify_all()

    def reading(self, client: httpx.Client) -> Reading:
        values = metrics(client, self.server.url)
        with self.lock:
            done, errors = self.done, sum(n for status, n in self.statuses.items() if status >= 500)
        return Reading(done, time.perf_counter() - self.started, proc_status(self.server.pid)["VmRSS"],
                       int(values["process_resident_memory_bytes"]), int(values["cutq_onnx_sessions"]),
                       int(values["cutq_inflight"]), int(values["cutq_inflight_peak"]), int(values["cutq_queue_depth"]),
                       errors)

    def run(self) -> list[Reading]:
        """Send every request; a reading at the start and each time another --every responses have arrived."""
        threads = [threading.Thread(target=self.worker, name=f"client-{i}", daemon=True) for i in range(self.args.clients)]
        readings = []
        with httpx.Client(timeout=60) as client:
            readings.append(self.reading(client))
            self.started = time.perf_counter()
            for thread in threads:
                thread.start()
            marks = sorted({*range(self.args.every, self.args.requests + 1, self.args.every), self.args.baseline,
                            self.args.requests})
            for mark in marks:
                with self.lock:
                    while self.done < mark and any(t.is_alive() for t in threads):
                        self.lock.wait(1.0)
                readings.append(self.reading(client))
                print(f"  {readings[-1].requests:>5} requests  {readings[-1].seconds:6.0f} s  VmRSS "
                      f"{readings[-1].vmrss / MB:6.1f} MB  sessions {readings[-1].sessions}", flush=True)
            for thread in threads:
                thread.join()
        return readings


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", action="append", dest="models", metavar="NAME",
                        help="variant to serve, repeatable; the first gets most requests (default: u2netp-int8)")
    parser.add_argument("--requests", type=int, default=2000, help="cut-outs to send (default: 2000; at most 20000)")
    parser.add_argument("--clients", type=int, default=4, help="concurrent client threads (default: 4)")
    parser.add_argument("--other-every", type=int, default=10,
                        help="every Nth request goes to one of the other variants, in turn (default: 10; 0: never)")
    parser.add_argument("--every", type=int, default=100, help="take a reading every N responses (default: 100)")
    parser.add_argument("--baseline", type=int, default=100, help="request count RSS growth is measured from (default: 100)")
    parser.add_argument("--max-growth-mb", type=float, default=50.0, help="allowed RSS growth (default: 50 MB)")
    parser.add_argument("--max-concurrency", type=int, default=2, help="server's --max-concurrency (default: 2)")
    parser.add_argument("--max-queue", type=int, default=16, help="server's --max-queue (default: 16)")
    parser.add_argument("--threads", type=int, help="server's --threads (default: the server's own)")
    parser.add_argument("--davis", type=int, default=5,
                        help="DAVIS scenes among the photos, beside calibration_data/*.png (default: 5)")
    parser.add_argument("--json", type=Path, help="also write the readings and checks as JSON here")
    args = parser.parse_args()
    args.models = args.models or ["u2netp-int8"]
    if not 0 < args.requests <= 20000 or args.clients < 1 or args.every < 1 or not 0 < args.baseline < args.requests:
        parser.error("need 0 < --requests <= 20000, --clients >= 1, --every >= 1 and 0 < --baseline < --requests")

    items = photos(args.davis)
    extra = ["--max-concurrency", str(args.max_concurrency), "--max-queue", str(args.max_queue),
             *(["--threads", str(args.threads)] if args.threads else [])]
    print(f"soak: {args.requests} requests, {args.clients} clients, models {', '.join(args.models)}\n"
          f"CPU: {cpu_description()}\nphotos: {describe_photos(items)}", flush=True)
    checks = Checks()
    try:
        with cutq_server(args.models, *extra, name="soak") as server:
            print(f"server: {' '.join(server.command)} (pid {server.pid}, log {server.log})", flush=True)
            soak = Soak(server, args, items)
            readings = soak.run()
            with httpx.Client(timeout=60) as client:
                final = soak.reading(client)
                served = metrics(client, server.url)
            alive = server.alive()
            exit_status = server.stop()
    except RuntimeError as exc:
        print(f"soak: {exc}", file=sys.stderr)
        return 2
    wall = readings[-1].seconds

    rows = [(r.requests, f"{r.seconds:.0f}", f"{r.vmrss / MB:.1f}", f"{r.metrics_rss / MB:.1f}", r.sessions, r.inflight,
             r.inflight_peak, r.queue, r.errors_5xx) for r in readings]
    print("\n" + table(["requests", "s", "VmRSS MB", "metrics RSS MB", "sessions", "inflight", "inflight peak", "queue",
                        "5xx"], rows))
    lat_rows = [(model, len(v), f"{percentile(v, 50) * 1000:.0f}", f"{percentile(v, 95) * 1000:.0f}",
                 f"{max(v) * 1000:.0f}") for model, v in soak.latency.items()]
    print("\n" + table(["model", "requests", "p50 ms", "p95 ms", "max ms"], lat_rows))
    print(f"\n{soak.done} responses in {wall:.0f} s ({soak.done / wall:.1f}/s), statuses {dict(soak.statuses)}\n")

    base = next(r for r in readings if r.requests >= args.baseline)
    last = readings[-1]
    after = [r for r in readings if r.requests >= args.baseline]
    for label, attr in (("VmRSS (/proc)", "vmrss"), ("process_resident_memory_bytes", "metrics_rss")):
        growth = (getattr(last, attr) - getattr(base, attr)) / MB
        peak = (max(getattr(r, attr) for r in after) - getattr(base, attr)) / MB
        checks.add(f"RSS growth, {label}", growth <= args.max_growth_mb,
                   f"{growth:+.1f} MB from request {base.requests} to {last.requests} (highest reading {peak:+.1f} MB; "
                   f"limit {args.max_growth_mb:g})")
    sessions = sorted({r.sessions for r in [*readings, final]})
    checks.add("cutq_onnx_sessions == variants", sessions == [len(args.models)],
               f"{len(readings) + 1} readings: {sessions}, expected {len(args.models)}")
    peak = max(r.inflight_peak for r in [*readings, final])
    checks.add("cutq_inflight_peak <= max-concurrency", peak <= args.max_concurrency,
               f"peak {peak}, limit {args.max_concurrency}")
    server_5xx = sum(v for k, v in served.items()  # /readyz answers 503 until the models are loaded, by design
                     if k.startswith("cutq_requests_total") and 'status="5' in k and 'route="/readyz"' not in k)
    errors = sum(n for status, n in soak.statuses.items() if status >= 500 or status == 0)
    checks.add("zero 5xx", errors == 0 and server_5xx == 0, f"client saw {errors}, server counted {server_5xx:.0f}")
    checks.add("every response a 200 with a valid PNG", not soak.problems and soak.done == args.requests,
               "; ".join(soak.problems[:3]) or f"{soak.done} checked")
    tracebacks = server.log.read_text(errors="replace").count("Traceback")
    checks.add("no traceback in the server log", tracebacks == 0, f"{tracebacks} in {server.log}")
    checks.add("server alive to the end, exits 0 on SIGTERM", alive and exit_status == 0, f"exit status {exit_status}")
    status = checks.report()
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({
            "date": now(), "cpu": cpu_description(), "command": " ".join(sys.argv), "server": " ".join(server.command),
            "photos": [p.name for p in items], "readings": [r.__dict__ for r in readings],
            "latency_ms": {m: {"p50": percentile(v, 50) * 1000, "p95": percentile(v, 95) * 1000}
                           for m, v in soak.latency.items()},
            "checks": [{"name": n, "ok": ok, "detail": d} for n, ok, d in checks.results]}, indent=2))
    return status


if __name__ == "__main__":
    sys.exit(main())
