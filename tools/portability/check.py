"""Cross-CPU check: the runtime's masks on emulated x86 AVX2, x86 SSE4.2, Cortex-A72 and Cortex-A76 against this host.

Usage: .venv/bin/python tools/portability/check.py [--models "u2netp u2netp-int8"] [--cpus ...] [--photos ...]
(or `make portability MODELS="..."`). Exit status: 0 every CPU within tolerance; 1 a CPU out of tolerance, a run
failed, or a saturation control says the emulation proves nothing; 2 bad arguments; 3 a download failed
(registry unreachable). See docs/portability.md.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import shutil
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import control
import envs
import numpy as np
from PIL import Image

from cutq_runtime.errors import CutqError
from cutq_runtime.models import cache_dir, read_manifest, resolve

REPO = Path(__file__).resolve().parents[2]
DEFAULT_MODELS = ("u2netp", "u2netp-int8", "u2net-int8")  # FP32 u2net: ~10 min per emulated CPU, so on request only
DEFAULT_PHOTOS = (REPO.parent / "shared/data/davis-val/images/blackswan_00000.jpg", REPO / "calibration_data/astronaut.png",
                  REPO / "calibration_data/chelsea.png")
INT8_LIMIT, FP32_LIMIT = 2, 1e-4  # INT8: 8-bit mask levels; FP32: the raw fused map (sigmoid, in [0, 1])
QEMU_NOISE = "TCG doesn't support requested feature"


def is_quantized(path: Path) -> bool:
    steps = (read_manifest(path) or {}).get("steps") or []
    return any(isinstance(step, dict) and step.get("step") == "quantize" for step in steps) or "int" in path.stem


def pick_variants(requested: list[str]) -> list[tuple[str, Path]]:
    """(name, file) per variant, resolved as the runtime resolves names; default: DEFAULT_MODELS found in the cache."""
    def present(name: str) -> bool:
        try:
            return bool(resolve(name, cache_dir(), pull_missing=False))
        except CutqError:
            return False

    variants = []
    for name in requested or [name for name in DEFAULT_MODELS if present(name)] or ["u2netp"]:
        try:
            resolved = resolve(name, cache_dir())
        except CutqError as exc:
            if "could not fetch" in str(exc) or "download" in str(exc):
                raise envs.SetupError(str(exc)) from exc
            sys.exit(f"portability: {exc}")
        variants.append((resolved.name, resolved.path))
    return variants


def write_jobs(variants, cpus: list[str], photos: list[Path], results: Path, cache: Path) -> list[tuple[int, str, Path]]:
    """One worker folder per (CPU, variant) and per CPU for the controls: [(cost estimate, cpu, folder)]."""
    controls = control.build(cache / "controls")
    jobs = []
    for cpu in cpus:
        for name, path in variants:
            shots = photos_for(path, photos)
            job = {"variant": {"path": str(path), "photos": [str(p) for p in shots]}, "threads": 1, "check_api": cpu == "native"}
            cost = len(shots) * (1 if is_quantized(path) else 5) * (1 if "u2netp" in path.name else 3)
            jobs.append((cost, cpu, results / cpu / name, job))
        jobs.append((0, cpu, results / cpu / "controls", {"controls": [str(p) for p in controls]}))
    for _, _, folder, job in jobs:
        folder.mkdir(parents=True)
        (folder / "job.json").write_text(json.dumps(job))
    return [job[:3] for job in jobs]


def photos_for(path: Path, photos: list[Path]) -> list[Path]:
    """INT8 u2netp sees every photo (saturation depends on content); FP32 (5x slower emulated) and u2net (3x) the first."""
    return photos if "u2netp" in path.name and is_quantized(path) else photos[:1]


def run_jobs(jobs, commands: dict, parallel: int, timeout: float) -> dict[Path, str]:
    """Run the workers, longest first, `parallel` at a time; {folder: error} for those that failed."""
    def run(folder: Path, argv: list[str], env: dict) -> str | None:
        try:
            proc = subprocess.run([*argv, str(folder)], env=env, capture_output=True, text=True, timeout=timeout)
        except subprocess.TimeoutExpired:
            return f"timed out after {timeout:.0f} s"
        stderr = " ".join(line for line in proc.stderr.splitlines() if QEMU_NOISE not in line)
        return f"exit {proc.returncode}: {stderr[-300:]}" if proc.returncode else None

    failures = {}
    with ThreadPoolExecutor(max_workers=parallel) as pool:
        todo = sorted(jobs, key=lambda job: -job[0])
        for (_, cpu, folder), error in zip(todo, pool.map(lambda job: run(job[2], *commands[job[1]]), todo), strict=True):
            print(f"  {cpu:<11} {folder.name:<16} {error or 'done'}", flush=True)
            if error:
                failures[folder] = error
    return failures


def mask_rows(variants, cpus: list[str], photos: list[Path], results: Path, failures: dict, limits) -> list[tuple]:
    """variant x CPU: max |diff| of the raw map and of the 8-bit mask against native, over the photos."""
    (int8_limit, fp32_limit), rows = limits, []
    for name, path in variants:
        quantized, shots = is_quantized(path), photos_for(path, photos)
        limit = f"mask <= {int8_limit}/255" if quantized else f"raw <= {fp32_limit:g}"
        for cpu in cpus:
            native, other = results / "native" / name, results / cpu / name
            if native in failures or other in failures:
                rows.append((name, cpu, "-", "-", "-", "-", limit, "-", "ERROR"))
                continue
            raw, masks = [], []
            for shot in shots:
                raw.append(np.abs(np.load(native / f"{shot.stem}.npy") - np.load(other / f"{shot.stem}.npy")).max())
                a, b = (np.asarray(Image.open(folder / f"{shot.stem}.png"), dtype=np.int16) for folder in (native, other))
                masks.append(np.abs(a - b))
            mask_max, over = max(int(m.max()) for m in masks), np.mean([(m > 2).mean() for m in masks])
            ok = mask_max <= int8_limit if quantized else max(raw) <= fp32_limit
            seconds = json.loads((other / "info.json").read_text())["seconds"]
            rows.append((name, cpu, f"{max(raw):.1e}", mask_max, f"{np.mean([m.mean() for m in masks]):.3f}", f"{over:.2%}",
                         limit, f"{np.mean(seconds):.0f}", "pass" if ok else "FAIL"))
    return rows


def control_rows(cpus: list[str], results: Path, failures: dict) -> tuple[list[tuple], list[str]]:
    """Per CPU: the Conv controls' kernels against their exact arithmetic, the Resize control against the host's."""
    rows, problems = [], []
    for cpu in cpus:
        folder = results / cpu / "controls"
        if folder in failures:
            rows.append((cpu, "-", "-", "-", "-", "ERROR", "-", "-"))
            problems.append(f"{cpu}: the control run failed: {failures[folder]}")
            continue
        info = json.loads((folder / "info.json").read_text())
        diffs = {}
        for name in control.WEIGHT_RANGES:
            kernels, exact = (np.load(folder / f"control-{name}.{level}.npy").astype(int) for level in ("all", "disable"))
            diffs[name] = (int(np.abs(kernels - exact).max()), float((kernels != exact).mean()))
        seen = [f for f in ("AVX2", "AVX512F", "AVX512VNNI", "ASIMDDP") if f in info["cpu_features"]]
        ops = sorted({op for name in control.WEIGHT_RANGES for op in info["control_ops"][f"control-{name}"]})
        resize = {name: np.load(folder / f"control-{name}.all.npy").astype(int) -
                  np.load(results / "native" / "controls" / f"control-{name}.all.npy").astype(int)
                  for name in ("resize", "resize-ties")}
        fused = "QLinearConv" if "QLinearConv" in ops else "not fused: " + ", ".join(ops)
        verdict = "saturates" if diffs["full"][0] else "exact"
        if diffs["7bit"][0] or "QLinearConv" not in ops:
            verdict = "FAIL"
            problems.append(f"{cpu}: the 7-bit control is not exact, or its Conv did not run as an integer kernel")
        if cpu == "x86-avx2" and not diffs["full"][0]:
            verdict = "FAIL: does not saturate"
            problems.append("x86-avx2: the full-range control does not saturate, so the emulated AVX2 CPU does not run "
                            "the saturating u8 x s8 kernel; the x86-avx2 rows prove nothing about real AVX2 machines")
        if resize["resize-ties"].any():
            problems.append(f"{cpu}: the quantized Resize rounds differently from this host even after the ties step")
        full = f"{diffs['full'][0]} ({diffs['full'][1]:.0%} of outputs)"
        resized = [f"{np.abs(d).max()} ({np.mean(d != 0):.2%} of outputs)" for d in resize.values()]
        rows.append((cpu, ", ".join(seen) or "baseline only", fused, full, diffs["7bit"][0], verdict, *resized))
    return rows, problems


def host_cpu() -> str:
    lscpu = subprocess.run(["lscpu"], capture_output=True, text=True, check=False).stdout
    fields = {key.strip(): value.strip() for key, _, value in (line.partition(":") for line in lscpu.splitlines())}
    isa = [flag for flag in ("avx2", "avx512f", "avx512_vnni", "avx_vnni") if flag in fields.get("Flags", "").split()]
    model = f"{fields.get('Model name', '?')}, family {fields.get('CPU family', '?')} model {fields.get('Model', '?')}"
    return f"{model} ({fields.get('CPU(s)', '?')} CPUs; {', '.join(isa)})"


def table(header: tuple[str, ...], rows: list[tuple]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return "\n".join([*lines, *("| " + " | ".join(map(str, row)) + " |" for row in rows)]) + "\n"


def report(rows, controls, problems, photos, qemu_version, minutes, footprint) -> str:
    import onnxruntime

    cpus = "; ".join(f"{c.name} = {c.qemu_cpu or 'the host'} ({c.about})" for c in envs.CPUS.values())
    out = [f"Measured {datetime.date.today()} on {host_cpu()}, {qemu_version}, onnxruntime {onnxruntime.__version__}, "
           f"numpy {np.__version__}, Pillow {Image.__version__}: {minutes:.1f} min wall.\n",
           f"CPUs: {cpus}.\n", f"Photos: {', '.join(p.name for p in photos)} (FP32 and u2net-size models: the first only).\n",
           "Masks against this host (mask columns in 8-bit levels; seconds per inference under emulation, one thread):\n",
           table(("variant", "CPU", "raw max diff", "mask max diff", "mask mean diff", "pixels > 2", "limit",
                  "s/inference", "result"), rows),
           "Controls (u8 levels). Saturation: each Conv control's kernels (ORT_ENABLE_ALL) against its exact arithmetic "
           "(ORT_DISABLE_ALL) on the same CPU. Resize: the quantized bilinear upsampling against this host's output, as "
           "quantized and after the ties step:\n",
           table(("CPU", "numpy sees", "Conv runs as", "full-range s8: max diff", "7-bit s8: max diff", "saturation",
                  "u8 bilinear Resize vs host", "after the ties step"), controls)]
    out += [f"**{problem}**\n" for problem in problems]
    if footprint:
        out += ["aarch64 install footprint (`du -sh` after `pip install --platform manylinux_2_28_aarch64 --target`):\n",
                table(("part", "as installed", "without __pycache__"), footprint)]
    return "\n".join(out)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="", help="variant names or model files, space separated "
                        f"(default: those of {', '.join(DEFAULT_MODELS)} in the model cache)")
    parser.add_argument("--cpus", nargs="+", choices=list(envs.CPUS)[1:], default=list(envs.CPUS)[1:])
    parser.add_argument("--photos", nargs="+", type=Path, help="photos for INT8 u2netp; other models use the first")
    parser.add_argument("--jobs", type=int, default=os.cpu_count() or 2, help="runs at once, one ONNX Runtime thread each")
    parser.add_argument("--timeout", type=float, default=1800, help="seconds allowed per run")
    parser.add_argument("--int8-limit", type=int, default=INT8_LIMIT, help="INT8: max mask difference, 8-bit levels")
    parser.add_argument("--fp32-limit", type=float, default=FP32_LIMIT, help="FP32: max raw fused-map difference")
    parser.add_argument("--cache", type=Path, default=REPO / ".cache" / "portability", help="downloads, sysroot, wheels")
    parser.add_argument("--results", type=Path, help="masks and portability.md (default: <cache>/results)")
    args = parser.parse_args()
    limits = args.int8_limit, args.fp32_limit
    started = time.monotonic()
    photos = args.photos or [p for p in DEFAULT_PHOTOS if p.is_file()]
    if missing := [p for p in photos if not p.is_file()]:
        sys.exit(f"portability: no such photo: {', '.join(map(str, missing))}")
    try:
        qemu_version = envs.ensure_qemu()
        variants = pick_variants(args.models.split())
        commands = {cpu: envs.command(envs.CPUS[cpu], args.cache, REPO) for cpu in ["native", *args.cpus]}
        arm = any(envs.CPUS[cpu].arch == "aarch64" for cpu in args.cpus)
        footprint = envs.footprint(args.cache, REPO) if arm else []
    except envs.SetupError as exc:
        print(f"portability: {exc}", file=sys.stderr)
        return envs.NETWORK_EXIT

    results = args.results or args.cache / "results"
    shutil.rmtree(results, ignore_errors=True)
    jobs = write_jobs(variants, ["native", *args.cpus], photos, results, args.cache)
    print(f"portability: {', '.join(name for name, _ in variants)} on {', '.join(args.cpus)}; "
          f"photos {', '.join(p.name for p in photos)}", flush=True)
    failures = run_jobs([job for job in jobs if job[1] == "native"], commands, args.jobs, args.timeout)
    if not failures:
        failures = run_jobs([job for job in jobs if job[1] != "native"], commands, args.jobs, args.timeout)
    else:
        args.cpus = []

    rows = mask_rows(variants, args.cpus, photos, results, failures, limits)
    controls, problems = control_rows(["native", *args.cpus], results, failures)
    markdown = report(rows, controls, problems, photos, qemu_version, (time.monotonic() - started) / 60, footprint)
    (results / "portability.md").write_text(markdown)
    failed = bool(failures or problems) or any(row[-1] != "pass" for row in rows)
    print(f"\n{markdown}\nportability: {'FAILED' if failed else 'passed'}; table in {results / 'portability.md'}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
