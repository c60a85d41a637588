"""What the benchmark ran on, recorded next to every figure: timings mean nothing without the machine.

Linux-first (reads /proc/cpuinfo); elsewhere the CPU fields fall back to `platform`. The VNNI flags matter
because INT8 speed-ups depend on them: without VNNI, ONNX Runtime's INT8 kernels gain much less.
"""

from __future__ import annotations

import importlib.metadata
import os
import platform
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
