"""FP32 parity with real rembg: same model file, same size, alpha within 1 level on every pixel.

rembg is told to use the cutq cache (U2NET_HOME), so both libraries load the very same bytes.
"""

from __future__ import annotations

import io
import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from cutq_runtime import new_session, remove

from .conftest import CALIBRATION, davis_dir, decode_rgba, jpeg_bytes, png_bytes

rembg = pytest.importorskip("rembg")


def _exif_rotated(img: Image.Image) -> bytes:
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise on display
    return jpeg_bytes(img, exif=exif.tobytes())


def _photos() -> dict[str, bytes]:
    """Real photos: davis-val frames from three scenes, bundled photos, a large one and non-RGB ones."""
    cases: dict[str, bytes] = {}
    davis = davis_dir()
    if davis is not None:
        for stem in ("blackswan_00020", "dog_00040", "paragliding-launch_00050"):
            cases[f"davis/{stem}"] = (davis / "images" / f"{stem}.jpg").read_bytes()
    cases["astronaut.png"] = (CALIBRATION / "astronaut.png").read_bytes()
    rocket = Image.open(CALIBRATION / "rocket.jpg")
    cases["rocket.jpg upscaled to 3840x2562 (large)"] = jpeg_bytes(rocket.resize((3840, 2562), Image.Resampling.BICUBIC))
    coffee = Image.open(CALIBRATION / "coffee.png").convert("RGB")
    cases["coffee as CMYK JPEG"] = jpeg_bytes(coffee.convert("CMYK"))
    cases["chelsea as greyscale"] = png_bytes(Image.open(CALIBRATION / "chelsea.png").convert("L"))
    cases["coffee as palette"] = png_bytes(coffee.convert("P", palette=Image.Palette.ADAPTIVE))
    cases["coffee EXIF-rotated"] = _exif_rotated(coffee)
    return cases


PHOTOS = _photos()


@pytest.fixture(scope="module", params=["u2netp", pytest.param("u2net", marks=pytest.mark.slow)])
def sessions(request, cache: Path):
    from cutq_runtime import models

    models.pull(request.param, cache)
    os.environ["U2NET_HOME"] = str(cache)  # rembg looks here first: the same file for both
    return rembg.new_session(request.param), new_session(request.param)


@pytest.mark.parametrize("label", list(PHOTOS))
def test_cutout_matches_rembg(sessions, label: str) -> None:
    theirs_session, ours_session = sessions
    data = PHOTOS[label]
    theirs = decode_rgba(rembg.remove(data, session=theirs_session))
    ours = decode_rgba(remove(data, session=ours_session))
    assert ours.shape == theirs.shape, label
    alpha_diff = np.abs(ours[..., 3] - theirs[..., 3]).max()
    rgb_diff = np.abs(ours[..., :3] - theirs[..., :3]).max()
    assert alpha_diff <= 1, f"{label}: alpha differs by {alpha_diff}"
    assert rgb_diff <= 1, f"{label}: colour differs by {rgb_diff}"
    assert 0 < ours[..., 3].mean() < 255, f"{label}: the mask is empty or full, the comparison proves nothing"


def test_mask_pil_and_array_inputs_match_rembg(sessions) -> None:
    theirs_session, ours_session = sessions
    img = Image.open(io.BytesIO(PHOTOS["astronaut.png"]))
    theirs_mask = np.asarray(rembg.remove(img, session=theirs_session, only_mask=True), dtype=np.int16)
    ours_mask = remove(img, session=ours_session, only_mask=True)
    assert isinstance(ours_mask, Image.Image) and ours_mask.mode == "L"
    assert np.abs(np.asarray(ours_mask, dtype=np.int16) - theirs_mask).max() <= 1
    array = np.asarray(img.convert("RGB"))
    theirs_bg = rembg.remove(array, session=theirs_session, bgcolor=(255, 255, 255, 255)).astype(np.int16)
    ours_bg = remove(array, session=ours_session, bgcolor=(255, 255, 255, 255))
    assert isinstance(ours_bg, np.ndarray) and ours_bg.shape == theirs_bg.shape
    assert np.abs(ours_bg.astype(np.int16) - theirs_bg).max() <= 1
