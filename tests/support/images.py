"""Image bytes for tests, made with Pillow on the fly."""

from __future__ import annotations

import io
import random
import struct
import zlib
from typing import Any

from PIL import Image


def image_bytes(
    fmt: str = "PNG",
    size: tuple[int, int] = (64, 48),
    color: str | tuple[int, ...] = "red",
    mode: str = "RGB",
    **save: Any,
) -> bytes:
    """An image of one colour in `fmt` (Pillow's format name); `save` goes to Image.save (quality, exif, ...)."""
    buf = io.BytesIO()
    Image.new(mode, size, color).save(buf, fmt, **save)
    return buf.getvalue()


def bomb_png(side: int = 20_000) -> bytes:
    """A tiny file that claims a huge canvas: a 1-bit image compresses to almost nothing."""
    buf = io.BytesIO()
    Image.new("1", (side, side), 0).save(buf, "PNG", optimize=True)
    return buf.getvalue()


def noisy_image_bytes(fmt: str = "PNG", size: tuple[int, int] = (300, 200), **save: Any) -> bytes:
    """Random pixels: compressed data that spans many bytes, so a cut or a flipped byte lands inside it."""
    buf = io.BytesIO()
    Image.frombytes("RGB", size, random.Random(str(size)).randbytes(size[0] * size[1] * 3)).save(buf, fmt, **save)
    return buf.getvalue()


def _first_idat(png: bytes) -> tuple[int, int]:
    """(offset of the data, its length) of a PNG's first IDAT chunk."""
    pos = 8
    while True:
        (length,) = struct.unpack(">I", png[pos : pos + 4])
        if png[pos + 4 : pos + 8] == b"IDAT":
            return pos + 8, length
        pos += 12 + length


def png_with_bad_crc(png: bytes) -> bytes:
    """One bit of the first IDAT flipped, its CRC left as it was: damage in transit, which a PNG's CRCs catch."""
    start, _ = _first_idat(png)
    return png[: start + 10] + bytes([png[start + 10] ^ 0x01]) + png[start + 11 :]


def png_with_bad_data(png: bytes) -> bytes:
    """The first IDAT's compressed data garbled and its CRC recomputed: every chunk checks out, but the pixels
    cannot be decompressed (only a full decode finds it)."""
    start, length = _first_idat(png)
    garbled = png[start : start + 2] + bytes(b ^ 0x55 for b in png[start + 2 : start + length])
    crc = struct.pack(">I", zlib.crc32(b"IDAT" + garbled))
    return png[:start] + garbled + crc + png[start + length + 4 :]


def largest_accepted_png(max_pixels: int, max_bytes: int) -> bytes:
    """An RGBA PNG of exactly `max_pixels` pixels (decoded: 4 bytes each) that is as close to `max_bytes` as a
    quick encode gets: random rows (incompressible) on top of a flat rest."""
    width = 8000
    height = max_pixels // width
    img = Image.new("RGBA", (width, height), (40, 90, 160, 255))
    noisy_rows = int(max_bytes * 0.9) // (width * 4)
    noise = random.Random(max_pixels).randbytes(width * noisy_rows * 4)
    img.paste(Image.frombytes("RGBA", (width, noisy_rows), noise), (0, 0))
    buf = io.BytesIO()
    img.save(buf, "PNG", compress_level=1)
    data = buf.getvalue()
    assert width * height == max_pixels and len(data) <= max_bytes, (width * height, len(data))
    return data
