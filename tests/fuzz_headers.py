"""The fuzz corpus's lying headers (used by tests/fuzz_corpus.py): header edits of valid photos, and bombs.

Header edits change the fields decoders trust (dimensions, lengths, CRCs, counts, offsets, palette sizes); bombs
are small files that declare huge images and must be refused from their header, fast and in little memory. Each
entry goes to `add` (the corpus's `_Corpus.add`) in a fixed order, so a seed gives the same corpus every time.
"""

from __future__ import annotations

import random
import struct
import zlib
from typing import Protocol

from PIL import Image

from .fuzz_formats import (
    SOF,
    bmp_dims,
    bmp_top_down,
    declared_png,
    encode,
    exif_jpeg,
    gif_screen,
    ico_holding,
    jpeg_dims,
    jpeg_segment,
    patch,
    png_build,
    png_chunks,
    png_dims,
    png_offset,
    png_with_ihdr,
    tiff_dims,
    tiff_entries,
    tiff_ifd0,
    tiff_loop,
    tiff_set,
    webp_dims,
)

Base = dict[str, tuple[bytes, Image.Image]]
"""Per format of the corpus: its valid file and the photo it encodes."""


class Add(Protocol):
    def __call__(self, name: str, data: bytes, kind: str, expect: str, note: str,
                 size: tuple[int, int] | None = None) -> None: ...


def header_entries(add: Add, rng: random.Random, base: Base, photos: list[Image.Image]) -> None:
    """Edits of the fields decoders trust: dimensions, lengths, CRCs, counts, offsets, palette sizes."""
    _png_headers(add, base["png"][0], photos[1])
    _jpeg_headers(add, rng, base)
    _other_headers(add, rng, base, photos)


def _png_headers(add: Add, png: bytes, photo: Image.Image) -> None:
    ihdr = png_offset(png, b"IHDR")
    chunks = png_chunks(png)
    header = chunks[0][1]
    width, height = struct.unpack(">II", header[:8])
    add("png-ihdr-width-x7.png", png_dims(png, width * 7, height), "header", "either",
        "IHDR width x7, CRC fixed: the data is too short")
    add("png-ihdr-height-65535.png", png_dims(png, width, 65535), "header", "either", "IHDR height 65535, CRC fixed")
    add("png-ihdr-zero-width.png", png_dims(png, 0, height), "header", "error", "IHDR width 0: an image with no pixels")
    add("png-ihdr-depth-16.png", png_with_ihdr(png, header[:8] + b"\x10" + header[9:]), "header", "either",
        "bit depth 8 -> 16")
    add("png-ihdr-colortype-6.png", png_with_ihdr(png, header[:9] + b"\x06" + header[10:]), "header", "either",
        "colour type 2 -> 6")
    add("png-ihdr-bad-crc.png", patch(png, ihdr + 8 + 13, b"\0\0\0\0"), "header", "either", "IHDR CRC zeroed")
    idat = png_offset(png, b"IDAT")
    add("png-idat-length-huge.png", patch(png, idat, b"\x7f\xff\xff\xf0"), "header", "either", "IDAT length 0x7ffffff0")
    idat_len = struct.unpack(">I", png[idat:idat + 4])[0]
    add("png-idat-bad-crc.png", patch(png, idat + 8 + idat_len, b"\xde\xad\xbe\xef"), "header", "either", "IDAT CRC wrong")
    palette_png = encode(photo.convert("P", palette=Image.Palette.ADAPTIVE, colors=200), "PNG", transparency=3)
    pchunks = png_chunks(palette_png)
    short_plte = [(k, d[:9] if k == b"PLTE" else d) for k, d in pchunks]
    add("png-plte-3-colours.png", png_build(short_plte), "header", "either", "PLTE cut to 3 colours (indices up to 199)")
    long_trns = [(k, d + b"\0" * 300 if k == b"tRNS" else d) for k, d in pchunks]
    add("png-trns-longer-than-palette.png", png_build(long_trns), "header", "either", "tRNS 300 bytes longer than PLTE")
    plte = png_offset(palette_png, b"PLTE")
    add("png-plte-length-768.png", patch(palette_png, plte, struct.pack(">I", 768)), "header", "either",
        "PLTE length field 768 for 600 bytes")
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


