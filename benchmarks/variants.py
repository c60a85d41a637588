"""Which variants a benchmark compares, and which FP32 model each one must be judged against.

A variant's manifest records the model it was made from (`source.name`, or `source.base` for imports);
following that chain back to a released model gives its FP32 reference, so `u2net-p50-int8` is compared
with `u2net`, not with the pruned model in between. Anything missing becomes a note, never an error:
a benchmark that dies on the fifth of six variants has measured nothing.
"""

from __future__ import annotations

import importlib.util
import re
from dataclasses import dataclass
from pathlib import Path

from cutq_runtime import models
from cutq_runtime.errors import CutqError
from cutq_runtime.registry import REGISTRY

PRUNED = re.compile(r"-p\d+")


@dataclass(frozen=True)
class Variant:
    """One row of the benchmark: a model file run by cutq, or a released model run by rembg."""

    name: str  # the row label: "u2netp-int8", or "rembg u2net"
    model: models.ResolvedModel
    reference: str | None  # the released FP32 model it is compared with; None when its manifest does not say
    kind: str  # "fp32", "int8", "pruned", "pruned-int8", "rembg" or "other"
    engine: str = "cutq"  # "cutq" or "rembg"

    @property
    def is_reference(self) -> bool:
        return self.engine == "cutq" and self.name == self.reference


@dataclass(frozen=True)
class Selection:
    variants: tuple[Variant, ...]
    notes: tuple[str, ...]


def _kind(name: str, model: models.ResolvedModel) -> str:
    if name in REGISTRY:
        return "fp32"
    steps = {str(step.get("step")) for step in (model.manifest or {}).get("steps", []) if isinstance(step, dict)}
    pruned = "prune" in steps or bool(PRUNED.search(name))
    int8 = "quantize" in steps or name.endswith("-int8")
    return {(True, True): "pruned-int8", (True, False): "pruned", (False, True): "int8"}.get((pruned, int8), "other")


def reference_of(model: models.ResolvedModel, cache: Path) -> str | None:
    """The released model at the root of a variant's manifest chain (`u2net-p50-int8` -> `u2net-p50` -> `u2net`).

    A link is looked up by name in the cache, else at the path the manifest recorded (a model pruned or
    quantized with `--out` somewhere else)."""
    seen, manifest, name = set(), model.manifest, model.name
    while name not in REGISTRY:
        source = (manifest or {}).get("source") or {}
        parent = source.get("name") or source.get("base")
        if not parent or parent in seen:
            return None
        seen.add(parent)
        name = parent
        if name in REGISTRY:
            break
        manifest = _manifest_of(name, source.get("path"), cache)
        if manifest is None:
            return None
    return name


def _manifest_of(name: str, path: str | None, cache: Path) -> dict | None:
    for ref in (name, path):
        if ref:
            try:
                return models.resolve(ref, cache, pull_missing=False).manifest
            except CutqError:
                continue
    return None


def _resolve(name: str, cache: Path, pull: bool, notes: list[str]) -> models.ResolvedModel | None:
    try:
        return models.resolve(name, cache, pull_missing=pull)
    except CutqError as exc:
        notes.append(f"{name}: skipped ({exc})")
        return None


def _missing_notes(names: set[str], releases: list[str]) -> list[str]:
    """What `--all` could not find: the INT8 and pruned variants of each release, with the command that makes them."""
    notes = []
    for release in releases:
        if f"{release}-int8" not in names:
            notes.append(f"{release}-int8: not in the cache, skipped (make it with `cutq quantize --model {release}`)")
        if not any(PRUNED.fullmatch(n[len(release):].removesuffix("-int8")) for n in names if n.startswith(release)):
            notes.append(f"{release}: no pruned variant ({release}-p<N>) in the cache, skipped")
    return notes


def select(cache: Path, named: list[str], *, everything: bool, pull: bool, rembg: bool,
           ort_twins: bool = True) -> Selection:
    """Variants to benchmark: the whole cache with `everything` (an `.ort` beside an `.onnx` is a row of its
    own, `<name>.ort`, unless `ort_twins` is off), plus `named` ones (names or paths).

    Released models are pulled when missing if `pull`; the FP32 reference of every chosen variant is added
    so "vs FP32" can be measured in the same run; with `rembg`, one rembg row per released model present.
    """
    notes: list[str] = []
    wanted: list[str] = []
    twins = 0
    if everything:
        wanted += list(REGISTRY)
        for info in models.list_models(cache):
            if info.kind == "variant" and info.path is not None:
                wanted.append(info.name)
                if info.path.suffix == ".onnx" and info.path.with_suffix(".ort").is_file():
                    if ort_twins:
                        wanted.append(str(info.path.with_suffix(".ort")))  # the form minimal ONNX Runtime builds load
                    else:
                        twins += 1
    if twins:
        notes.append(f"{twins} .ort file(s) beside their .onnx left out (--quick); the full run measures them")
    wanted += [n for n in named if n not in wanted]
    chosen: dict[str, Variant] = {}
    for name in wanted:
        model = _resolve(name, cache, pull, notes)
        if model is None or any(v.model.path.resolve() == model.path.resolve() for v in chosen.values()):
            continue
        label = name
        if models.looks_like_path(name):  # a file is named by its stem, or by its file name when the stem is taken
            label = model.name if model.name not in chosen else model.path.name
        chosen[label] = Variant(label, model, reference_of(model, cache), _kind(label, model))
    for variant in list(chosen.values()):
        ref = variant.reference
        if ref is None:
            notes.append(f"{variant.name}: its manifest names no source model, so it has no FP32 reference")
        elif ref not in chosen:
            model = _resolve(ref, cache, pull, notes)
            if model is not None:
                chosen[ref] = Variant(ref, model, ref, "fp32")
                notes.append(f"{ref}: added as the FP32 reference of {variant.name}")
    if everything:
        notes += _missing_notes(set(chosen), [r for r in REGISTRY if r in chosen])
    ordered = sorted(chosen.values(), key=lambda v: (v.reference or "~", not v.is_reference, v.name))
    if rembg:
        if importlib.util.find_spec("rembg") is None:
            notes.append("rembg is not installed, its rows are left out (pip install rembg to compare)")
        else:
            ordered += [Variant(f"rembg {v.name}", v.model, v.name, "rembg", "rembg") for v in ordered if v.kind == "fp32"]
    return Selection(tuple(ordered), tuple(notes))
