"""Image bytes for tests, made with Pillow on the fly."""

from __future__ import annotations

import io
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
