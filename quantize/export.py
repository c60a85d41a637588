"""Pipeline step: export, i.e. the variant's `.onnx`, an ONNX Runtime `.ort` file and the manifest beside them.

The `.ort` file is written with extended graph optimizations: the Q/DQ pairs are fused into integer
kernels (QLinearConv and friends) at conversion time. Minimal ONNX Runtime builds cannot fuse at load
time, and with basic optimizations only the INT8 `.ort` ran slower than FP32 (it dequantized every
tensor). Extended optimizations target the CPU execution provider but include no layout specific to
this CPU (that is the "all" level), so the file stays portable across CPUs. All three files are written to
temp files and renamed; the source model is never overwritten.
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import onnx
import onnxruntime as ort

from cutq.modelstats import conv_macs
from cutq_runtime.errors import OutputError
from cutq_runtime.fsutil import atomic_write_bytes, file_digest
from cutq_runtime.models import write_manifest


@dataclass(frozen=True)
class ExportResult:
    onnx_path: Path
    ort_path: Path | None
    manifest_path: Path
    size_bytes: int


def export(model: onnx.ModelProto, out: Path, manifest: dict[str, Any], source: Path | None = None,
           ort_format: bool = True) -> ExportResult:
    """Write `out` (.onnx), `out.with_suffix('.ort')` and `out.with_suffix('.json')`."""
    out = out.with_suffix(".onnx")
    if source is not None and out.resolve() == Path(source).resolve():
        raise OutputError(f"{out}: is the source model; refusing to overwrite it")
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(out, model.SerializeToString())
        files = {".onnx": file_digest(out, "sha256")}
        ort_path = _write_ort(out) if ort_format else None
        if ort_path is not None:
            files[".ort"] = file_digest(ort_path, "sha256")
        size = out.stat().st_size
        gmac = round(conv_macs(model) / 1e9, 2)  # what the server's model list shows beside size and fidelity
        manifest = {**manifest, "file": out.name, "sha256": files[".onnx"], "files": files, "size_bytes": size, "gmac": gmac}
        return ExportResult(out, ort_path, write_manifest(out, manifest), size)
    except OSError as exc:
        raise OutputError(f"{out}: cannot write ({exc.strerror or exc})") from exc


def _write_ort(onnx_path: Path) -> Path:
    target = onnx_path.with_suffix(".ort")
    with tempfile.TemporaryDirectory(prefix="cutq-ort-", dir=onnx_path.parent) as tmp:
        staged = Path(tmp) / target.name
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
        options.optimized_model_filepath = str(staged)
        options.add_session_config_entry("session.save_model_format", "ORT")
        options.log_severity_level = 3
        ort.InferenceSession(str(onnx_path), options, providers=["CPUExecutionProvider"])
        staged.replace(target)
    return target
