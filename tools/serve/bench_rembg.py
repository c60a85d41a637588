"""`cutq serve` against `rembg s`: the same photos, the same machine, the same run.

One server process per variant, all on 127.0.0.1 and all alive for the whole run: cutq serving u2net-int8,
u2netp-int8 and u2net-p50-fast-int8 (those in the model cache; the server's defaults otherwise), and `rembg s
--no-ui` serving u2net (and u2netp for reference) from the very same FP32 .onnx files (U2NET_HOME points at
symlinks into cutq's cache). rembg runs from its own venv, .cache/serve-bench/rembg-venv, made on first use
with `pip install "rembg[cpu,cli]==<the version in this venv>"`.

For each concurrency (default 1, 2, 8) every server gets --requests cut-outs (POST /api/remove, rembg's form,
which both serve), split into --rounds rounds; the servers take turns round by round, the order reversed every
other round, so drift on a shared machine hits all of them. Each client thread opens its connection and sends
one untimed warm-up first. Reported: throughput (images/s over the rounds' wall time), p50/p95 latency, peak
RSS (VmHWM) and threads of each server, and idle CPU of each over --idle-seconds after the load (utime+stime
from /proc/<pid>/stat). Every response is checked (200, a valid RGBA PNG of the photo's size) after timing.

Targets (exit status 1 when one is missed or a request failed): cutq u2net-int8 throughput >= 2x rembg u2net
at concurrency 2; the cutq u2net-int8 server's peak RSS <= 35% of the rembg u2net server's; every cutq server
idle below 1% of a core. Exit 2: a server did not start; 3: the rembg venv could not be installed.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import os
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx
from common import (
    HOST,
    INT8_VARIANTS,
    LOG_DIR,
    MB,
    REPO,
    Checks,
    Photo,
    Server,
    check_cutout,
    cpu_description,
    cpu_seconds,
    cutout_request,
    cutq_command,
    describe_photos,
    free_port,
    now,
    percentile,
    photos,
    proc_status,
    start,
    table,
)

from cutq_runtime.models import cache_dir

BENCH_DIR = REPO / ".cache" / "serve-bench"
SETUP_EXIT, START_EXIT = 3, 2


@dataclass
class Target:
    """One server under test."""

    engine: str  # "cutq" or "rembg"
    model: str
    server: Server | None = None
    points: dict[int, dict] = field(default_factory=dict)  # concurrency -> figures
    latencies: dict[int, list[float]] = field(default_factory=dict)
    walls: dict[int, float] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)

    @property
    def label(self) -> str:
        return f"{self.engine} {self.model}"


# ---------------------------------------------------------------- rembg's venv and models


def rembg_venv(venv: Path, version: str) -> Path:
    """The `rembg` executable of `venv`, installing rembg[cpu,cli]==version there first when it is missing."""
    exe = venv / "bin" / "rembg"
    if not exe.exists():
        print(f"setting up {venv} with rembg[cpu,cli]=={version} (once) ...", flush=True)
        steps = [[sys.executable, "-m", "venv", str(venv)],
                 [str(venv / "bin" / "python"), "-m", "pip", "install", "--quiet", "--upgrade", "pip"],
                 [str(venv / "bin" / "python"), "-m", "pip", "install", "--quiet", f"rembg[cpu,cli]=={version}"]]
        for step in steps:
            if subprocess.run(step, check=False).returncode != 0:
                print(f"bench_rembg: `{' '.join(step)}` failed (registry unreachable, or a dependency without a wheel "
                      "for this platform); see above", file=sys.stderr)
                sys.exit(SETUP_EXIT)
    help_text = subprocess.run([str(exe), "s", "--help"], capture_output=True, text=True, check=False).stdout
    if "--no-ui" not in help_text:
        print(f"bench_rembg: `rembg s` of {venv} has no --no-ui; this tool needs rembg >= 2.0.60 (the Gradio UI "
              "would add its own CPU and memory)", file=sys.stderr)
        sys.exit(SETUP_EXIT)
    return exe


def venv_versions(python: Path, *packages: str) -> dict[str, str]:
    code = "import importlib.metadata as m, sys; print(' '.join(m.version(p) for p in sys.argv[1:]))"
    out = subprocess.run([str(python), "-c", code, *packages], capture_output=True, text=True, check=True).stdout.split()
    return dict(zip(packages, out, strict=True))


def u2net_home(models: list[str]) -> Path:
    """A U2NET_HOME holding symlinks to cutq's FP32 downloads, so rembg loads the same files without downloading."""
    home = BENCH_DIR / "u2net-home"
    home.mkdir(parents=True, exist_ok=True)
    for model in models:
        source = cache_dir() / f"{model}.onnx"
        if not source.exists():
            sys.exit(f"bench_rembg: {source} is missing; run `.venv/bin/cutq pull {model}` (or make quantize) first")
        link = home / source.name
        if link.is_symlink() or link.exists():
            link.unlink()
        link.symlink_to(source)
    return home


