"""Identify an image by decoding it, never by the client's name or content type (shared by API and workers)."""

from __future__ import annotations

import io
import math
import warnings
from dataclasses import dataclass

from PIL import Image, UnidentifiedImageError


class ImageRejected(ValueError):
    """The bytes are not an acceptable image; the message says why in words a person can act on."""


@dataclass(frozen=True)
class ImageInfo:
    format: str
    width: int
    height: int


def draft_size(size: tuple[int, int], box: tuple[int, int], gap: float = 2.0) -> tuple[int, int]:
    """The smallest decode size that keeps `gap` times the final fitted size on each side, in whichever
    orientation the image ends up (EXIF may rotate it by 90 degrees): what thumbnail()'s reducing_gap does."""
    w, h = size
    bw, bh = box
    scale = min(1.0, max(min(bw / w, bh / h), min(bw / h, bh / w)))
    return max(1, math.ceil(gap * scale * w)), max(1, math.ceil(gap * scale * h))


def open_image(
    data: bytes,
    allowed_formats: list[str] | tuple[str, ...],
    max_pixels: int,
    shrink_to: tuple[int, int] | None = None,
) -> Image.Image:
    """Open `data` with only the allowed decoders, refusing decompression bombs. Raises ImageRejected.

    `shrink_to`: the caller will shrink the image to fit this box, so a JPEG may be decoded at 1/2, 1/4 or
    1/8 scale (DCT scaling, as Pillow's own thumbnail() does), keeping at least twice the box on each side
    (either orientation: EXIF rotation may swap them). The whole file is still decoded, so truncated or
    corrupt data is still refused.
    """
    if not data:
        raise ImageRejected("the file is empty")
    allowed = [f.upper() for f in allowed_formats]
    # Image.MAX_IMAGE_PIXELS is process-wide; this check is per call so the API and workers can differ.
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        try:
            img = Image.open(io.BytesIO(data), formats=allowed)
            w, h = img.size
            if w * h > max_pixels:
                raise ImageRejected(f"the image is {w}x{h} pixels; the limit is {max_pixels} pixels")
            if shrink_to is not None and img.format == "JPEG":
                img.draft(None, draft_size((w, h), shrink_to))
            img.load()  # decode fully: catches truncated and corrupt files, and lazy bombs
        except ImageRejected:
            raise
        except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
            raise ImageRejected(f"the image is too large to decode safely: {exc}") from exc
        except UnidentifiedImageError as exc:
            raise ImageRejected(f"not an image in an accepted format ({', '.join(allowed)})") from exc
        except Exception as exc:  # Pillow raises many types for corrupt data (OSError, SyntaxError, ...)
            raise ImageRejected(f"the image could not be decoded: {type(exc).__name__}") from exc
    if img.format not in allowed:
        raise ImageRejected(f"format {img.format} is not accepted ({', '.join(allowed)})")
    return img


def identify(data: bytes, allowed_formats: list[str] | tuple[str, ...], max_pixels: int) -> ImageInfo:
    img = open_image(data, allowed_formats, max_pixels)
    with img:
        return ImageInfo(str(img.format), img.width, img.height)
