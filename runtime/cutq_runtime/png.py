"""A PNG writer for 8-bit L, LA, RGB and RGBA: about twice as fast as Pillow's at the same file size.

Pillow picks a filter per row by trying all five, which costs more than the compression it buys on
cut-outs (large transparent areas, smooth foregrounds). Here every row uses the "Up" filter, computed
in one numpy pass, and zlib runs on the result; large images are split into row bands compressed on
several threads (zlib releases the GIL) and joined with sync flushes into one valid deflate stream.
The pixels are exactly those of the image; only the bytes differ from Pillow's encoder.
"""

from __future__ import annotations

import io
import itertools
import os
import struct
import threading
import zlib
from concurrent.futures import ThreadPoolExecutor

import numpy as np
from PIL import Image

_COLOR_TYPES = {"L": 0, "RGB": 2, "LA": 4, "RGBA": 6}
_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_BAND_BYTES = 4 << 20  # below this, one thread is faster than handing work to a pool
_pool: ThreadPoolExecutor | None = None
_pool_lock = threading.Lock()


def encode(img: Image.Image, level: int = 1) -> bytes:
    """PNG bytes for `img` at zlib `level` (0-9); other modes go through Pillow's encoder."""
    if img.mode not in _COLOR_TYPES:
        buffer = io.BytesIO()
        img.save(buffer, "PNG", compress_level=level)
        return buffer.getvalue()
    pixels = np.asarray(img)
    height, width = pixels.shape[:2]
    rows = pixels.reshape(height, -1)
    filtered = np.empty((height, rows.shape[1] + 1), dtype=np.uint8)
    filtered[:, 0] = 2  # filter type "Up": each byte minus the byte above it, modulo 256
    filtered[0, 1:] = rows[0]
    np.subtract(rows[1:], rows[:-1], out=filtered[1:, 1:])
    header = struct.pack(">IIBBBBB", width, height, 8, _COLOR_TYPES[img.mode], 0, 0, 0)
    idat = _zlib_stream(filtered, level)
    return _SIGNATURE + _chunk(b"IHDR", header) + _chunk(b"IDAT", idat) + _chunk(b"IEND", b"")


def _zlib_stream(filtered: np.ndarray, level: int) -> bytes:
    """One zlib stream over all rows, from raw deflate pieces compressed in parallel."""
    bands = _bands(filtered)
    last = len(bands) - 1

    def deflate(index: int) -> bytes:
        compressor = zlib.compressobj(level, zlib.DEFLATED, -15)
        start, stop = bands[index]
        data = compressor.compress(filtered[start:stop])
        return data + compressor.flush(zlib.Z_FINISH if index == last else zlib.Z_SYNC_FLUSH)

    pieces = list(_executor().map(deflate, range(len(bands)))) if len(bands) > 1 else [deflate(0)]
    return _zlib_header(level) + b"".join(pieces) + struct.pack(">I", zlib.adler32(filtered))


def _bands(filtered: np.ndarray) -> list[tuple[int, int]]:
    height = filtered.shape[0]
    count = max(1, min(os.cpu_count() or 1, 4, filtered.nbytes // _BAND_BYTES, height))
    edges = [height * i // count for i in range(count + 1)]
    return list(itertools.pairwise(edges))


def _executor() -> ThreadPoolExecutor:
    global _pool
    with _pool_lock:
        if _pool is None:
            _pool = ThreadPoolExecutor(max_workers=min(os.cpu_count() or 1, 4), thread_name_prefix="cutq-png")
        return _pool


def _zlib_header(level: int) -> bytes:
    """CMF/FLG bytes: deflate with a 32 KiB window, the level hint, and the check bits."""
    cmf = 0x78
    flevel = 0 if level < 2 else 1 if level < 6 else 2 if level == 6 else 3
    flg = flevel << 6
    flg += 31 - ((cmf << 8) + flg) % 31
    return bytes((cmf, flg))


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
