"""Where models live and how a name becomes a verified file: the cache, rembg's caches, variants, imports.

Layout of the cache (`CUTQ_HOME`, default `~/.cache/cutq`): `<name>.onnx` (or `.ort`) with a
`<name>.json` manifest beside every file that is not a released model. The flat layout means
`U2NET_HOME=<cache>` also lets rembg reuse cutq's downloads. Manifests are checked against
`manifest.schema.json` (see `manifest`) before anything reads them; cutq writes its `schema_version` in each,
and reads one written before that field as version 1 without rewriting it.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from . import cpu
from .errors import ChecksumError, ModelError
from .fsutil import atomic_writer, file_digest
from .manifest import SCHEMA_VERSION
from .manifest import load as load_manifest
from .manifest import parse as parse_manifest
from .progress import ProgressFn, TextProgress
from .provision import FetchConfig, fetch
from .registry import REGISTRY, InputSpec, ModelSpec, get_spec

MODEL_SUFFIXES = (".onnx", ".ort")


def cache_dir(override: str | os.PathLike[str] | None = None) -> Path:
    """The cutq model cache: the argument, else `CUTQ_HOME`, else `$XDG_CACHE_HOME/cutq` or `~/.cache/cutq`."""
    if override:
        return Path(override).expanduser()
    if os.environ.get("CUTQ_HOME"):
        return Path(os.environ["CUTQ_HOME"]).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg) if xdg else Path.home() / ".cache") / "cutq"


def rembg_dirs(spec: ModelSpec) -> list[Path]:
    """The places rembg 2.x keeps a model, so a rembg user's downloads are reused without copying."""
    legacy = Path(os.environ.get("U2NET_HOME") or Path(os.environ.get("XDG_DATA_HOME", "~")) / ".u2net")
    xdg = os.environ.get("XDG_DATA_HOME")
    home = Path(os.environ.get("REMBG_HOME") or (Path(xdg) / "rembg" if xdg else Path("~/.rembg")))
    return [legacy.expanduser(), (home / "models" / spec.name).expanduser()]


@dataclass(frozen=True)
class ResolvedModel:
    """A model file that passed its checksum, with the input convention it must be served with."""

    name: str
    path: Path
    input: InputSpec
    manifest: dict[str, Any] | None = None


@dataclass(frozen=True)
class ModelInfo:
    """One row of `models list`."""

    name: str
    kind: str  # "release" or "variant"
    path: Path | None
    size_bytes: int | None
    description: str
    cpus: str = "any"  # cpu.portability: "any", "vnni-or-arm" or "unknown"
    exact_here: bool = True  # False when loading it here would warn (cpu.claim_problem)


def manifest_path(model_path: Path) -> Path:
    return model_path.with_suffix(".json")


def read_manifest(model_path: Path) -> dict[str, Any] | None:
    """The manifest beside a model file, checked against the schema (`ModelError` naming the field), one without
    `schema_version` read as version 1 (`manifest.upgrade`); None when there is none."""
    path = manifest_path(model_path)
    if not path.is_file():
        return None
    return load_manifest(path)


def input_spec_from(manifest: dict[str, Any] | None) -> InputSpec:
    """The input convention a checked manifest records; U²-Net's own when it records none."""
    raw = (manifest or {}).get("input")
    if raw is None:
        return InputSpec()
    return InputSpec(size=tuple(raw["size"]), mean=tuple(raw["mean"]), std=tuple(raw["std"]))  # type: ignore[arg-type]


def input_spec_dict(spec: InputSpec) -> dict[str, list[float]]:
    return {"size": list(spec.size), "mean": list(spec.mean), "std": list(spec.std)}


