"""Byte surgery for the fuzz corpus (tests/fuzz_corpus.py) and the long run (tools/fuzz_long.py).

Just enough parsing of PNG, JPEG, TIFF, GIF, BMP, WebP and ICO to build small files and edit the fields a bomb
or a corrupt file lies in (dimensions, lengths, counts, offsets), plus the random mutations both use. Every
function is pure: the same bytes (and the same random state) give the same bytes.
"""

from __future__ import annotations

import io
import random
import struct
import zlib

from PIL import Image


def encode(img: Image.Image, fmt: str, **kwargs) -> bytes:
    out = io.BytesIO()
    img.save(out, fmt, **kwargs)
    return out.getvalue()


def patch(data: bytes, offset: int, new: bytes) -> bytes:
    return data[:offset] + new + data[offset + len(new):]


# ---------------------------------------------------------------------------------------------------------------
# PNG


def png_chunk(kind: bytes, data: bytes, crc: int | None = None) -> bytes:
    crc = zlib.crc32(kind + data) if crc is None else crc
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", crc & 0xFFFFFFFF)


def png_chunks(data: bytes) -> list[tuple[bytes, bytes]]:
    chunks, pos = [], 8
    while pos + 8 <= len(data):
        length, kind = struct.unpack(">I4s", data[pos:pos + 8])
        chunks.append((kind, data[pos + 8:pos + 8 + length]))
        pos += 12 + length
    return chunks


def png_build(chunks: list[tuple[bytes, bytes]]) -> bytes:
    return b"\x89PNG\r\n\x1a\n" + b"".join(png_chunk(k, d) for k, d in chunks)


def png_offset(data: bytes, kind: bytes) -> int:
    """Offset of the length field of the first chunk of `kind`."""
    return data.index(kind) - 4


def png_with_ihdr(data: bytes, header: bytes) -> bytes:
    """`data` with its first chunk replaced by an IHDR holding `header`, every CRC recomputed."""
    return png_build([(b"IHDR", header), *png_chunks(data)[1:]])


def png_dims(data: bytes, width: int, height: int) -> bytes:
    """`data` with the IHDR (its first chunk) declaring width x height, CRCs fixed."""
    return png_with_ihdr(data, struct.pack(">II", width, height) + png_chunks(data)[0][1][8:])


def png_split_idat(data: bytes) -> bytes:
    """The same PNG with its image data in 64-byte IDAT chunks (valid; some encoders write tiny chunks)."""
    chunks = png_chunks(data)
    idat = b"".join(d for k, d in chunks if k == b"IDAT")
    rest = [(k, d) for k, d in chunks if k not in (b"IDAT", b"IEND")]
    return png_build([*rest, *((b"IDAT", idat[i:i + 64]) for i in range(0, len(idat), 64)), (b"IEND", b"")])