# ---------------------------------------------------------------- load


def run_point(target: Target, items: list[Photo], concurrency: int, count: int, offset: int) -> None:
    """`count` requests from `concurrency` client threads (each warmed with one untimed request); adds the
    latencies and the wall time to the target's figures for this concurrency."""
    server = target.server
    barrier = threading.Barrier(concurrency + 1)
    lock = threading.Lock()
    queue = list(range(offset, offset + count))
    latencies: list[float] = []
    bodies: list[tuple[int, httpx.Response]] = []

    def client(number: int) -> None:
        with httpx.Client(timeout=httpx.Timeout(300.0)) as http:
            warm = items[(offset + number) % len(items)]
            try:
                http.send(cutout_request(http, server.url, warm, target.model, "rembg"))
            except httpx.HTTPError as exc:
                with lock:
                    target.problems.append(f"warm-up: {type(exc).__name__}: {exc}")
            barrier.wait()
            while True:
                with lock:
                    if not queue:
                        return
                    index = queue.pop(0)
                request = cutout_request(http, server.url, items[index % len(items)], target.model, "rembg")
                begun = time.perf_counter()
                try:
                    response = http.send(request)
                except httpx.HTTPError as exc:
                    with lock:
                        target.problems.append(f"{type(exc).__name__}: {exc}")
                    continue
                elapsed = time.perf_counter() - begun
                with lock:
                    latencies.append(elapsed)
                    bodies.append((index, response))

    threads = [threading.Thread(target=client, args=(n,), daemon=True) for n in range(concurrency)]
    for thread in threads:
        thread.start()
    barrier.wait(timeout=600)
    started = time.perf_counter()
    for thread in threads:
        thread.join()
    wall = time.perf_counter() - started
    for index, response in bodies:  # checked after the clock stopped, so the checking costs no server time
        if problem := check_cutout(response, items[index % len(items)]):
            target.problems.append(problem)
    target.latencies.setdefault(concurrency, []).extend(latencies)
    target.walls[concurrency] = target.walls.get(concurrency, 0.0) + wall


def summarise(target: Target, concurrency: int) -> dict:
    lat = target.latencies.get(concurrency, [])
    wall = target.walls.get(concurrency, 0.0)
    figures = {"requests": len(lat), "images_per_s": len(lat) / wall if wall else 0.0,
               "p50_ms": percentile(lat, 50) * 1000, "p95_ms": percentile(lat, 95) * 1000}
    target.points[concurrency] = figures
    return figures


# ---------------------------------------------------------------- report


