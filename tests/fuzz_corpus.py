"""A seeded corpus of hostile and odd inputs for cutq (fed to `remove()` by tests/fuzz_probe.py).

Why a generator rather than checked-in files: the corpus is mostly mutations of real photos in eight formats, and
the interesting bytes (a 30,000,000 x 1 PNG, an ICO holding an 81 Mpx PNG) are tiny to describe and easy to get
wrong by hand. `write_corpus(folder, seed)` writes the same files for the same seed (and the same source photos
and Pillow), so a failure names a file anyone can regenerate:

    .venv/bin/python -m tests.fuzz_corpus write /tmp/corpus --seed 29

Every `Entry` says what cutq must do with it: `ok` (a valid, if odd, image: it must be cut out), `error` (it must
be refused with a message naming the file) or `either` (a random mutation may still decode; only "no hang, no
traceback, no partial file, a failure names the file" is checked). Bombs (`kind == "bomb"`) must be refused
from their header, so the tests hold them to tighter time and memory caps.

Special files (FIFO, socket, symlink loop, ...) are not bytes and are made by the tests themselves. The byte
surgery is in tests/fuzz_formats.py, the header edits and bombs in tests/fuzz_headers.py.
"""

from __future__ import annotations

import json
import os
import random
import sys
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from .fuzz_formats import bitflips, byterun, encode, exif_jpeg, png_split_idat
from .fuzz_headers import bomb_entries, header_entries

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
    header_entries(corpus.add, rng, base, photos)
    bomb_entries(corpus.add, photos[0])
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
        "odd-idat-split.png": (png_split_idat(encode(img, "PNG")), img.size),
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


def main(argv: list[str]) -> int:
    if argv[:1] == ["write"] and len(argv) in (2, 4):
        seed = int(argv[3]) if len(argv) == 4 and argv[2] == "--seed" else SEED
        entries = write_corpus(argv[1], seed)
        print(json.dumps(Counter(f"{e.kind}/{e.expect}" for e in entries), indent=1, sort_keys=True))
        print(f"{len(entries)} entries written to {argv[1]}")
        return 0
    print("usage: python -m tests.fuzz_corpus write FOLDER [--seed N]", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