def declared_png(width: int, height: int, bit_depth: int = 8, extra: list[tuple[bytes, bytes]] | None = None) -> bytes:
    """A complete, valid greyscale PNG of width x height zeros, its zlib stream made row block by row block so a
    30,000,000 x 1 image (30 MB raw, 29 kB compressed) is made in a fraction of a second without holding it twice."""
    row = b"\0" * (1 + (width * bit_depth + 7) // 8)
    rows_per_block = max(1, (1 << 22) // len(row))
    comp = zlib.compressobj(9)
    parts, left = [], height
    while left:
        n = min(left, rows_per_block)
        parts.append(comp.compress(row * n))
        left -= n
    parts.append(comp.flush())
    header = struct.pack(">IIBBBBB", width, height, bit_depth, 0, 0, 0, 0)
    return png_build([(b"IHDR", header), *(extra or []), (b"IDAT", b"".join(parts)), (b"IEND", b"")])


# ---------------------------------------------------------------------------------------------------------------
# JPEG


SOF = {0xC0, 0xC1, 0xC2}


def jpeg_segment(data: bytes, markers: set[int]) -> int:
    """Offset of the first segment (its 0xFF) whose marker is in `markers`."""
    pos = 2
    while pos + 4 <= len(data) and data[pos] == 0xFF:
        marker = data[pos + 1]
        if marker in markers:
            return pos
        pos += 2 + struct.unpack(">H", data[pos + 2:pos + 4])[0]
    raise ValueError("marker not found")


def jpeg_dims(data: bytes, width: int, height: int) -> bytes:
    pos = jpeg_segment(data, SOF)
    return data[:pos + 5] + struct.pack(">HH", height, width) + data[pos + 9:]


def exif_jpeg(img: Image.Image, orientation: int) -> bytes:
    exif = Image.Exif()
    exif[0x0112] = orientation
    return encode(img, "JPEG", quality=85, exif=exif.tobytes())


# ---------------------------------------------------------------------------------------------------------------
# TIFF (also the EXIF block of a JPEG, a TIFF structure starting further in)


def tiff_ifd0(data: bytes, start: int = 0) -> tuple[str, int, int]:
    """Byte order, offset of IFD0 and its entry count, for a TIFF structure beginning at `start`."""
    order = "<" if data[start:start + 2] == b"II" else ">"
    ifd = start + struct.unpack(order + "I", data[start + 4:start + 8])[0]
    return order, ifd, struct.unpack(order + "H", data[ifd:ifd + 2])[0]


def tiff_entries(data: bytes) -> tuple[str, int, dict[int, int]]:
    """Byte order, IFD0 offset and {tag: offset of its 12-byte entry}."""
    order, ifd, count = tiff_ifd0(data)
    entries = {struct.unpack(order + "H", data[ifd + 2 + 12 * i:ifd + 4 + 12 * i])[0]: ifd + 2 + 12 * i for i in range(count)}
    return order, ifd, entries


def tiff_set(data: bytes, tag: int, value: int) -> bytes:
    """Set a tag to one LONG value (ImageWidth, StripByteCounts, ...)."""
    order, _, entries = tiff_entries(data)
    pos = entries[tag]
    return data[:pos + 2] + struct.pack(order + "HII", 4, 1, value) + data[pos + 12:]


def tiff_dims(data: bytes, width: int, height: int) -> bytes:
    """ImageWidth and ImageLength set to width and height."""
    return tiff_set(tiff_set(data, 256, width), 257, height)


def tiff_loop(data: bytes, start: int = 0) -> bytes:
    """IFD0's next-IFD pointer pointed back at IFD0 (offsets count from `start`, where the TIFF structure begins)."""
    order, ifd, count = tiff_ifd0(data, start)
    return patch(data, ifd + 2 + 12 * count, struct.pack(order + "I", ifd - start))


# ---------------------------------------------------------------------------------------------------------------
# GIF, BMP, WebP, ICO


def gif_screen(data: bytes, width: int, height: int) -> bytes:
    """The GIF's logical screen set to width x height."""
    return patch(data, 6, struct.pack("<HH", width, height))


def bmp_dims(data: bytes, width: int, height: int) -> bytes:
    """The BMP's info header set to width x height (a negative height means top-down rows)."""
    return patch(data, 18, struct.pack("<ii", width, height))


def bmp_top_down(bmp: bytes, width: int, height: int) -> bytes:
    """The same 24-bit picture stored top-down (negative height, rows reversed): valid, and rarely written."""
    offset = struct.unpack("<I", bmp[10:14])[0]
    stride = (width * 3 + 3) & ~3
    rows = [bmp[offset + i * stride:offset + (i + 1) * stride] for i in range(height)]
    return patch(bmp[:offset], 22, struct.pack("<i", -height)) + b"".join(reversed(rows))


def webp_dims(data: bytes, width: int, height: int) -> bytes:
    """A simple lossy WebP's VP8 frame set to width x height (14 bits each; the scale bits cleared)."""
    return patch(data, 26, struct.pack("<HH", width, height))


def ico_holding(png: bytes, type_: int = 1) -> bytes:
    """An ICO (type 1) or CUR (type 2) whose one image is `png` (0 x 0 in the directory means 256 or larger)."""
    return struct.pack("<HHH", 0, type_, 1) + struct.pack("<BBBBHHII", 0, 0, 0, 0, 1, 32, len(png), 22) + png


# ---------------------------------------------------------------------------------------------------------------
# Mutations


def bitflips(data: bytes, rng: random.Random, count: int, within: int | None = None) -> tuple[bytes, str]:
    buf = bytearray(data)
    limit = min(len(buf), within or len(buf))
    spots = sorted(rng.randrange(limit * 8) for _ in range(count))
    for bit in spots:
        buf[bit // 8] ^= 1 << (bit % 8)
    return bytes(buf), f"{count} bit(s) flipped at bits {spots[:8]}{'...' if count > 8 else ''}"


def byterun(data: bytes, rng: random.Random) -> tuple[bytes, str]:
    length = rng.randint(4, 64)
    start = rng.randrange(max(1, len(data) - length))
    fill = rng.choice(["zeros", "ones", "random"])
    run = {"zeros": b"\0" * length, "ones": b"\xff" * length}.get(fill) or rng.randbytes(length)
    return patch(data, start, run), f"{length} bytes of {fill} at {start}"