def verify_release(path: Path, spec: ModelSpec) -> None:
    """Refuse a released model whose size or md5 differs from the registry."""
    size = path.stat().st_size
    if size != spec.size_bytes:
        raise ChecksumError(f"{path}: {size} bytes, expected {spec.size_bytes} for '{spec.name}' (truncated?); refused")
    digest = file_digest(path, "md5")
    if digest != spec.md5:
        raise ChecksumError(f"{path}: md5 {digest}, expected {spec.md5} for '{spec.name}' (corrupt or tampered); refused")


def verify_manifest(path: Path, manifest: dict[str, Any] | None) -> None:
    """Refuse a variant file whose sha256 differs from the one its manifest recorded (per suffix when it lists files)."""
    manifest = manifest or {}
    expected = manifest.get("files", {}).get(path.suffix) or manifest.get("sha256")
    if expected and file_digest(path, "sha256") != expected:
        raise ChecksumError(f"{path}: sha256 does not match its manifest (corrupt or modified); refused")


def _find_release(spec: ModelSpec, cache: Path) -> Path | None:
    """The first verified copy in cutq's cache or rembg's; bad copies are reported and skipped, never used."""
    for folder in [cache, *rembg_dirs(spec)]:
        candidate = folder / spec.filename
        if not candidate.is_file():
            continue
        try:
            verify_release(candidate, spec)
            return candidate
        except ChecksumError as exc:
            print(f"cutq: warning: {exc}", file=sys.stderr)
    return None


def pull(name: str, cache: Path | None = None, progress: ProgressFn | None = None,
         config: FetchConfig | None = None) -> Path:
    """A verified local file for a released model, fetched into the cache when no good copy exists."""
    spec = get_spec(name)
    if spec is None:
        raise ModelError(f"'{name}' is not a released model; known: {', '.join(REGISTRY)}")
    cache = cache or cache_dir()
    found = _find_release(spec, cache)
    if found is not None:
        return found
    progress = progress or TextProgress(f"Downloading {spec.filename}", unit="B")
    return fetch(spec, cache / spec.filename, config or FetchConfig.from_env(), progress)


def _variant_file(name: str, cache: Path) -> Path | None:
    for suffix in MODEL_SUFFIXES:
        candidate = cache / f"{name}{suffix}"
        if candidate.is_file():
            return candidate
    return None


def looks_like_path(model: str | os.PathLike[str]) -> bool:
    """Whether `model` names a file rather than a model in the cache, judged by its form alone.

    What happens to exist in the working directory must not decide: a stray file called `u2netp` there would
    otherwise take over `-m u2netp`. A path contains a separator, starts with `.` or `~`, or ends in .onnx or
    .ort (`./u2netp` names that file); a `Path` object is a path by the caller's choice."""
    if not isinstance(model, str):
        return True
    return model.endswith(MODEL_SUFFIXES) or model.startswith((".", "~")) or any(sep in model for sep in ("/", "\\"))


def resolve(model: str | os.PathLike[str], cache: Path | None = None, *, pull_missing: bool = True,
            progress: ProgressFn | None = None) -> ResolvedModel:
    """Turn a variant name or a file path into a verified model file, pulling released models when missing."""
    cache = cache or cache_dir()
    if looks_like_path(model):
        path = Path(model).expanduser()
        if not path.is_file():
            raise ModelError(f"{path}: no such model file")
        manifest = read_manifest(path)
        verify_manifest(path, manifest)
        return ResolvedModel(path.stem, path, input_spec_from(manifest), manifest)
    name = str(model)
    variant = _variant_file(name, cache)
    if variant is not None and get_spec(name) is None:
        manifest = read_manifest(variant)
        verify_manifest(variant, manifest)
        return ResolvedModel(name, variant, input_spec_from(manifest), manifest)
    spec = get_spec(name)
    if spec is None:
        known = sorted({*REGISTRY, *(info.name for info in list_models(cache))})
        raise ModelError(f"unknown model '{name}'; known: {', '.join(known)} (or give a path to an .onnx/.ort file)")
    if not pull_missing:
        found = _find_release(spec, cache)
        if found is None:
            raise ModelError(f"model '{name}' is not downloaded; run: cutq models pull {name}")
        return ResolvedModel(name, found, spec.input)
    return ResolvedModel(name, pull(name, cache, progress), spec.input)


