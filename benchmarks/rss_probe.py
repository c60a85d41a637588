"""Peak memory of one variant, measured in a process of its own: `python -m cutq.benchmarks.rss_probe`.

Peak RSS only goes up within a process, so measuring several variants in one process would charge each
with the largest before it. The probe imports only the engine it measures (cutq_runtime, or rembg),
loads the model with ONNX Runtime's default threads, removes the background of every image (bytes in,
PNG bytes out) and prints one JSON object: the peak (VmHWM / ru_maxrss) and the resident size after
imports, so a reader can tell the libraries' share from the model's.

Run: `python -m cutq.benchmarks.rss_probe --engine cutq --model u2netp.onnx photo1.jpg photo2.jpg`
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

MB = 2**20


def _status_mb(field: str) -> float | None:
    """A `kB` field of /proc/self/status in MiB (None off Linux)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(f"{field}:"):
                return int(line.split()[1]) * 1024 / MB
    except OSError:
        pass
    return None


def _peak_mb() -> float:
    hwm = _status_mb("VmHWM")
    if hwm is not None:
        return hwm
    scale = 1 if sys.platform == "darwin" else 1024  # ru_maxrss is bytes on macOS, KiB on Linux
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale / MB


def probe(engine: str, model: Path, images: Sequence[Path]) -> dict[str, float | None]:
    inputs = [p.read_bytes() for p in images]
    if engine == "rembg":
        import rembg  # before the baseline reading: its import is part of its footprint

        from .runners import rembg_session

        imports_mb = _status_mb("VmRSS")
        session = rembg_session(model.stem, model, None)
        remove = rembg.remove
    else:
        import cutq_runtime
        from cutq_runtime.models import resolve

        imports_mb = _status_mb("VmRSS")
        session = cutq_runtime.Session(resolve(model, pull_missing=False))
        remove = cutq_runtime.remove
    for data in inputs:
        remove(data, session=session)
    return {"peak_rss_mb": round(_peak_mb(), 1), "imports_rss_mb": imports_mb and round(imports_mb, 1)}


def measure(engine: str, model: Path, images: Sequence[Path], timeout: float = 300) -> dict[str, float | None]:
    """Run the probe in a fresh interpreter and return its JSON; raises RuntimeError with its stderr on failure."""
    cmd = [sys.executable, "-m", "cutq.benchmarks.rss_probe", "--engine", engine, "--model", str(model),
           *map(str, images)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=False)
    if proc.returncode != 0:
        tail = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        raise RuntimeError(f"rss probe for {model.name} ({engine}) failed: {tail}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m cutq.benchmarks.rss_probe", description=__doc__.splitlines()[0])
    parser.add_argument("--engine", choices=("cutq", "rembg"), default="cutq")
    parser.add_argument("--model", type=Path, required=True, help="model file (.onnx or .ort)")
    parser.add_argument("images", type=Path, nargs="+")
    args = parser.parse_args(argv)
    print(json.dumps(probe(args.engine, args.model, args.images)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
