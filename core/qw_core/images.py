"""Identify an image by its content, never by the client's name or content type (shared by API and workers).

Two depths. The workers decode fully (`open_image`). The API only needs to know that an upload is a real image of
an accepted format, so it reads the header and runs a bounded check per format (`inspect` then `check`), which
allocates a small fraction of a full decode (figures in bench/bench_imgcheck.py):
- PNG: every chunk's CRC and the closing IEND, one chunk at a time, no pixels (Pillow's `verify()`);
- JPEG: the whole entropy-coded stream decoded at 1/8 scale (libjpeg's DCT scaling): truncation and corrupt data
  are found, the pixels take 1/64; a multi-scan (progressive) JPEG also needs libjpeg's coefficient buffer,
  2 bytes a sample at any scale, so that is counted;
- WEBP: opening it already parses the whole RIFF container and the bitstream headers (libwebp's demuxer refuses
  a truncated file); Pillow has no scaled WebP decode and a full one takes ~4x the canvas, so nothing more;
- GIF: the first frame decoded (1 byte a pixel): GIF has no checksums and Pillow no scaled decode.
What the check lets through (a CRC-valid PNG whose compressed data is garbage, a damaged WebP bitstream) is
refused by the worker's full decode: the task ends `failed` with the reason.
"""

from __future__ import annotations

import io
import math
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import BinaryIO

from PIL import Image, UnidentifiedImageError

# An image's bytes, or a seekable file holding them (an upload spooled to disk, a download): read where needed,
# never all at once.
Source = bytes | BinaryIO

JPEG_CHECK_SCALE = 8  # libjpeg decodes at 1/1, 1/2, 1/4 or 1/8 of each side


class ImageRejected(ValueError):
    """The bytes are not an acceptable image; the message says why in words a person can act on."""


@dataclass(frozen=True)
class ImageInfo:
    format: str
    width: int
    height: int
    decoded_bytes: int = 0  # what a full decode allocates (width x height x bands)
    check_bytes: int = 0  # what `check` allocates beyond the bytes themselves


def draft_size(size: tuple[int, int], box: tuple[int, int], gap: float = 2.0) -> tuple[int, int]:
    """The smallest decode size that keeps `gap` times the final fitted size on each side, in whichever
    orientation the image ends up (EXIF may rotate it by 90 degrees): what thumbnail()'s reducing_gap does."""
    w, h = size
    bw, bh = box
    scale = min(1.0, max(min(bw / w, bh / h), min(bw / h, bh / w)))
    return max(1, math.ceil(gap * scale * w)), max(1, math.ceil(gap * scale * h))