def list_models(cache: Path | None = None) -> list[ModelInfo]:
    """Released models (downloaded or not) and every variant in the cache."""
    cache = cache or cache_dir()
    rows = []
    for spec in REGISTRY.values():
        present = any((folder / spec.filename).is_file() for folder in [cache, *rembg_dirs(spec)])
        path = _find_release(spec, cache) if present else None
        rows.append(ModelInfo(spec.name, "release", path, spec.size_bytes, spec.description))
    if cache.is_dir():
        seen = set(REGISTRY)
        for path in sorted(cache.iterdir()):  # `.onnx` sorts before `.ort`: one row per variant, the .onnx file
            if path.suffix in MODEL_SUFFIXES and path.stem not in seen and not path.name.startswith("."):
                seen.add(path.stem)
                try:
                    manifest = read_manifest(path) or {}
                except ModelError as exc:  # reported like a bad release copy: one broken file must not hide the rest
                    print(f"cutq: warning: {exc}; not listed", file=sys.stderr)
                    continue
                rows.append(ModelInfo(path.stem, "variant", path, path.stat().st_size, str(manifest.get("description", "")),
                                      cpu.portability(manifest), cpu.claim_problem(manifest, path) is None))
    return rows


def import_model(file: str | os.PathLike[str], name: str, cache: Path | None = None,
                 base: str | None = None) -> Path:
    """Copy a model file into the cache under `name`, with a manifest, so `--model name` works everywhere."""
    src = Path(file).expanduser()
    if not src.is_file():
        raise ModelError(f"{src}: no such file")
    if src.suffix not in MODEL_SUFFIXES:
        raise ModelError(f"{src}: expected an .onnx or .ort file")
    if get_spec(name) is not None:
        raise ModelError(f"'{name}' is a released model name; choose another name")
    if not name or any(c in name for c in "/\\") or name.startswith("."):
        raise ModelError(f"'{name}' is not a valid model name")
    from .session import check_u2net_like  # local import: session pulls in onnxruntime

    check_u2net_like(src)
    cache = cache or cache_dir()
    cache.mkdir(parents=True, exist_ok=True)
    dest = cache / f"{name}{src.suffix}"
    if dest.resolve() == src.resolve():
        raise ModelError(f"{src} is already in the cache as '{name}'")
    base_spec = get_spec(base) if base else None
    if base and base_spec is None:
        raise ModelError(f"--base '{base}' is not a released model; known: {', '.join(REGISTRY)}")
    with open(src, "rb") as reader, atomic_writer(dest) as writer:
        shutil.copyfileobj(reader, writer, 1 << 20)
    manifest = {
        "name": name,
        "file": dest.name,
        "sha256": file_digest(dest, "sha256"),
        "size_bytes": dest.stat().st_size,
        "source": {"imported_from": str(src.resolve()), "base": base},
        "input": input_spec_dict(base_spec.input if base_spec else InputSpec()),
        "steps": [],
    }
    write_manifest(dest, manifest)
    return dest


def write_manifest(model_path: Path, manifest: dict[str, Any]) -> Path:
    """Write the manifest beside a model, atomically, with sorted keys so it is byte-for-byte reproducible.

    Every manifest cutq writes passes through here, so this is where it gets `schema_version`. The bytes are
    checked as the runtime will read them first: a manifest it would refuse is a bug in its writer, found here
    rather than when someone loads the variant."""
    path = manifest_path(model_path)
    data = (json.dumps({**manifest, "schema_version": SCHEMA_VERSION}, indent=2, sort_keys=True) + "\n").encode()
    parse_manifest(data, str(path))
    with atomic_writer(path) as handle:
        handle.write(data)
    return path
