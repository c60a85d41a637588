"""A seeded corpus of hostile and odd inputs for cutq, and the child process that feeds it to `remove()`.

Why a generator rather than checked-in files: the corpus is mostly mutations of real photos in eight formats, and
the interesting bytes (a 30,000,000 x 1 PNG, an ICO holding an 81 Mpx PNG) are tiny to describe and easy to get
wrong by hand. `write_corpus(folder, seed)` writes the same files for the same seed (and the same source photos
and Pillow), so a failure names a file anyone can regenerate:

    .venv/bin/python -m tests.fuzz_corpus write /tmp/corpus --seed 29

Every `Entry` says what cutq must do with it: `ok` (a valid, if odd, image: it must be cut out), `error` (it must
be refused with a message naming the file) or `either` (a random mutation may still decode; only "no hang, no
traceback, no partial file, a failure names the file" is checked). Bombs (`kind == "bomb"`) must be refused
from their header, so the tests hold them to tighter time and memory caps.

Special files (FIFO, socket, symlink loop, ...) are not bytes and are made by the tests themselves.
"""

from __future__ import annotations

import io
import json
import os
import random
import resource
import struct
import sys
import time
import traceback
import zlib
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
CALIBRATION = ROOT / "calibration_data"
SEED = 29
BY_NAME = "by-name"
"""Entries passed on the command line by name (odd names, suffixes a folder scan skips) live in this subfolder,
so a folder run over the corpus does not meet them twice."""
SCANNED_SUFFIXES = {".jpg", ".jpeg", ".png", ".webp", ".bmp", ".tif", ".tiff", ".gif"}
EXPECTS = ("ok", "error", "either")


@dataclass(frozen=True)
class Entry:
    name: str  # file name; may hold spaces, unicode, markup, a leading dash, a newline, 240+ bytes
    data: bytes
    kind: str  # valid, odd, format, truncated, bitflip, byterun, header, bomb, garbage, name
    expect: str  # ok, error or either
    note: str  # what was done to the bytes, for failure messages
    size: tuple[int, int] | None = None  # for `ok`: the cut-out's size (EXIF rotation applied)
    by_name: bool = False  # passed by name on the command line instead of found by scanning the folder

    def path(self, folder: Path) -> Path:
        return folder / BY_NAME / self.name if self.by_name else folder / self.name

    def manifest(self, folder: Path) -> dict:
        """The entry without its bytes, for a child process that reads the file."""
        return {"name": self.name, "path": str(self.path(folder)), "kind": self.kind, "expect": self.expect,
                "note": self.note, "size": self.size}


# ---------------------------------------------------------------------------------------------------------------
# Source photos and encoders


def source_photos(rng: random.Random, count: int = 6) -> list[Image.Image]:
    """Real photos, small (long side 64-160 px) so the valid entries run fast: bundled ones, plus davis-val when
    it is beside the repo (as in the other tests; the corpus then differs from a checkout without it)."""
    paths = sorted(CALIBRATION.glob("*.png")) + sorted(CALIBRATION.glob("*.jpg"))
    davis = Path(os.environ.get("CUTQ_DAVIS", ROOT.parent / "shared" / "data" / "davis-val")) / "images"
    if davis.is_dir():
        paths += rng.sample(sorted(davis.glob("*.jpg")), 4)
    photos = []
    for path in rng.sample(paths, min(count, len(paths))):
        with Image.open(path) as img:
            rgb = img.convert("RGB")
        side = rng.randint(64, 160)
        rgb.thumbnail((side, side), Image.Resampling.LANCZOS)
        photos.append(rgb)
    return photos


def encode(img: Image.Image, fmt: str, **kwargs) -> bytes:
    out = io.BytesIO()
    img.save(out, fmt, **kwargs)
    return out.getvalue()


FORMATS: dict[str, tuple[str, object]] = {
    # name: (suffix, encoder). Every format of the whitelist, in the variants cameras and tools write.
    "png": (".png", lambda im: encode(im, "PNG")),
    "jpeg": (".jpg", lambda im: encode(im, "JPEG", quality=85)),
    "pjpeg": (".jpg", lambda im: encode(im, "JPEG", quality=85, progressive=True)),
    "gif": (".gif", lambda im: encode(im.convert("P", palette=Image.Palette.ADAPTIVE), "GIF")),
    "tiff": (".tif", lambda im: encode(im, "TIFF")),
    "tiff-lzw": (".tiff", lambda im: encode(im, "TIFF", compression="tiff_lzw")),
    "webp": (".webp", lambda im: encode(im, "WEBP", quality=80)),
    "bmp": (".bmp", lambda im: encode(im, "BMP")),
    "ppm": (".ppm", lambda im: encode(im, "PPM")),
    "mpo": (".jpg", lambda im: encode(im, "MPO", save_all=True, append_images=[im.transpose(Image.Transpose.FLIP_LEFT_RIGHT)])),
    "ico": (".ico", lambda im: encode(im.resize((48, 48)), "ICO", sizes=[(48, 48)])),
}
ALLOWED = [f for f in FORMATS if f != "ico"]  # ICO/CUR decode on open: refused whatever their bytes


