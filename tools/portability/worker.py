"""One CPU's side of the portability check: run the runtime on each photo, and the controls.

Runs natively and under qemu with only numpy, onnxruntime, pillow and `cutq_runtime` importable, so it uses
nothing else (no onnx, no cutq). `worker.py <folder>` reads <folder>/job.json (one variant, or the controls) and
writes beside it:
  <photo>.npy               the model's raw fused map [320, 320] float32 (`Session.run` on the runtime's tensor)
  <photo>.png               the 8-bit mask at the photo's size, as `remove(..., only_mask=True)` serves it
  <control>.<level>.npy     a control's u8 output, graph optimizations "all" (kernels) or "disable" (exact arithmetic)
  info.json                 versions, the CPU features numpy detects, seconds per inference, the control's fused ops
"""

from __future__ import annotations

import json
import platform
import sys
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort
from PIL import Image

from cutq_runtime import new_session, postprocess, preprocess, remove
from cutq_runtime.images import decode


def run_variant(path: str, photos: list[str], out: Path, threads: int, check_api: bool) -> list[float]:
    session = new_session(path, threads=threads)
    seconds = []
    for photo in photos:
        img = decode(Path(photo).read_bytes(), photo)
        start = time.perf_counter()
        raw = session.run(preprocess.to_tensor(img, session.input_spec))
        seconds.append(round(time.perf_counter() - start, 3))
        mask = postprocess.to_mask(raw, img.size)  # what Session.predict_mask, hence remove(only_mask=True), returns
        if check_api and not np.array_equal(np.asarray(mask), np.asarray(remove(img, session, only_mask=True))):
            sys.exit(f"{path}: the mask differs from remove(only_mask=True)")
        np.save(out / f"{Path(photo).stem}.npy", np.squeeze(raw).astype(np.float32))
        mask.save(out / f"{Path(photo).stem}.png")
    return seconds


def run_control(path: str, out: Path) -> list[str]:
    """Both optimization levels' outputs; returns the op types that ran at level "all" (QLinearConv when fused)."""
    levels = {"all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL, "disable": ort.GraphOptimizationLevel.ORT_DISABLE_ALL}
    ops: list[str] = []
    for label, level in levels.items():
        options = ort.SessionOptions()
        options.graph_optimization_level = level
        options.enable_profiling = label == "all"
        options.profile_file_prefix = str(out / "profile")
        session = ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])
        result = session.run(None, {session.get_inputs()[0].name: np.load(Path(path).with_suffix(".npy"))})[0]
        np.save(out / f"{Path(path).stem}.{label}.npy", result)
        if options.enable_profiling:
            profile = Path(session.end_profiling())
            events = json.loads(profile.read_text())
            profile.unlink()
            ops = sorted({event["args"].get("op_name", "") for event in events if event.get("cat") == "Node"} - {""})
    return ops


def cpu_features() -> list[str]:
    """The SIMD features numpy detects at run time: what the (emulated) CPU reports through CPUID or HWCAP."""
    from numpy._core._multiarray_umath import __cpu_features__

    return [name for name, present in __cpu_features__.items() if present]


def main() -> None:
    out = Path(sys.argv[1])
    job = json.loads((out / "job.json").read_text())
    info = {"machine": platform.machine(), "python": platform.python_version(), "numpy": np.__version__,
            "onnxruntime": ort.__version__, "pillow": Image.__version__, "cpu_features": cpu_features()}
    if job.get("variant"):
        variant = job["variant"]
        info["seconds"] = run_variant(variant["path"], variant["photos"], out, job["threads"], job.get("check_api", False))
    if job.get("controls"):
        info["control_ops"] = {Path(path).stem: run_control(path, out) for path in job["controls"]}
    (out / "info.json").write_text(json.dumps(info, indent=1))


if __name__ == "__main__":
    main()
