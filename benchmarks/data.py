"""The images the benchmarks run on, chosen the same way by the e2e script and the pytest suites.

Photos come from davis-val (854x480 real photos) when the shared data is checked out beside the repo,
else from the bundled `calibration_data/`, so a fresh clone can still run everything. The large image is
an upscaled photo, not a real 4K capture: it exercises the size-dependent stages (decode, mask resize,
composite, PNG encode) without pretending to be a different kind of content.
"""

from __future__ import annotations

import io
import os
from dataclasses import dataclass
from pathlib import Path

from PIL import Image

REPO_ROOT = Path(__file__).resolve().parents[1]
DAVIS_IMAGES = REPO_ROOT.parent / "shared" / "data" / "davis-val" / "images"
BUNDLED_IMAGES = REPO_ROOT / "calibration_data"
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".tif", ".tiff")
LARGE_SIZE = (3840, 2160)
LARGE_JPEG_QUALITY = 92


@dataclass(frozen=True)
class BenchImage:
    """Encoded input bytes plus what a reader needs to know about them."""

    label: str
    group: str  # "photos" or "large"
    data: bytes
    size: tuple[int, int]


def default_images_dir() -> Path:
    """`CUTQ_BENCH_IMAGES`, else davis-val beside the repo, else the bundled calibration images."""
    override = os.environ.get("CUTQ_BENCH_IMAGES")
    if override:
        return Path(override).expanduser()
    return DAVIS_IMAGES if DAVIS_IMAGES.is_dir() else BUNDLED_IMAGES


def source_name(folder: Path) -> str:
    """A short name for a folder of photos: `davis-val` for `.../davis-val/images`."""
    folder = folder.resolve()
    return folder.parent.name if folder.name == "images" else folder.name


def pick_evenly(paths: list[Path], count: int) -> list[Path]:
    """`count` files spread evenly over the sorted list, so the pick is deterministic and spans sequences."""
    paths = sorted(paths)
    if count >= len(paths):
        return paths
    if count <= 1:
        return paths[:count]
    step = (len(paths) - 1) / (count - 1)
    return [paths[round(i * step)] for i in range(count)]


def list_images(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())


def load_photos(folder: Path, count: int) -> list[BenchImage]:
    """The chosen photos as bytes, read once so disk I/O never lands inside a timing."""
    paths = pick_evenly(list_images(folder), count)
    if not paths:
        raise FileNotFoundError(f"{folder}: no images ({', '.join(IMAGE_SUFFIXES)})")
    photos = []
    for path in paths:
        data = path.read_bytes()
        with Image.open(io.BytesIO(data)) as img:
            size = img.size
        photos.append(BenchImage(path.name, "photos", data, size))
    return photos


def make_large(photo: BenchImage) -> BenchImage:
    """The photo upscaled to 3840x2160 (BICUBIC) and saved as JPEG q92 in memory."""
    with Image.open(io.BytesIO(photo.data)) as img:
        big = img.convert("RGB").resize(LARGE_SIZE, Image.Resampling.BICUBIC)
    buffer = io.BytesIO()
    big.save(buffer, "JPEG", quality=LARGE_JPEG_QUALITY)
    label = f"{photo.label} upscaled to {LARGE_SIZE[0]}x{LARGE_SIZE[1]} (JPEG q{LARGE_JPEG_QUALITY})"
    return BenchImage(label, "large", buffer.getvalue(), LARGE_SIZE)