# ---------------------------------------------------------------------------------------------------------------
# Format surgery: just enough parsing to edit the fields a bomb or a corrupt file lies in


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


def jpeg_segment(data: bytes, markers: set[int]) -> int:
    """Offset of the first segment (its 0xFF) whose marker is in `markers`."""
    pos = 2
    while pos + 4 <= len(data) and data[pos] == 0xFF:
        marker = data[pos + 1]
        if marker in markers:
            return pos
        pos += 2 + struct.unpack(">H", data[pos + 2:pos + 4])[0]
    raise ValueError("marker not found")


SOF = {0xC0, 0xC1, 0xC2}


def jpeg_dims(data: bytes, width: int, height: int) -> bytes:
    pos = jpeg_segment(data, SOF)
    return data[:pos + 5] + struct.pack(">HH", height, width) + data[pos + 9:]


def tiff_entries(data: bytes) -> tuple[str, int, dict[int, int]]:
    """Byte order, IFD0 offset and {tag: offset of its 12-byte entry}."""
    order = "<" if data[:2] == b"II" else ">"
    ifd = struct.unpack(order + "I", data[4:8])[0]
    count = struct.unpack(order + "H", data[ifd:ifd + 2])[0]
    entries = {struct.unpack(order + "H", data[ifd + 2 + 12 * i:ifd + 4 + 12 * i])[0]: ifd + 2 + 12 * i for i in range(count)}
    return order, ifd, entries


def tiff_set(data: bytes, tag: int, value: int) -> bytes:
    """Set a tag to one LONG value (ImageWidth, StripByteCounts, ...)."""
    order, _, entries = tiff_entries(data)
    pos = entries[tag]
    return data[:pos + 2] + struct.pack(order + "HII", 4, 1, value) + data[pos + 12:]


def patch(data: bytes, offset: int, new: bytes) -> bytes:
    return data[:offset] + new + data[offset + len(new):]


def exif_jpeg(img: Image.Image, orientation: int) -> bytes:
    exif = Image.Exif()
    exif[0x0112] = orientation
    return encode(img, "JPEG", quality=85, exif=exif.tobytes())


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


# ---------------------------------------------------------------------------------------------------------------
# The corpus


class _Corpus:
    def __init__(self) -> None:
        self.entries: list[Entry] = []

    def add(self, name: str, data: bytes, kind: str, expect: str, note: str, size: tuple[int, int] | None = None,
            *, by_name: bool | None = None) -> None:
        assert expect in EXPECTS and (expect != "ok" or size is not None), name
        if by_name is None:
            by_name = Path(name).suffix.lower() not in SCANNED_SUFFIXES
        self.entries.append(Entry(name, data, kind, expect, note, size, by_name))


def generate(seed: int = SEED) -> list[Entry]:
    """The corpus for `seed`: the same entries, in the same order, with the same bytes, every time."""
    rng = random.Random(seed)
    photos = source_photos(rng)
    corpus = _Corpus()
    base: dict[str, tuple[bytes, Image.Image]] = {}
    for fmt, (suffix, encoder) in FORMATS.items():
        img = rng.choice(photos)
        data = encoder(img)  # type: ignore[operator]
        base[fmt] = (data, img)
        if fmt == "ico":
            corpus.add(f"valid-{fmt}{suffix}", data, "format", "error", "a valid ICO: the format decodes on open")
        else:
            corpus.add(f"valid-{fmt}{suffix}", data, "valid", "ok", f"{fmt} of a {img.size} photo", img.size)

    _odd(corpus, rng, photos)
    _other_formats(corpus, rng.choice(photos))
    for fmt, (data, _) in base.items():
        _mutations(corpus, rng, fmt, data)
    _headers(corpus, rng, base, photos)
    _bombs(corpus, photos[0])
    _garbage(corpus, rng)
    _names(corpus, rng, photos, base)

    stems = Counter(Path(e.name).stem for e in corpus.entries)
    clashes = [s for s, n in stems.items() if n > 1]
    assert not clashes, f"entries that would write the same <stem>.png: {clashes}"
    return corpus.entries