def open_image(
    data: Source,
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
    with _refusals(allowed_formats):
        img = _open(data, allowed_formats, max_pixels)
        if shrink_to is not None and img.format == "JPEG":
            img.draft(None, draft_size(img.size, shrink_to))
        img.load()  # decode fully: catches truncated and corrupt files, and lazy bombs
    return img


def inspect(data: Source, allowed_formats: list[str] | tuple[str, ...], max_pixels: int) -> ImageInfo:
    """Format, size and what a check and a full decode would allocate, from the header alone. Raises
    ImageRejected for what is not an image of an allowed format or has too many pixels."""
    with _refusals(allowed_formats), _open(data, allowed_formats, max_pixels) as img:
        w, h = img.size
        decoded = w * h * len(img.getbands())
        return ImageInfo(str(img.format), w, h, decoded, _check_bytes(img, data, decoded))


def check(data: Source, info: ImageInfo, max_pixels: int) -> None:
    """The bounded check of `inspect`ed bytes (the module's docstring says what each format gets). Raises
    ImageRejected for a truncated or corrupt file."""
    if info.format == "WEBP":
        return  # inspect opened it: libwebp's demuxer has checked the container and the bitstream headers
    with _refusals([info.format]), _open(data, [info.format], max_pixels) as img:
        if img.format == "PNG":
            img.verify()
        elif img.format == "JPEG":
            img.draft(None, (max(1, img.width // JPEG_CHECK_SCALE), max(1, img.height // JPEG_CHECK_SCALE)))
            img.load()
        elif img.format == "GIF":
            img.load()


def identify(data: Source, allowed_formats: list[str] | tuple[str, ...], max_pixels: int) -> ImageInfo:
    """`inspect` then `check`: what the API refuses, without a full decode."""
    info = inspect(data, allowed_formats, max_pixels)
    check(data, info, max_pixels)
    return info


def _check_bytes(img: Image.Image, data: Source, decoded: int) -> int:
    if img.format == "PNG":
        return _size(data)  # one chunk at a time: at most the file
    if img.format == "JPEG":
        scaled = decoded // JPEG_CHECK_SCALE**2
        if not _multi_scan_jpeg(img, data):
            return scaled
        # libjpeg keeps every DCT coefficient of a multi-scan image: 2 bytes a sample, per component's sampling.
        layers = getattr(img, "layer", [])
        hmax = max((h for _, h, _, _ in layers), default=1)
        vmax = max((v for _, _, v, _ in layers), default=1)
        samples = sum(math.ceil(img.width * h / hmax) * math.ceil(img.height * v / vmax) for _, h, v, _ in layers)
        return scaled + 2 * (samples or decoded)
    if img.format == "WEBP":
        return 0  # checked when opened (inspect); `check` has nothing left to do
    return decoded  # GIF: the first frame, decoded fully


def _multi_scan_jpeg(img: Image.Image, data: Source) -> bool:
    """Progressive, or a sequential image sent in several scans: a second start-of-scan marker after the first
    (Pillow stops reading at the first one; entropy-coded data never holds FF DA, byte stuffing prevents it)."""
    if img.info.get("progressive"):
        return True
    fp = getattr(img, "fp", None)  # an ImageFile's, positioned just after the first start-of-scan marker
    return fp is not None and _find(data, b"\xff\xda", fp.tell())


def _size(data: Source) -> int:
    if isinstance(data, bytes):
        return len(data)
    return data.seek(0, io.SEEK_END)


def _find(data: Source, needle: bytes, start: int, chunk: int = 1024 * 1024) -> bool:
    """Whether `needle` occurs at or after `start`; a file is scanned a chunk at a time (overlapping by the
    needle's length, so one split across two chunks is found)."""
    if isinstance(data, bytes):
        return data.find(needle, start) != -1
    pos = start
    while True:
        data.seek(pos)
        block = data.read(chunk)
        if block.find(needle) != -1:
            return True
        if len(block) < chunk:
            return False
        pos += chunk - len(needle) + 1


def _open(data: Source, allowed_formats: list[str] | tuple[str, ...], max_pixels: int) -> Image.Image:
    """Image.open with only the allowed decoders (header only), refusing too many pixels."""
    if not _size(data):
        raise ImageRejected("the file is empty")
    allowed = [f.upper() for f in allowed_formats]
    if isinstance(data, bytes):
        data = io.BytesIO(data)
    data.seek(0)
    img = Image.open(data, formats=allowed)
    w, h = img.size
    if w * h > max_pixels:
        img.close()
        raise ImageRejected(f"the image is {w}x{h} pixels; the limit is {max_pixels} pixels")
    if img.format not in allowed:
        img.close()
        raise ImageRejected(f"format {img.format} is not accepted ({', '.join(allowed)})")
    return img


@contextmanager
def _refusals(allowed_formats: list[str] | tuple[str, ...]) -> Iterator[None]:
    """Pillow's many errors for bad data as ImageRejected with a message a person can act on."""
    # Image.MAX_IMAGE_PIXELS is process-wide; _open checks per call so the API and workers can differ.
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        try:
            yield
        except ImageRejected:
            raise
        except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
            raise ImageRejected(f"the image is too large to decode safely: {exc}") from exc
        except UnidentifiedImageError as exc:
            allowed = ", ".join(f.upper() for f in allowed_formats)
            raise ImageRejected(f"not an image in an accepted format ({allowed})") from exc
        except Exception as exc:  # Pillow raises many types for corrupt data (OSError, SyntaxError, ...)
            raise ImageRejected(f"the image could not be decoded, it is damaged or truncated: {exc}") from exc
