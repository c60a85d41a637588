"""Bad and odd input: a clear error naming the file, nothing written for it, the other files go on."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from cutq_runtime import ImageError, RemoveOptions, remove

from .conftest import CALIBRATION, jpeg_bytes, png_bytes

COFFEE = Image.open(CALIBRATION / "coffee.png").convert("RGB")


def _truncated_jpeg() -> bytes:
    data = jpeg_bytes(COFFEE)
    return data[: len(data) // 2]


BAD = {
    "empty.jpg": (b"", "empty file"),
    "notes.jpg": (b"these are not pixels\n" * 20, "not an image"),
    "half.jpg": (_truncated_jpeg(), "corrupt or truncated"),
    "broken.png": (png_bytes(COFFEE)[:200], "corrupt or truncated"),
}


@pytest.mark.parametrize("name", list(BAD))
def test_bad_bytes_raise_an_error_naming_the_file(u2netp, name: str) -> None:
    data, reason = BAD[name]
    with pytest.raises(ImageError, match=reason) as info:
        remove(data, session=u2netp, source=f"photos/{name}")
    assert str(info.value).startswith(f"photos/{name}: ")


def test_pixel_limit_refuses_decompression_bombs_before_decoding(u2netp) -> None:
    bomb = png_bytes(Image.new("L", (10_000, 9_000)))  # 90 Mpx of zeros, 90 KB on disk
    assert len(bomb) < 200_000
    with pytest.raises(ImageError, match=r"bomb\.png: 10000x9000 = 90000000 pixels exceeds the limit"):
        remove(bomb, session=u2netp, source="bomb.png")
    with pytest.raises(ImageError, match="exceeds the limit of 100000"):
        remove(jpeg_bytes(COFFEE), session=u2netp, source="c.jpg", options=RemoveOptions(max_pixels=100_000))


def _sixteen_bit() -> bytes:
    grey = np.asarray(COFFEE.convert("L"), dtype=np.uint16) * 257
    return png_bytes(Image.fromarray(grey))


ODD = {
    "cmyk": lambda: jpeg_bytes(COFFEE.convert("CMYK")),
    "16-bit": _sixteen_bit,
    "palette": lambda: png_bytes(COFFEE.convert("P", palette=Image.Palette.ADAPTIVE)),
    "LA": lambda: png_bytes(COFFEE.convert("LA")),
    "grey": lambda: png_bytes(COFFEE.convert("L")),
}


@pytest.mark.parametrize("mode", list(ODD))
def test_odd_modes_give_the_same_mask_as_their_rgb_content(u2netp, mode: str) -> None:
    """Each odd mode decodes to the picture it holds: its mask is close to the RGB/greyscale original's."""
    reference_img = COFFEE if mode in ("cmyk", "palette") else COFFEE.convert("L")
    reference = np.asarray(remove(reference_img, session=u2netp, only_mask=True), dtype=np.int16)
    out = Image.open(io.BytesIO(remove(ODD[mode](), session=u2netp, source=mode)))
    assert out.mode == "RGBA" and out.size == COFFEE.size
    mask = np.asarray(remove(Image.open(io.BytesIO(ODD[mode]())), session=u2netp, only_mask=True), dtype=np.int16)
    assert np.abs(mask - reference).mean() < 6, f"{mode}: mask drifted from the plain image's"


def test_sixteen_bit_is_scaled_not_clipped(u2netp) -> None:
    img = Image.open(io.BytesIO(_sixteen_bit()))
    assert img.mode.startswith("I")
    from cutq_runtime.images import prepare

    eight = np.asarray(prepare(img, "x"), dtype=np.int16)
    assert np.abs(eight - np.asarray(COFFEE.convert("L"), dtype=np.int16)).max() <= 1


def test_exif_orientation_is_applied(u2netp) -> None:
    exif = Image.Exif()
    exif[0x0112] = 6
    out = Image.open(io.BytesIO(remove(jpeg_bytes(COFFEE, exif=exif.tobytes()), session=u2netp)))
    assert out.size == (COFFEE.height, COFFEE.width)


def test_array_that_is_not_an_image(u2netp) -> None:
    with pytest.raises(ImageError, match=r"array\.npy: array of shape"):
        remove(np.zeros((2, 3, 4, 5), dtype=np.float64), session=u2netp, source="array.npy")


def write_bad_files(folder: Path) -> None:
    for name, (data, _) in BAD.items():
        (folder / name).write_bytes(data)


def _png_strip(width: int, height: int) -> bytes:
    """A valid greyscale PNG of `width` x `height` zeros, its IDAT built row by row (30 Mpx is 29 kB)."""
    import struct
    import zlib

    compressor = zlib.compressobj(9)
    row = b"\x00" * (width + 1)
    idat = b"".join(compressor.compress(row) for _ in range(height)) + compressor.flush()

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


def _jpeg_declaring(width: int, height: int) -> bytes:
    """A real 16 x 16 JPEG whose frame header claims another size: libjpeg would pad the missing data with grey."""
    data = bytearray(jpeg_bytes(COFFEE.resize((16, 16))))
    sof = data.index(b"\xff\xc0")
    data[sof + 5:sof + 9] = height.to_bytes(2, "big") + width.to_bytes(2, "big")
    return bytes(data)


def _ico(size: int) -> bytes:
    buffer = io.BytesIO()
    COFFEE.resize((size, size)).save(buffer, "ICO", sizes=[(size, size)])
    return buffer.getvalue()


HOSTILE = {
    "strip.png": (lambda: _png_strip(30_000_000, 1), "a side over 32768 pixels"),
    "tower.png": (lambda: _png_strip(1, 40_000), "a side over 32768 pixels"),
    "padded.jpg": (lambda: _jpeg_declaring(9000, 9000), r"declares 9000x9000 pixels in \d+ bytes"),
    "icon.ico": (lambda: _ico(64), "not an image in a format cutq reads"),
    "scans.jpg": (lambda: jpeg_bytes(COFFEE)[:-2] + b"\xff\xda" * 300 + b"\xff\xd9", "has 301 scans"),
}


@pytest.mark.parametrize("name", list(HOSTILE))
def test_hostile_headers_are_refused_before_decoding(u2netp, name: str) -> None:
    """Each of these decoded for seconds into hundreds of MB (or, for ICO, inside Image.open) before the guards."""
    make, reason = HOSTILE[name]
    with pytest.raises(ImageError, match=reason) as info:
        remove(make(), session=u2netp, source=name)
    assert str(info.value).startswith(f"{name}: ")


def test_the_same_kinds_within_their_limits_still_work(u2netp) -> None:
    """The guards are limits, not bans on the shapes: a 2000 x 1 strip and a real progressive JPEG pass."""
    assert Image.open(io.BytesIO(remove(_png_strip(2000, 1), session=u2netp))).size == (2000, 1)
    progressive = jpeg_bytes(COFFEE, progressive=True)
    assert Image.open(io.BytesIO(remove(progressive, session=u2netp))).size == COFFEE.size


def test_byte_limit(u2netp) -> None:
    data = jpeg_bytes(COFFEE)
    with pytest.raises(ImageError, match=rf"c\.jpg: {len(data)} bytes is over the limit of 1000 \(`max_bytes`\)"):
        remove(data, session=u2netp, source="c.jpg", options=RemoveOptions(max_bytes=1000))