def _odd(corpus: _Corpus, rng: random.Random, photos: list[Image.Image]) -> None:
    """Valid images in modes and layouts a camera or editor may produce: each must be cut out."""
    img = rng.choice(photos)
    grey16 = Image.fromarray(np.asarray(img.convert("L"), dtype=np.uint16) * 257)
    palette = img.convert("P", palette=Image.Palette.ADAPTIVE, colors=64)
    frames = [img, img.rotate(90, expand=False), img.transpose(Image.Transpose.FLIP_TOP_BOTTOM)]
    w, h = img.size
    odd = {
        "odd-cmyk.jpg": (encode(img.convert("CMYK"), "JPEG", quality=85), img.size),
        "odd-grey.jpg": (encode(img.convert("L"), "JPEG"), img.size),
        "odd-16bit.png": (encode(grey16, "PNG"), img.size),
        "odd-palette-trns.png": (encode(palette, "PNG", transparency=0), img.size),
        "odd-la.png": (encode(img.convert("LA"), "PNG"), img.size),
        "odd-rgba.png": (encode(img.convert("RGBA"), "PNG"), img.size),
        "odd-bilevel.bmp": (encode(img.convert("1"), "BMP"), img.size),
        "odd-palette.bmp": (encode(palette, "BMP"), img.size),
        "odd-exif-rotated.jpg": (exif_jpeg(img, 6), (h, w)),
        "odd-exif-mirrored.jpg": (exif_jpeg(img, 2), (w, h)),
        "odd-1x1.png": (encode(Image.new("RGB", (1, 1), (200, 10, 10)), "PNG"), (1, 1)),
        "odd-1x1-jpeg.jpg": (encode(Image.new("RGB", (1, 1), (10, 200, 10)), "JPEG"), (1, 1)),
        "odd-strip-1x300.png": (encode(img.resize((1, 300)), "PNG"), (1, 300)),
        "odd-strip-1200x2.png": (encode(img.resize((1200, 2)), "PNG"), (1200, 2)),
        "odd-animated.gif": (encode(frames[0], "GIF", save_all=True, append_images=frames[1:], duration=80, loop=0), img.size),
        "odd-rgba-webp.webp": (encode(img.convert("RGBA"), "WEBP", quality=80), img.size),
        "odd-lossless.webp": (encode(img, "WEBP", lossless=True), img.size),
        "odd-16bit-tiff.tif": (encode(grey16, "TIFF"), img.size),
        "odd-cmyk-tiff.tif": (encode(img.convert("CMYK"), "TIFF"), img.size),
        "odd-grey-pgm.pgm": (encode(img.convert("L"), "PPM"), img.size),
        "odd-mpo-camera.jpg": (FORMATS["mpo"][1](img), img.size),  # type: ignore[operator]
        "odd-trailing-junk.png": (encode(img, "PNG") + rng.randbytes(4096), img.size),
        "odd-jpeg-then-zip.jpg": (encode(img, "JPEG") + b"PK\x03\x04" + rng.randbytes(2000), img.size),
        "odd-idat-split.png": (_split_idat(encode(img, "PNG")), img.size),
    }
    # Each decodable entry costs one inference (~0.25 s for u2netp on two cores) in each of the four runs of
    # test_fuzz.py: the modes docs/hostile-input.md names always, a seeded four of the rest (other seeds cover the others).
    rest = [name for name in odd if name not in ALWAYS_ODD]
    chosen = set(ALWAYS_ODD) | set(rng.sample(rest, 4))
    for name, (data, size) in odd.items():
        if name in chosen:
            corpus.add(name, data, "odd", "ok", "a valid image in an unusual mode or layout", size)


ALWAYS_ODD = ("odd-cmyk.jpg", "odd-16bit.png", "odd-palette-trns.png", "odd-la.png", "odd-exif-rotated.jpg", "odd-1x1.png",
              "odd-animated.gif")


def _split_idat(data: bytes) -> bytes:
    """The same PNG with its image data in 64-byte IDAT chunks (valid; some encoders write tiny chunks)."""
    chunks = png_chunks(data)
    idat = b"".join(d for k, d in chunks if k == b"IDAT")
    rest = [(k, d) for k, d in chunks if k not in (b"IDAT", b"IEND")]
    return png_build([*rest, *((b"IDAT", idat[i:i + 64]) for i in range(0, len(idat), 64)), (b"IEND", b"")])


def _other_formats(corpus: _Corpus, img: Image.Image) -> None:
    """Formats Pillow opens but cutq must not (outside the whitelist), named as if they were photos."""
    small = img.resize((40, 30))
    for fmt, source, suffix in [("TGA", small, ".png"), ("PCX", small, ".jpg"), ("SGI", small, ".png"),
                                ("QOI", small, ".webp"), ("DDS", small, ".png"), ("XBM", small.convert("1"), ".jpg"),
                                ("IM", small, ".tif"), ("SPIDER", small.convert("F"), ".png"),
                                ("JPEG2000", small, ".jpg"), ("MSP", small.convert("1"), ".bmp"),
                                ("ICNS", small, ".png"), ("EPS", small, ".png")]:
        try:
            data = encode(source, fmt)
        except (OSError, KeyError, ValueError):
            continue  # a Pillow built without it
        corpus.add(f"format-{fmt.lower()}{suffix}", data, "format", "error", f"{fmt} named {suffix}: outside the whitelist")
    cur = bytearray(FORMATS["ico"][1](img))  # type: ignore[operator]
    cur[2] = 2
    corpus.add("format-cur.cur", bytes(cur), "format", "error", "a CUR (ICO with type 2)")


