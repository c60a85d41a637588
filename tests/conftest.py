"""Shared fixtures: real models from the provisioning code, real photos, real rembg.

Models are pulled once into the user's cutq cache (`CUTQ_HOME` or ~/.cache/cutq) through the same
code users run, so CI exercises provisioning on a fresh machine.
"""

from __future__ import annotations

import io
import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from cutq_runtime import models, new_session

ROOT = Path(__file__).resolve().parents[1]
CALIBRATION = ROOT / "calibration_data"


def davis_dir() -> Path | None:
    path = Path(os.environ.get("CUTQ_DAVIS", ROOT.parent / "shared" / "data" / "davis-val"))
    return path if (path / "images").is_dir() else None


@pytest.fixture(scope="session")
def cache() -> Path:
    return models.cache_dir()


@pytest.fixture(scope="session")
def u2netp_path(cache: Path) -> Path:
    return models.pull("u2netp", cache)


@pytest.fixture(scope="session")
def u2net_path(cache: Path) -> Path:
    return models.pull("u2net", cache)


@pytest.fixture(scope="session")
def u2netp(u2netp_path: Path):
    return new_session("u2netp")


@pytest.fixture(scope="session")
def davis() -> Path:
    path = davis_dir()
    if path is None:
        pytest.skip("davis-val photos not found (expected ../shared/data/davis-val or $CUTQ_DAVIS)")
    return path


def jpeg_bytes(img: Image.Image, **kwargs) -> bytes:
    buffer = io.BytesIO()
    img.save(buffer, "JPEG", quality=92, **kwargs)
    return buffer.getvalue()


def png_bytes(img: Image.Image) -> bytes:
    buffer = io.BytesIO()
    img.save(buffer, "PNG")
    return buffer.getvalue()


@pytest.fixture(scope="session")
def photo() -> bytes:
    """One real photo (CC0, bundled)."""
    return (CALIBRATION / "chelsea.png").read_bytes()


def decode_rgba(data: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(data)).convert("RGBA")).astype(np.int16)