def markdown(meta: dict, targets: list[Target], levels: list[int], checks: Checks) -> str:
    lines = [f"Measured {meta['date']} on {meta['cpu']}; machine shared with other jobs, so compare within a row "
             "group, not across runs.", "",
             f"- command: `{meta['command']}`",
             f"- cutq: `{meta['cutq_command']}` (one server per variant; onnxruntime {meta['cutq_onnxruntime']})",
             f"- rembg {meta['rembg_version']}: `{meta['rembg_command']}` (onnxruntime {meta['rembg_onnxruntime']}, "
             f"U2NET_HOME -> cutq's FP32 files)",
             f"- photos: {meta['photos']}",
             f"- {meta['requests']} requests per server and concurrency in {meta['rounds']} alternating rounds, "
             "POST /api/remove; latency = client send to full response", ""]
    headers = ["server"] + [f"c={c} {what}" for c in levels for what in ("img/s", "p50 ms", "p95 ms")]
    rows = [[t.label] + [cell for c in levels for cell in (f"{t.points[c]['images_per_s']:.2f}", f"{t.points[c]['p50_ms']:.0f}",
                                                            f"{t.points[c]['p95_ms']:.0f}")] for t in targets]
    lines += [table(headers, rows), ""]
    reference = {t.model: t for t in targets if t.engine == "rembg"}
    ratio_rows = []
    for t in targets:
        base = reference.get("u2netp" if t.model.startswith("u2netp") else "u2net")
        if t.engine == "cutq" and base:
            ratio_rows.append([f"{t.label} / {base.label}"] + [
                f"{t.points[c]['images_per_s'] / base.points[c]['images_per_s']:.2f}x" for c in levels])
    if ratio_rows:
        lines += [table(["throughput ratio"] + [f"c={c}" for c in levels], ratio_rows), ""]
    lines += [table(["server", "peak RSS (VmHWM) MB", "RSS at end MB", "threads", f"idle CPU over {meta['idle_seconds']:g} s"],
                    [[t.label, f"{meta['memory'][t.label]['VmHWM'] / MB:.0f}", f"{meta['memory'][t.label]['VmRSS'] / MB:.0f}",
                      meta["memory"][t.label]["Threads"], f"{meta['idle_cpu_percent'][t.label]:.2f}%"] for t in targets]), ""]
    lines += [table(["target", "result", "measured"], [(n, "PASS" if ok else "FAIL", d) for n, ok, d in checks.results])]
    return "\n".join(lines) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cutq-model", action="append", dest="cutq_models", metavar="NAME",
                        help=f"cutq variant, repeatable (default: those of {', '.join(INT8_VARIANTS)} in the cache)")
    parser.add_argument("--rembg-model", action="append", dest="rembg_models", metavar="NAME",
                        help="rembg model, repeatable (default: u2net and u2netp)")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 2, 8], help="client threads per point (default: 1 2 8)")
    parser.add_argument("--requests", type=int, default=32, help="timed requests per server and point (default: 32; at most 200)")
    parser.add_argument("--rounds", type=int, default=2, help="alternating rounds the requests are split into (default: 2)")
    parser.add_argument("--idle-seconds", type=float, default=20.0,
                        help="idle CPU window after the load (default: 20; /proc counts 10 ms ticks: 1 s cannot resolve 1%%)")
    parser.add_argument("--davis", type=int, default=5, help="DAVIS scenes among the photos (default: 5)")
    parser.add_argument("--rembg-venv", type=Path, default=BENCH_DIR / "rembg-venv",
                        help="venv for rembg[cpu,cli] (default: .cache/serve-bench/rembg-venv, made on first use)")
    parser.add_argument("--json", type=Path, help="write every figure as JSON here")
    parser.add_argument("--markdown", type=Path, help="write the tables as markdown here")
    args = parser.parse_args()
    if not (1 <= args.requests <= 200 and 1 <= args.rounds <= args.requests and all(1 <= c <= 32 for c in args.concurrency)):
        parser.error("need 1 <= --requests <= 200, 1 <= --rounds <= --requests, concurrency 1-32")
    cutq_models = args.cutq_models or [m for m in INT8_VARIANTS if (cache_dir() / f"{m}.onnx").exists()]
    rembg_models = args.rembg_models or ["u2net", "u2netp"]
    if not cutq_models:
        parser.error(f"none of {', '.join(INT8_VARIANTS)} is in {cache_dir()}; run make quantize or pass --cutq-model")
    try:
        version = importlib.metadata.version("rembg")
    except importlib.metadata.PackageNotFoundError:
        version = "2.0.86"
        print(f"rembg is not installed in this venv; using rembg=={version}", flush=True)
    exe = rembg_venv(args.rembg_venv, version)
    rembg_env = {**os.environ, "U2NET_HOME": str(u2net_home(rembg_models))}
    items = photos(args.davis)
    meta = {"date": now(), "cpu": cpu_description(), "command": " ".join([Path(sys.executable).name, *sys.argv]),
            "cutq_onnxruntime": importlib.metadata.version("onnxruntime"), "rembg_version": version,
            "rembg_onnxruntime": venv_versions(args.rembg_venv / "bin" / "python", "onnxruntime")["onnxruntime"],
            "photos": describe_photos(items), "requests": args.requests, "rounds": args.rounds,
            "idle_seconds": args.idle_seconds,
            "cutq_command": "python -m cutq_runtime serve --host 127.0.0.1 --port P --model NAME",
            "rembg_command": "rembg s --host 127.0.0.1 --port P --no-ui"}
    print(f"bench: {meta['cpu']}\nphotos: {meta['photos']}", flush=True)

    targets = [Target("cutq", m) for m in cutq_models] + [Target("rembg", m) for m in rembg_models]
    checks = Checks()
    try:
        for t in targets:
            port = free_port()
            if t.engine == "cutq":
                t.server = start(f"bench-cutq-{t.model}", cutq_command([t.model], port), port, "/readyz")
            else:
                command = [str(exe), "s", "--host", HOST, "--port", str(port), "--no-ui"]
                t.server = start(f"bench-rembg-{t.model}", command, port, "/api", env=rembg_env)
            print(f"  started {t.label} (pid {t.server.pid})", flush=True)
        per_round = [args.requests // args.rounds + (1 if r < args.requests % args.rounds else 0) for r in range(args.rounds)]
        for c in args.concurrency:
            offset = 0
            for number, count in enumerate(per_round):
                for t in targets if number % 2 == 0 else targets[::-1]:
                    run_point(t, items, c, count, offset)
                offset += count
            for t in targets:
                f = summarise(t, c)
                print(f"  c={c} {t.label:<28} {f['images_per_s']:6.2f} img/s  p50 {f['p50_ms']:6.0f} ms  "
                      f"p95 {f['p95_ms']:6.0f} ms", flush=True)
        if dead := [t.label for t in targets if not t.server.alive()]:
            print(f"bench_rembg: server(s) died during the run: {', '.join(dead)}; logs in {LOG_DIR}", file=sys.stderr)
            return 1
        time.sleep(2)
        before = {t.label: cpu_seconds(t.server.pid) for t in targets}
        began = time.perf_counter()
        time.sleep(args.idle_seconds)
        window = time.perf_counter() - began
        meta["idle_cpu_percent"] = {t.label: 100 * (cpu_seconds(t.server.pid) - before[t.label]) / window for t in targets}
        meta["memory"] = {t.label: proc_status(t.server.pid) for t in targets}
    except RuntimeError as exc:
        print(f"bench_rembg: {exc}", file=sys.stderr)
        return START_EXIT
    finally:
        for t in targets:
            if t.server:
                t.server.stop()

    by = {t.label: t for t in targets}
    for t in targets:
        checks.add(f"{t.label}: every response a valid cut-out", not t.problems, "; ".join(t.problems[:2]) or "all checked")
    cutq_big, rembg_big = by.get("cutq u2net-int8"), by.get("rembg u2net")
    if cutq_big and rembg_big and 2 in args.concurrency:
        ratio = cutq_big.points[2]["images_per_s"] / rembg_big.points[2]["images_per_s"]
        checks.add("cutq u2net-int8 throughput >= 2x rembg u2net at concurrency 2", ratio >= 2,
                   f"{ratio:.2f}x ({cutq_big.points[2]['images_per_s']:.2f} vs {rembg_big.points[2]['images_per_s']:.2f} img/s)")
    if cutq_big and rembg_big:
        mine, theirs = meta["memory"][cutq_big.label]["VmHWM"], meta["memory"][rembg_big.label]["VmHWM"]
        checks.add("cutq u2net-int8 server peak RSS <= 35% of rembg u2net's", mine <= 0.35 * theirs,
                   f"{100 * mine / theirs:.0f}% ({mine / MB:.0f} vs {theirs / MB:.0f} MB VmHWM)")
    idle = {t.label: meta["idle_cpu_percent"][t.label] for t in targets if t.engine == "cutq"}
    checks.add("every cutq server idle CPU < 1%", all(v < 1 for v in idle.values()),
               ", ".join(f"{k}: {v:.2f}%" for k, v in idle.items()))

    text = markdown(meta, targets, args.concurrency, checks)
    print("\n" + text)
    if args.markdown:
        args.markdown.parent.mkdir(parents=True, exist_ok=True)
        args.markdown.write_text(text)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({**meta, "servers": {t.label: {"points": t.points, "problems": t.problems,
                                                                       "command": t.server.command if t.server else None}
                                                             for t in targets},
                                         "checks": [{"name": n, "ok": ok, "detail": d} for n, ok, d in checks.results]},
                                        indent=2))
    return 0 if checks.ok else 1


if __name__ == "__main__":
    sys.exit(main())
