"""What the benchmark ran on, recorded next to every figure: timings mean nothing without the machine.

Linux-first (reads /proc/cpuinfo); elsewhere the CPU fields fall back to `platform`. The VNNI flags matter
because INT8 speed-ups depend on them: without VNNI, ONNX Runtime's INT8 kernels gain much less.

`python -m cutq.benchmarks.machine --baseline-dir benchmarks/baselines` names this CPU's folder of saved
hot-path runs for `make bench` and `make bench-baseline` (docs/benchmarks.md#regression-check).
"""

from __future__ import annotations

import argparse
import importlib.metadata
import os
import platform
import re
import sys
from collections.abc import Sequence
from pathlib import Path

import onnxruntime as ort

INTERESTING_FLAGS = ("avx2", "fma", "avx512f", "avx512_vnni", "avx_vnni", "avx512_bf16", "amx_int8", "asimddp")


def _cpuinfo() -> dict[str, str]:
    """The first processor block of /proc/cpuinfo as key -> value ({} when unavailable)."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return {}
    fields: dict[str, str] = {}
    for line in text.split("\n\n", 1)[0].splitlines():
        key, _, value = line.partition(":")
        fields[key.strip()] = value.strip()
    return fields


def _version(dist: str) -> str | None:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


def machine_info() -> dict[str, object]:
    """CPU model, the SIMD flags that decide INT8 speed, cores, memory, library versions and the load average."""
    info = _cpuinfo()
    flags = set((info.get("flags") or info.get("Features") or "").split())
    try:
        mem_kb = next(int(line.split()[1]) for line in Path("/proc/meminfo").read_text().splitlines()
                      if line.startswith("MemTotal:"))
    except (OSError, StopIteration, ValueError):
        mem_kb = 0
    return {
        "cpu_model": info.get("model name") or platform.processor() or platform.machine(),
        "flags": sorted(flags.intersection(INTERESTING_FLAGS)),
        "vnni": bool(flags & {"avx512_vnni", "avx_vnni"}),
        "cores": os.cpu_count(),
        "memory_gb": round(mem_kb / 2**20, 1) if mem_kb else None,
        "os": f"{platform.system()} {platform.release()}",
        "python": platform.python_version(),
        "onnxruntime": ort.__version__,
        "cutq": _version("cutq"),
        "cutq_runtime": _version("cutq-runtime"),
        "rembg": _version("rembg"),
        "load_average_start": round(os.getloadavg()[0], 2) if hasattr(os, "getloadavg") else None,
    }


def describe(machine: dict[str, object]) -> str:
    """One line for tables and the README: `AMD EPYC ..., 2 cores, AVX-512 VNNI, onnxruntime 1.31.1`."""
    vnni = "VNNI" if machine.get("vnni") else "no VNNI"
    return (f"{machine['cpu_model']}, {machine['cores']} cores, {vnni}, {machine.get('memory_gb')} GB, "
            f"onnxruntime {machine['onnxruntime']}")


def cpu_id() -> str:
    """This CPU as a folder name: its model, family and model numbers, and cores (`AMD-EPYC-family25-model17-2cpus`).

    A timing is only comparable with one taken on the same CPU, so each CPU keeps its own baseline. The numbers are
    there because virtual machines often report a bare "AMD EPYC" for several generations (lscpu's "CPU family" and
    "Model" tell them apart); Arm boards report no name, only the implementer and part. The core count is there
    because the suites' inference uses every core.
    """
    info = _cpuinfo()
    name = info.get("model name") or platform.processor() or platform.machine() or "unknown-cpu"
    name = re.sub(r"\((R|TM)\)|\bCPU\b|@.*$", " ", name, flags=re.IGNORECASE)
    parts = [name]
    if info.get("cpu family") and info.get("model"):
        parts += [f"family{info['cpu family']}", f"model{info['model']}"]
    elif info.get("CPU implementer") and info.get("CPU part"):
        parts += [f"implementer{info['CPU implementer']}", f"part{info['CPU part']}"]
    parts.append(f"{os.cpu_count()}cpus")
    return re.sub(r"[^A-Za-z0-9.]+", "-", " ".join(parts)).strip("-")


def main(argv: Sequence[str] | None = None) -> int:
    """Print this CPU's baseline folder under --baseline-dir; exit 3 when it holds no run pytest-benchmark would compare.

    pytest-benchmark keeps runs in a subfolder named after the OS, Python and word size
    (`Linux-CPython-3.11-64bit`) and compares only within it, so a baseline counts only when that subfolder holds one;
    the Makefile then skips the regression check instead of failing on a missing baseline.
    """
    parser = argparse.ArgumentParser(prog="python -m cutq.benchmarks.machine", description=main.__doc__)
    parser.add_argument("--baseline-dir", required=True, type=Path, help="folder of per-CPU baselines")
    args = parser.parse_args(argv)
    from pytest_benchmark.utils import get_machine_id

    store = args.baseline_dir / cpu_id()
    print(store)
    return 0 if any((store / get_machine_id()).glob("[0-9][0-9][0-9][0-9]_*.json")) else 3


if __name__ == "__main__":
    sys.exit(main())