def _mutations(corpus: _Corpus, rng: random.Random, fmt: str, data: bytes) -> None:
    """Truncations (inside the signature, the header, the data, the trailer), bit flips and byte runs."""
    suffix = FORMATS[fmt][0]
    sure = fmt in ("png", "jpeg")  # where half a file is known to be refused (Pillow raises on short data)
    cuts = [(8, "error"), (40, "error"), (len(data) // 2, "error" if sure else "either"), (len(data) - 2, "either")]
    mutated = "error" if fmt == "ico" else "either"  # an ICO is refused whatever its bytes; a bit flip cannot make it a PNG
    cuts = [(at, "error" if fmt == "ico" else expect) for at, expect in cuts]
    for at, expect in cuts:
        corpus.add(f"{fmt}-trunc-{at}{suffix}", data[:at], "truncated", expect, f"{fmt} cut at byte {at} of {len(data)}")
    if rng.random() < 0.5:  # one flip entry per format (each decodable one costs an inference per run)
        flipped, note = bitflips(data, rng, 1, within=64)
        corpus.add(f"{fmt}-flip-head{suffix}", flipped, "bitflip", mutated, f"{fmt}: {note} (header)")
    else:
        flipped, note = bitflips(data, rng, 16)
        corpus.add(f"{fmt}-flip-16{suffix}", flipped, "bitflip", mutated, f"{fmt}: {note}")
    run, note = byterun(data, rng)
    corpus.add(f"{fmt}-run{suffix}", run, "byterun", mutated, f"{fmt}: {note}")


def _headers(corpus: _Corpus, rng: random.Random, base: dict[str, tuple[bytes, Image.Image]],
             photos: list[Image.Image]) -> None:
    """Edits of the fields decoders trust: dimensions, lengths, CRCs, counts, offsets, palette sizes."""
    add = corpus.add
    png = base["png"][0]
    ihdr = png_offset(png, b"IHDR")
    chunks = png_chunks(png)
    header = chunks[0][1]

    def with_ihdr(new_header: bytes) -> bytes:
        return png_build([(b"IHDR", new_header), *chunks[1:]])

    width, height = struct.unpack(">II", header[:8])
    add("png-ihdr-width-x7.png", with_ihdr(struct.pack(">II", width * 7, height) + header[8:]), "header", "either",
        "IHDR width x7, CRC fixed: the data is too short")
    add("png-ihdr-height-65535.png", with_ihdr(struct.pack(">II", width, 65535) + header[8:]), "header", "either",
        "IHDR height 65535, CRC fixed")
    add("png-ihdr-zero-width.png", with_ihdr(struct.pack(">II", 0, height) + header[8:]), "header", "error",
        "IHDR width 0: an image with no pixels")
    add("png-ihdr-depth-16.png", with_ihdr(header[:8] + b"\x10" + header[9:]), "header", "either", "bit depth 8 -> 16")
    add("png-ihdr-colortype-6.png", with_ihdr(header[:9] + b"\x06" + header[10:]), "header", "either", "colour type 2 -> 6")
    add("png-ihdr-bad-crc.png", patch(png, ihdr + 8 + 13, b"\0\0\0\0"), "header", "either", "IHDR CRC zeroed")
    idat = png_offset(png, b"IDAT")
    add("png-idat-length-huge.png", patch(png, idat, b"\x7f\xff\xff\xf0"), "header", "either", "IDAT length 0x7ffffff0")
    idat_len = struct.unpack(">I", png[idat:idat + 4])[0]
    add("png-idat-bad-crc.png", patch(png, idat + 8 + idat_len, b"\xde\xad\xbe\xef"), "header", "either", "IDAT CRC wrong")
    palette_png = encode(photos[1].convert("P", palette=Image.Palette.ADAPTIVE, colors=200), "PNG", transparency=3)
    pchunks = png_chunks(palette_png)
    short_plte = [(k, d[:9] if k == b"PLTE" else d) for k, d in pchunks]
    add("png-plte-3-colours.png", png_build(short_plte), "header", "either", "PLTE cut to 3 colours (indices up to 199)")
    long_trns = [(k, d + b"\0" * 300 if k == b"tRNS" else d) for k, d in pchunks]
    add("png-trns-longer-than-palette.png", png_build(long_trns), "header", "either", "tRNS 300 bytes longer than PLTE")
    plte = png_offset(palette_png, b"PLTE")
    add("png-plte-length-768.png", patch(palette_png, plte, struct.pack(">I", 768)), "header", "either",
        "PLTE length field 768 for 600 bytes")
    text_bomb = zlib.compress(b"\0" * 50_000_000, 9)
    # Parser bombs: each sits before image data cut in half, so the parser must get through it and the file is
    # still refused (cheap: no inference). A decodable image behind them would test the same parser at 1 inference
    # per run each.
    short = [(k, d[:len(d) // 2] if k == b"IDAT" else d) for k, d in chunks]
    text_bomb = zlib.compress(b"\0" * 50_000_000, 9)
    add("png-ztxt-50MB.png", png_build([short[0], (b"zTXt", b"Comment\0\0" + text_bomb), *short[1:]]), "header", "error",
        "a zTXt chunk that inflates to 50 MB, then half the image data")
    add("png-iccp-50MB.png", png_build([short[0], (b"iCCP", b"icc\0\0" + text_bomb), *short[1:]]), "header", "error",
        "an iCCP profile that inflates to 50 MB, then half the image data")
    many = [(b"tEXt", b"k\0" + str(i).encode()) for i in range(20_000)]
    add("png-20000-text-chunks.png", png_build([short[0], *many, *short[1:]]), "header", "error",
        "20,000 tEXt chunks, then half the image data")
    actl = (b"acTL", struct.pack(">II", 0x7FFFFFFF, 0))
    add("png-actl-2g-frames.png", png_build([chunks[0], actl, *chunks[1:]]), "header", "either",
        "an APNG acTL claiming 2^31 frames, none present")

    jpeg = base["jpeg"][0]
    w, h = base["jpeg"][1].size
    sof = jpeg_segment(jpeg, SOF)
    add("jpeg-sof-zero-height.jpg", jpeg_dims(jpeg, w, 0), "header", "either", "SOF height 0 (DNL)")
    add("jpeg-sof-width-plus-16.jpg", jpeg_dims(jpeg, w + 16, h), "header", "either", "SOF width + 16")
    add("jpeg-sof-65535x65535.jpg", jpeg_dims(jpeg, 65535, 65535), "header", "error", "SOF 65535 x 65535: over the pixel limit")
    add("jpeg-sof-4-components.jpg", patch(jpeg, sof + 9, b"\x04"), "header", "either", "SOF component count 3 -> 4")
    dqt = jpeg_segment(jpeg, {0xDB})
    add("jpeg-dqt-zeros.jpg", patch(jpeg, dqt + 5, b"\0" * 64), "header", "either", "quantisation table all zeros")
    dht = jpeg_segment(jpeg, {0xC4})
    add("jpeg-dht-garbage.jpg", patch(jpeg, dht + 5, rng.randbytes(40)), "header", "either", "Huffman table garbage")
    sos = jpeg_segment(jpeg, {0xDA})
    add("jpeg-sos-components-9.jpg", patch(jpeg, sos + 4, b"\x09"), "header", "either", "SOS component count 9")
    exif = exif_jpeg(base["jpeg"][1], 6)
    tiff_at = exif.index(b"Exif\0\0") + 6
    ifd0 = tiff_at + struct.unpack("<I" if exif[tiff_at:tiff_at + 2] == b"II" else ">I", exif[tiff_at + 4:tiff_at + 8])[0]
    add("jpeg-exif-count-65535.jpg", patch(exif, ifd0, b"\xff\xff"), "header", "either", "EXIF IFD0 entry count 65535")
    exif_order = "<" if exif[tiff_at] == 0x49 else ">"
    entries = struct.unpack(exif_order + "H", exif[ifd0:ifd0 + 2])[0]
    loop = patch(exif, ifd0 + 2 + 12 * entries, struct.pack(exif_order + "I", ifd0 - tiff_at))
    add("jpeg-exif-ifd-loop.jpg", loop, "header", "either", "EXIF IFD0 next pointer back to itself")
    coms = b"".join(b"\xff\xfe\x00\x06" + struct.pack(">I", i) for i in range(20_000))
    add("jpeg-20000-comments.jpg", jpeg[:2] + coms + jpeg[2:len(jpeg) // 2], "header", "error",
        "20,000 COM segments before the frame, then half the image data")

    pjpeg = base["pjpeg"][0]
    add("pjpeg-sof-width-x4.pjpg.jpg", jpeg_dims(pjpeg, base["pjpeg"][1].width * 4, base["pjpeg"][1].height), "header",
        "either", "progressive SOF2 width x4")

    gif = base["gif"][0]
    add("gif-screen-65535x65535.gif", patch(gif, 6, struct.pack("<HH", 65535, 65535)), "header", "error",
        "logical screen 65535 x 65535: over the pixel limit")
    descriptor = gif.index(b"\x2c", 13 + 3 * (2 << (gif[10] & 7)))
    add("gif-frame-60000-wide.gif", patch(gif, descriptor + 5, struct.pack("<H", 60000)), "header", "either",
        "image descriptor 60000 wide on a small screen")
    add("gif-colour-table-2.gif", patch(gif, 10, bytes([gif[10] & 0xF8])), "header", "either",
        "global colour table size 256 -> 2 (the table bytes stay)")
    lzw = descriptor + 10 + (3 * (2 << (gif[descriptor + 9] & 7)) if gif[descriptor + 9] & 0x80 else 0)
    add("gif-lzw-code-size-12.gif", patch(gif, lzw, b"\x0c"), "header", "either", "LZW minimum code size 12")

    tiff = base["tiff"][0]
    order, ifd, _ = tiff_entries(tiff)
    add("tiff-dims-100000x100000.tif", tiff_set(tiff_set(tiff, 256, 100_000), 257, 100_000), "header", "error",
        "ImageWidth and ImageLength 100000: over the pixel limit")
    add("tiff-ifd-offset-past-end.tif", patch(tiff, 4, struct.pack(order + "I", len(tiff) + 1000)), "header", "error",
        "IFD0 offset past the end of the file")
    add("tiff-ifd-count-65535.tif", patch(tiff, ifd, struct.pack(order + "H", 65535)), "header", "either",
        "IFD0 entry count 65535")
    count = struct.unpack(order + "H", tiff[ifd:ifd + 2])[0]
    add("tiff-ifd-loop.tif", patch(tiff, ifd + 2 + 12 * count, struct.pack(order + "I", ifd)), "header", "either",
        "IFD0 next pointer back to IFD0")
    add("tiff-stripbytes-huge.tif", tiff_set(tiff, 279, 0x7FFFFFFF), "header", "either", "StripByteCounts 0x7fffffff")
    add("tiff-bits-per-sample-3.tif", tiff_set(tiff, 258, 3), "header", "either", "BitsPerSample 3")

    bmp = base["bmp"][0]
    bw, bh = base["bmp"][1].size
    add("bmp-dims-50000x50000.bmp", patch(bmp, 18, struct.pack("<ii", 50_000, 50_000)), "header", "error",
        "50000 x 50000: over the pixel limit")
    add("bmp-top-down.bmp", _top_down(bmp, bw, bh), "header", "ok", "negative height: a top-down BMP (valid)", (bw, bh))
    add("bmp-bitcount-13.bmp", patch(bmp, 28, struct.pack("<H", 13)), "header", "either", "biBitCount 13")
    add("bmp-offbits-huge.bmp", patch(bmp, 10, struct.pack("<I", 0x7FFFFFF0)), "header", "either", "bfOffBits 0x7ffffff0")
    pal_bmp = encode(photos[2].convert("P", palette=Image.Palette.ADAPTIVE), "BMP")
    add("bmp-colours-used-huge.bmp", patch(pal_bmp, 46, struct.pack("<I", 0xFFFFFF)), "header", "either",
        "biClrUsed 16,777,215 on an 8-bit BMP")

    webp = base["webp"][0]
    add("webp-vp8-16383x16383.webp", patch(webp, 26, struct.pack("<HH", 16383, 16383)), "header", "error",
        "VP8 frame 16383 x 16383: over the pixel limit")
    add("webp-riff-size-huge.webp", patch(webp, 4, struct.pack("<I", 0x7FFFFFF0)), "header", "either", "RIFF size 0x7ffffff0")
    vp8x = encode(photos[3].convert("RGBA"), "WEBP", quality=80)
    add("webp-vp8x-canvas-16777216x1.webp", patch(vp8x, 24, b"\xff\xff\xff\0\0\0"), "bomb", "error",
        "VP8X canvas 16,777,216 x 1 around a small frame")

    ppm = base["ppm"][0]
    add("ppm-maxval-0.ppm", ppm.replace(b"\n255\n", b"\n0\n", 1), "header", "either", "maxval 0")
    add("ppm-maxval-65535.ppm", ppm.replace(b"\n255\n", b"\n65535\n", 1), "header", "either",
        "maxval 65535 (16-bit samples; the data is half as long as needed)")
    add("ppm-comment-1MB.ppm", b"P6\n#" + b"x" * 1_000_000 + b"\n" + ppm[3:len(ppm) // 2], "header", "error",
        "a 1 MB header comment, then half the image data")

    mpo = base["mpo"][0]
    mpf = mpo.index(b"MPF\0") + 4
    add("mpo-index-garbage.jpg", patch(mpo, mpf + 8, rng.randbytes(48)), "header", "either", "MP index IFD overwritten")


def _top_down(bmp: bytes, width: int, height: int) -> bytes:
    """The same picture stored top-down (negative height, rows reversed): valid, and rarely written."""
    offset = struct.unpack("<I", bmp[10:14])[0]
    stride = (width * 3 + 3) & ~3
    rows = [bmp[offset + i * stride:offset + (i + 1) * stride] for i in range(height)]
    return patch(bmp[:offset], 22, struct.pack("<i", -height)) + b"".join(reversed(rows))


def _bombs(corpus: _Corpus, img: Image.Image) -> None:
    """Small files that declare huge images; each must be refused from its header, fast and in little memory."""
    add = corpus.add
    add("bomb-png-30000000x1.png", declared_png(30_000_000, 1), "bomb", "error",
        "a complete 30,000,000 x 1 PNG (29 kB): under the pixel limit, far over any long side")
    add("bomb-png-1x30000000.png", declared_png(1, 30_000_000), "bomb", "error", "a complete 1 x 30,000,000 PNG")
    add("bomb-png-60000000x1.png", declared_png(60_000_000, 1), "bomb", "error", "a complete 60,000,000 x 1 PNG")
    header_only = png_build([(b"IHDR", struct.pack(">IIBBBBB", 20_000, 20_000, 8, 2, 0, 0, 0)),
                             (b"IDAT", zlib.compress(b"\0" * 64)), (b"IEND", b"")])
    add("bomb-png-20000x20000-header.png", header_only, "bomb", "error", "IHDR 20000 x 20000 RGB with 64 bytes of data")
    small = img.copy()
    small.thumbnail((32, 32))
    tiny_jpeg = encode(small, "JPEG", quality=40)
    add("bomb-jpeg-1kB-9000x9000.jpg", jpeg_dims(tiny_jpeg, 9000, 9000), "bomb", "error",
        f"a {len(tiny_jpeg)}-byte JPEG whose SOF says 9000 x 9000 (libjpeg pads the missing data)")
    tiny_pjpeg = encode(small, "JPEG", quality=40, progressive=True)
    add("bomb-pjpeg-1kB-9000x9000.jpg", jpeg_dims(tiny_pjpeg, 9000, 9000), "bomb", "error",
        "the same, progressive (SOF2)")
    gif = encode(small.convert("P", palette=Image.Palette.ADAPTIVE), "GIF")
    add("bomb-gif-screen-65535x1200.gif", patch(gif, 6, struct.pack("<HH", 65535, 1200)), "bomb", "error",
        "a 32 px frame on a 65535 x 1200 logical screen (79 Mpx: under the pixel limit)")
    add("bomb-tiff-100000x800.tif", encode(Image.new("1", (100_000, 800)), "TIFF", compression="tiff_adobe_deflate"), "bomb",
        "error", "a complete deflated 100000 x 800 bilevel TIFF (80 Mpx: under the pixel limit)")
    add("bomb-bmp-100000x800.bmp", patch(encode(small, "BMP"), 18, struct.pack("<ii", 100_000, 800)), "bomb", "error",
        "a BMP header declaring 100000 x 800 (80 Mpx) over 3 kB of data")
    add("bomb-ppm-100000x800.ppm", b"P5\n100000 800\n255\n" + b"\0" * 4096, "bomb", "error",
        "a PGM header declaring 100000 x 800 over 4 kB of data")
    ico_bomb = ico_holding(declared_png(9000, 9000, 1))
    add("bomb-ico-png-9000x9000.ico", ico_bomb, "bomb", "error",
        f"an ICO ({len(ico_bomb) // 1000} kB) holding a complete 9000 x 9000 PNG, decoded by Image.open")
    add("bomb-ico-as-png.png", ico_bomb, "bomb", "error", "the same ICO bytes named .png (found by a folder scan)")
    add("bomb-ico-png-20000x20000.ico", ico_holding(declared_png(20_000, 20_000, 1)), "bomb", "error",
        "an ICO holding a complete 20000 x 20000 bilevel PNG")


def _garbage(corpus: _Corpus, rng: random.Random) -> None:
    """Files that are not images at all, under image names."""
    html = b"<!doctype html><html><head><title>Not found</title></head><body><h1>404</h1></body></html>\n"
    svg = (b'<?xml version="1.0"?><!DOCTYPE lolz [<!ENTITY lol "lol"><!ENTITY lol2 "&lol;&lol;&lol;&lol;&lol;">]>'
           b'<svg xmlns="http://www.w3.org/2000/svg"><text>&lol2;</text></svg>')
    items = {
        "garbage-empty.jpg": b"",
        "garbage-text.jpg": b"this is a text file, not a photo\n" * 40,
        "garbage-html.png": html,
        "garbage-svg-entities.png": svg,
        "garbage-pdf.png": b"%PDF-1.4\n1 0 obj<<>>endobj\ntrailer<<>>\n%%EOF\n",
        "garbage-gzip.png": b"\x1f\x8b\x08\x00\x00\x00\x00\x00" + rng.randbytes(500),
        "garbage-zip.jpg": b"PK\x03\x04" + rng.randbytes(500),
        "garbage-random-16.webp": rng.randbytes(16),
        "garbage-random-1000.png": rng.randbytes(1000),
        "garbage-random-100k.gif": rng.randbytes(100_000),
        "garbage-zeros-1MB.bmp": b"\0" * 1_000_000,
        "garbage-sig-png.png": b"\x89PNG\r\n\x1a\n",
        "garbage-sig-gif.gif": b"GIF89a",
        "garbage-sig-jpeg.jpg": b"\xff\xd8\xff",
        "garbage-sig-webp.webp": b"RIFF\x04\0\0\0WEBP",
        "garbage-sig-tiff.tif": b"II*\0",
        "garbage-sig-bmp.bmp": b"BM",
    }
    for name, data in items.items():
        corpus.add(name, data, "garbage", "error", f"{len(data)} bytes that are not an image")


def _names(corpus: _Corpus, rng: random.Random, photos: list[Image.Image], base: dict[str, tuple[bytes, Image.Image]]) -> None:
    """Odd file names, on good files (they must be written under their stem) and bad ones (the error line must
    show the name as it is: no glob expansion, no rich markup, no emoji codes). Markup with a closing tag holds a
    slash, so `a[/]b.png` is the file `]b.png` in the folder `a[`: a path, passed by name."""
    good_data, good = base["png"]
    jpeg, good_jpeg = base["jpeg"]
    bad = b"not an image\n"
    long_ascii = "long-" + "x" * (240 - len("long-") - 4) + ".png"
    long_unicode = "é" * 118 + ".png"
    longest = "y" * 251 + ".jpg"
    assert len(long_ascii.encode()) == 240 and len(long_unicode.encode()) == 240 and len(longest.encode()) == 255
    always = [("fotó 日本 🐱 (1).png", False), ("glob_[1].png", True), ("-x.png", True), (long_ascii, False),
              (longest, False), ("new\nline.png", False), (os.fsdecode(b"latin1-\xe9.png"), False),
              ("[bold]ok[/bold].png", True)]
    more = [("star*.png", True), (long_unicode, False), ("tab\there.png", False), ("[bold]ok.png", False),
            ("UPPER.PNG", False), ("name with spaces.png", False)]
    for name, by_name in [*always, *rng.sample(more, 1)]:  # good files cost an inference each: a seeded one of `more`
        corpus.add(name, good_data, "name", "ok", "a valid PNG under an odd name", good.size, by_name=by_name)
    corpus.add("name.with.dots.jpeg", jpeg, "name", "ok", "a valid JPEG, dots in the stem", good_jpeg.size)
    names_bad = [("[red]x[/].png", True), ("a[/]b.png", True), ("[red]bad.png", False), (":warning: bad.png", False),
                 ("-bad.png", True),
                 ("bad name with spaces.jpg", False), ("глюк 🐛.png", False), ("glob_[2].png", True),
                 (os.fsdecode(b"bad-\xe9.jpg"), False), ("%s%n{0}.png", False), ("'quote\".png", False)]
    for name, by_name in names_bad:
        corpus.add(name, bad, "name", "error", "text under an odd name", by_name=by_name)


def write_corpus(folder: str | os.PathLike[str], seed: int = SEED) -> list[Entry]:
    """Write the corpus for `seed` into `folder` (and `folder/by-name/`); returns its entries."""
    folder = Path(folder)
    (folder / BY_NAME).mkdir(parents=True, exist_ok=True)
    entries = generate(seed)
    for entry in entries:
        path = entry.path(folder)
        path.parent.mkdir(parents=True, exist_ok=True)  # `a[/]b.png` is a path: `]b.png` in `a[`
        path.write_bytes(entry.data)
    return entries


# ---------------------------------------------------------------------------------------------------------------
# The child side of the remove() fuzz: one process, every input in turn, time and peak memory for each


def rss_kb(field: str = "VmRSS") -> int:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    return 0


def reset_peak() -> bool:
    """Reset VmHWM to the current RSS (Linux 4.0+), so each input's own peak can be read; False if refused."""
    try:
        with open("/proc/self/clear_refs", "w") as handle:
            handle.write("5")
        return True
    except OSError:
        return False


def measured(call) -> tuple[object, BaseException | None, float, int]:
    """Run `call()`; its result or exception, the wall time and how far the peak RSS rose above the RSS before it
    (in kB; from VmHWM when it can be reset, else from ru_maxrss, which only shows new process-wide peaks)."""
    exact = reset_peak()
    before, before_max = rss_kb(), resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    started = time.perf_counter()
    result, error = None, None
    try:
        result = call()
    except BaseException as exc:  # noqa: BLE001 - the caller classifies it (only ImageError is allowed)
        error = exc
    seconds = time.perf_counter() - started
    growth = rss_kb("VmHWM") - before if exact else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before_max
    return result, error, seconds, max(0, growth)


def probe(jobs_file: str, results_file: str, model: str = "u2netp") -> int:
    """For each job {"name", "path"} in `jobs_file`: remove(bytes, source=name), one JSON line in `results_file`.

    A "start" line is written (and flushed) before each input, so a hang or a crash of the process itself is
    pinned on the input in flight. A PNG result is decoded completely and its size recorded."""
    from cutq_runtime import ImageError, RemoveOptions, SessionConfig, new_session, remove

    jobs = json.loads(Path(jobs_file).read_text())
    session = new_session(model, config=SessionConfig(threads=1))  # one core each: the tests run two probes at once
    warm = encode(Image.new("RGB", (64, 48), (90, 120, 200)), "PNG")
    remove(warm, session, source="warm-up")
    with open(results_file, "w", encoding="utf-8") as out:
        for job in jobs:
            out.write(json.dumps({"start": job["name"]}) + "\n")
            out.flush()
            data = Path(job["path"]).read_bytes()
            png, error, seconds, growth = measured(lambda d=data, n=job["name"]: remove(d, session, source=n,
                                                                                          options=RemoveOptions()))
            record: dict = {"name": job["name"], "seconds": round(seconds, 4), "growth_mb": round(growth / 1024, 1)}
            if error is None:
                try:
                    with Image.open(io.BytesIO(png)) as result:  # type: ignore[arg-type]
                        result.load()
                        record.update(outcome="ok", size=list(result.size), mode=result.mode)
                except Exception as exc:  # noqa: BLE001 - reported as a bad output, not a crash of the probe
                    record.update(outcome="bad-output", error=f"{type(exc).__name__}: {exc}")
            elif isinstance(error, ImageError):
                record.update(outcome="ImageError", error=str(error), error_kind=error.kind)
            else:
                record.update(outcome=type(error).__name__, error=str(error),
                              traceback="".join(traceback.format_exception(error)))
            out.write(json.dumps(record) + "\n")
            out.flush()
            if isinstance(error, (KeyboardInterrupt, SystemExit)):
                raise error
    return 0


def main(argv: list[str]) -> int:
    if argv[:1] == ["write"] and len(argv) in (2, 4):
        seed = int(argv[3]) if len(argv) == 4 and argv[2] == "--seed" else SEED
        entries = write_corpus(argv[1], seed)
        print(json.dumps(Counter(f"{e.kind}/{e.expect}" for e in entries), indent=1, sort_keys=True))
        print(f"{len(entries)} entries written to {argv[1]}")
        return 0
    if argv[:1] == ["probe"] and len(argv) in (3, 4):
        return probe(*argv[1:])
    print("usage: python -m tests.fuzz_corpus write FOLDER [--seed N] | probe JOBS.json RESULTS.jsonl [MODEL]",
          file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