def _jpeg_headers(add: Add, rng: random.Random, base: Base) -> None:
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
    _, ifd0, _ = tiff_ifd0(exif, tiff_at)
    add("jpeg-exif-count-65535.jpg", patch(exif, ifd0, b"\xff\xff"), "header", "either", "EXIF IFD0 entry count 65535")
    add("jpeg-exif-ifd-loop.jpg", tiff_loop(exif, tiff_at), "header", "either", "EXIF IFD0 next pointer back to itself")
    coms = b"".join(b"\xff\xfe\x00\x06" + struct.pack(">I", i) for i in range(20_000))
    add("jpeg-20000-comments.jpg", jpeg[:2] + coms + jpeg[2:len(jpeg) // 2], "header", "error",
        "20,000 COM segments before the frame, then half the image data")

    pjpeg = base["pjpeg"][0]
    add("pjpeg-sof-width-x4.pjpg.jpg", jpeg_dims(pjpeg, base["pjpeg"][1].width * 4, base["pjpeg"][1].height), "header",
        "either", "progressive SOF2 width x4")


def _other_headers(add: Add, rng: random.Random, base: Base, photos: list[Image.Image]) -> None:
    gif = base["gif"][0]
    add("gif-screen-65535x65535.gif", gif_screen(gif, 65535, 65535), "header", "error",
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
    add("tiff-dims-100000x100000.tif", tiff_dims(tiff, 100_000, 100_000), "header", "error",
        "ImageWidth and ImageLength 100000: over the pixel limit")
    add("tiff-ifd-offset-past-end.tif", patch(tiff, 4, struct.pack(order + "I", len(tiff) + 1000)), "header", "error",
        "IFD0 offset past the end of the file")
    add("tiff-ifd-count-65535.tif", patch(tiff, ifd, struct.pack(order + "H", 65535)), "header", "either",
        "IFD0 entry count 65535")
    add("tiff-ifd-loop.tif", tiff_loop(tiff), "header", "either", "IFD0 next pointer back to IFD0")
    add("tiff-stripbytes-huge.tif", tiff_set(tiff, 279, 0x7FFFFFFF), "header", "either", "StripByteCounts 0x7fffffff")
    add("tiff-bits-per-sample-3.tif", tiff_set(tiff, 258, 3), "header", "either", "BitsPerSample 3")

    bmp = base["bmp"][0]
    bw, bh = base["bmp"][1].size
    add("bmp-dims-50000x50000.bmp", bmp_dims(bmp, 50_000, 50_000), "header", "error", "50000 x 50000: over the pixel limit")
    add("bmp-top-down.bmp", bmp_top_down(bmp, bw, bh), "header", "ok", "negative height: a top-down BMP (valid)", (bw, bh))
    add("bmp-bitcount-13.bmp", patch(bmp, 28, struct.pack("<H", 13)), "header", "either", "biBitCount 13")
    add("bmp-offbits-huge.bmp", patch(bmp, 10, struct.pack("<I", 0x7FFFFFF0)), "header", "either", "bfOffBits 0x7ffffff0")
    pal_bmp = encode(photos[2].convert("P", palette=Image.Palette.ADAPTIVE), "BMP")
    add("bmp-colours-used-huge.bmp", patch(pal_bmp, 46, struct.pack("<I", 0xFFFFFF)), "header", "either",
        "biClrUsed 16,777,215 on an 8-bit BMP")

    webp = base["webp"][0]
    add("webp-vp8-16383x16383.webp", webp_dims(webp, 16383, 16383), "header", "error",
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


def bomb_entries(add: Add, img: Image.Image) -> None:
    """Small files that declare huge images; each must be refused from its header, fast and in little memory."""
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
    add("bomb-gif-screen-65535x1200.gif", gif_screen(gif, 65535, 1200), "bomb", "error",
        "a 32 px frame on a 65535 x 1200 logical screen (79 Mpx: under the pixel limit)")
    add("bomb-tiff-100000x800.tif", encode(Image.new("1", (100_000, 800)), "TIFF", compression="tiff_adobe_deflate"), "bomb",
        "error", "a complete deflated 100000 x 800 bilevel TIFF (80 Mpx: under the pixel limit)")
    add("bomb-bmp-100000x800.bmp", bmp_dims(encode(small, "BMP"), 100_000, 800), "bomb", "error",
        "a BMP header declaring 100000 x 800 (80 Mpx) over 3 kB of data")
    add("bomb-ppm-100000x800.ppm", b"P5\n100000 800\n255\n" + b"\0" * 4096, "bomb", "error",
        "a PGM header declaring 100000 x 800 over 4 kB of data")
    ico_bomb = ico_holding(declared_png(9000, 9000, 1))
    add("bomb-ico-png-9000x9000.ico", ico_bomb, "bomb", "error",
        f"an ICO ({len(ico_bomb) // 1000} kB) holding a complete 9000 x 9000 PNG, decoded by Image.open")
    add("bomb-ico-as-png.png", ico_bomb, "bomb", "error", "the same ICO bytes named .png (found by a folder scan)")
    add("bomb-ico-png-20000x20000.ico", ico_holding(declared_png(20_000, 20_000, 1)), "bomb", "error",
        "an ICO holding a complete 20000 x 20000 bilevel PNG")
