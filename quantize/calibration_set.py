"""Choosing and loading the images for calibration and verification.

Images become tensors through `cutq_runtime`'s own decoding and preprocessing, so calibration sees
exactly what serving feeds the model. Sampling is seeded; splitting is by scene (the `<sequence>_<frame>`
stem convention of video datasets such as DAVIS), so calibration and verification never share a scene.
Every pipeline records its photos in the manifest through `record` and `calibration_record`, so quantize, prune
and finetune describe them the same way.
"""

from __future__ import annotations

import hashlib
import random
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from cutq_runtime import images, preprocess
from cutq_runtime.batch import IMAGE_SUFFIXES
from cutq_runtime.errors import CutqError, ImageError
from cutq_runtime.registry import InputSpec

_FRAME = re.compile(r"^(?P<sequence>.+)_\d+$")


@dataclass(frozen=True)
class LoadedImages:
    """Tensors ready for the model, the files they came from, and the files that could not be read."""

    paths: tuple[Path, ...]
    tensors: tuple[np.ndarray, ...]
    skipped: tuple[str, ...] = field(default=())

    @property
    def fingerprint(self) -> str:
        return fingerprint_of(self.paths)


def fingerprint_of(paths: Sequence[Path]) -> str:
    """sha256 over file names and contents: recorded in manifests so a variant's inputs are identifiable."""
    digest = hashlib.sha256()
    for path in paths:
        digest.update(path.name.encode() + b"\0" + hashlib.sha256(path.read_bytes()).digest())
    return digest.hexdigest()


def record(paths: Sequence[Path]) -> dict[str, Any]:
    """A manifest's description of photos: their file names (`images`) and `fingerprint`."""
    return {"images": [p.name for p in paths], "fingerprint": fingerprint_of(paths)}


def calibration_record(folder: str | Path, seed: int, *used: Sequence[Path]) -> dict[str, Any]:
    """The manifest's `calibration` object: every photo a step fitted the variant on, in one list whichever step
    used it (`used`: the photos of each step that drew its own sample from `folder` with `seed`). One place, so
    a reader (`cutq bench` keeping these scenes out of its quality photos) needs no step's internals."""
    return {"folder": str(Path(folder).resolve()), "seed": seed, **record(sorted({p for photos in used for p in photos}))}


def list_images(folder: str | Path) -> list[Path]:
    """Image files in `folder` (or in its `images/` subfolder, the davis-val layout), sorted by name."""
    root = Path(folder)
    if not root.is_dir():
        raise CutqError(f"{root}: no such folder")
    if (root / "images").is_dir():
        root = root / "images"
    found = sorted(p for p in root.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
    if not found:
        raise CutqError(f"{root}: no images found (looked for {', '.join(sorted(IMAGE_SUFFIXES))})")
    return found


def sequence_of(path: Path) -> str:
    """`dog_00040.jpg` -> `dog`; a stem without a frame number is its own sequence."""
    match = _FRAME.match(path.stem)
    return match.group("sequence") if match else path.stem


def split_by_sequence(paths: Sequence[Path], verify_fraction: float = 0.5,
                      seed: int = 0) -> tuple[list[Path], list[Path]]:
    """Split into (calibration, verification) by whole sequences, with a seeded shuffle of the sequences."""
    sequences = sorted({sequence_of(p) for p in paths})
    if len(sequences) < 2:
        raise CutqError("need images from at least two scenes to keep calibration and verification apart")
    random.Random(seed).shuffle(sequences)
    n_verify = min(len(sequences) - 1, max(1, round(len(sequences) * verify_fraction)))
    held_out = set(sequences[:n_verify])
    calibration = [p for p in paths if sequence_of(p) not in held_out]
    verification = [p for p in paths if sequence_of(p) in held_out]
    return calibration, verification


def sample(paths: Sequence[Path], count: int | None, seed: int = 0) -> list[Path]:
    """A seeded sample of `count` paths (all of them when `count` is None or larger), in name order."""
    if count is None or count >= len(paths):
        return sorted(paths)
    return sorted(random.Random(seed).sample(sorted(paths), count))


def load(paths: Sequence[Path], spec: InputSpec, minimum: int = 1) -> LoadedImages:
    """Decode and preprocess; unreadable files are skipped and named; fewer than `minimum` good ones is an error."""
    kept: list[Path] = []
    tensors: list[np.ndarray] = []
    skipped: list[str] = []
    for path in paths:
        try:
            img = images.decode(path.read_bytes(), str(path))
        except (ImageError, OSError) as exc:
            skipped.append(str(exc))
            continue
        kept.append(path)
        tensors.append(preprocess.to_tensor(img, spec))
    if len(kept) < minimum:
        detail = "; ".join(skipped) if skipped else "none given"
        raise CutqError(f"only {len(kept)} readable image(s), need at least {minimum} (skipped: {detail})")
    return LoadedImages(tuple(kept), tuple(tensors), tuple(skipped))


def calibration_paths(calib_dir: str | Path, verify_dir: str | Path | None, seed: int) -> tuple[list[Path], list[Path]]:
    """Every photo calibration may use and every photo verification may use: `calib_dir` split by scene in
    half, or all of `calib_dir` and all of `verify_dir` (which must not share a file name)."""
    calib_paths = list_images(calib_dir)
    if verify_dir is None:
        return split_by_sequence(calib_paths, 0.5, seed)
    verify_paths = list_images(verify_dir)
    overlap = {p.name for p in calib_paths} & {p.name for p in verify_paths}
    if overlap:
        raise CutqError(f"calibration and verification share {len(overlap)} image(s), e.g. {sorted(overlap)[0]}")
    return calib_paths, verify_paths


def calibration_and_verification(calib_dir: str | Path, verify_dir: str | Path | None, calib_count: int,
                                 verify_count: int, seed: int, spec: InputSpec,
                                 minimum: int = 2) -> tuple[LoadedImages, LoadedImages]:
    """Calibration and verification images; never the same scene (or file name) in both.

    Without `verify_dir`, `calib_dir` is split by scene, half for each.
    """
    calib_paths, verify_paths = calibration_paths(calib_dir, verify_dir, seed)
    calib = load(sample(calib_paths, calib_count, seed), spec, minimum)
    checked = load(sample(verify_paths, verify_count, seed), spec, 1)
    return calib, checked
