"""How good each variant's masks are: against its FP32 model, and against ground truth where it exists.

Against FP32 the comparison is the one `cutq quantize` verifies with (`verify.compare`: the fused map
min-max normalised at model resolution, 320x320), so the figures can be read next to a manifest's.
Against ground truth it is the mask users get (8 bits, resized to the photo), compared at the photo's
size: MAE, IoU at 0.5, max F-beta (beta² = 0.3) and S-measure, averaged over the photos.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from cutq import metrics
from cutq.quantize import verify
from cutq.quantize.calibration_set import sequence_of
from cutq_runtime import images
from cutq_runtime.errors import CutqError

from .data import list_images, pick_evenly
from .runners import Runner


def calibration_scenes(manifests: list[dict | None]) -> frozenset[str]:
    """Scenes of every photo that `cutq quantize` or `cutq prune` calibrated a variant on (from manifests),
    including the photos `cutq prune` measured its low-rank statistics on."""
    names: list[str] = []
    for manifest in manifests:
        manifest = manifest or {}
        names += (manifest.get("calibration") or {}).get("images", [])  # cutq prune
        for step in manifest.get("steps", []):
            if isinstance(step, dict) and step.get("step") == "calibrate":  # cutq quantize
                names += step.get("images", [])
            if isinstance(step, dict) and step.get("step") == "lowrank":  # cutq prune, factored Convs
                names += step.get("photos", [])
    return frozenset(sequence_of(Path(name)) for name in names)


@dataclass(frozen=True)
class EvalImage:
    """A photo and, when the folder has one, its ground-truth mask (`masks/<stem>.png`, foreground >= 128)."""

    path: Path
    truth: Path | None


@dataclass(frozen=True)
class GroundTruth:
    mae: float
    iou: float
    max_fbeta: float
    s_measure: float
    images: int


@dataclass
class Quality:
    """One variant's masks: the normalised maps (for vs-FP32 comparison) and its ground-truth scores."""

    maps: list[np.ndarray]
    truth: GroundTruth | None


def eval_images(folder: Path, count: int, avoid_scenes: frozenset[str] = frozenset()) -> list[EvalImage]:
    """`count` photos spread evenly over the sorted folder (`images/` + `masks/`, or a plain folder of photos).

    Photos of `avoid_scenes` (the scenes the variants were calibrated on) are left out, so fidelity and
    ground-truth scores are measured on photos no variant has seen; when that leaves nothing, all are used.
    """
    photos = folder / "images" if (folder / "images").is_dir() else folder
    masks = folder / "masks"
    listed = list_images(photos) if photos.is_dir() else []
    unseen = [p for p in listed if sequence_of(p) not in avoid_scenes]
    chosen = pick_evenly(unseen or listed, count)
    if not chosen:
        raise CutqError(f"{photos}: no photos to evaluate on")
    items = [EvalImage(p, masks / f"{p.stem}.png" if (masks / f"{p.stem}.png").is_file() else None) for p in chosen]
    for item in items:  # before any timing: a bad mask should stop the run at once, not after ten minutes
        if item.truth is not None:
            _check_size(item.truth, item.path)
    return items


def _size(path: Path, what: str) -> tuple[int, int]:
    try:
        with Image.open(path) as img:
            return img.size
    except (OSError, ValueError) as exc:
        raise CutqError(f"{path}: unreadable {what} ({exc})") from exc


def _check_size(mask: Path, photo: Path) -> None:
    (mw, mh), (pw, ph) = _size(mask, "ground-truth mask"), _size(photo, "photo")
    if (mw, mh) != (pw, ph):
        raise CutqError(f"{mask}: ground-truth mask is {mw}x{mh}, its photo {photo.name} is {pw}x{ph}")


def _truth(path: Path) -> np.ndarray:
    try:
        with Image.open(path) as img:
            return np.asarray(img.convert("L")) >= 128
    except (OSError, ValueError) as exc:
        raise CutqError(f"{path}: unreadable ground-truth mask ({exc})") from exc


def evaluate(runner: Runner, items: list[EvalImage], on_mask: Callable[[int, Image.Image, Image.Image], None]) -> Quality:
    """Masks for every photo; `on_mask(index, photo, served_mask)` lets the caller keep what it needs (thumbnails)."""
    maps, scores = [], []
    for index, item in enumerate(items):
        img = images.decode(item.path.read_bytes(), str(item.path))
        normalised, served = runner.masks(img)
        maps.append(normalised)
        on_mask(index, img, served)
        if item.truth is not None:
            pred, truth = np.asarray(served, np.float64) / 255.0, _truth(item.truth)
            scores.append((metrics.mae(pred, truth), metrics.iou(pred, truth), metrics.max_fbeta(pred, truth),
                           metrics.s_measure(pred, truth)))
    if not scores:
        return Quality(maps, None)
    mean = np.mean(np.array(scores), axis=0)
    return Quality(maps, GroundTruth(*(float(v) for v in mean), images=len(scores)))


def fidelity(reference: Quality, candidate: Quality) -> verify.Fidelity:
    """SSIM min/mean and MAE of a variant's maps against its FP32 reference's, photo by photo."""
    return verify.compare(reference.maps, candidate.maps)
