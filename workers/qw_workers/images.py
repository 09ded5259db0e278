"""The image task: a pure transform (bytes + options -> bytes) and a thin handler doing the I/O at the edges."""

from __future__ import annotations

import io
import tempfile

from PIL import Image, ImageDraw, ImageFont, ImageOps
from qw_core.images import ImageRejected, Source, open_image
from qw_core.messages import IMAGE_FORMATS, ImageOptions, ImageTask
from qw_core.storage import StorageError

from qw_workers.context import TaskContext
from qw_workers.errors import PermanentError

THUMBNAIL_SIDE = 256


def target_box(options: ImageOptions, max_side: int) -> tuple[int, int]:
    """The box the output must fit in: the requested bounds (a thumbnail defaults to 256), capped by max_side.

    Sizes are upper bounds: an image already inside the box is left at its size (never upscaled).
    """
    side = THUMBNAIL_SIDE if options.thumbnail else max_side
    return min(options.width or side, max_side), min(options.height or side, max_side)


def _fit(img: Image.Image, box: tuple[int, int]) -> Image.Image:
    if img.width <= box[0] and img.height <= box[1]:
        return img
    img.thumbnail(box, Image.Resampling.LANCZOS)  # in place: keeps the aspect ratio, only ever shrinks
    return img


def _watermark(img: Image.Image, text: str) -> Image.Image:
    base = img.convert("RGBA")
    overlay = Image.new("RGBA", base.size, (0, 0, 0, 0))
    draw = ImageDraw.Draw(overlay)
    size = max(10, min(base.width, base.height) // 12)
    font = ImageFont.load_default(size=size)
    left, top, right, bottom = draw.textbbox((0, 0), text, font=font, stroke_width=1)
    margin = max(2, size // 3)
    x = max(0, base.width - (right - left) - margin)
    y = max(0, base.height - (bottom - top) - margin)
    draw.text(
        (x - left, y - top), text, font=font, fill=(255, 255, 255, 200), stroke_width=1, stroke_fill=(0, 0, 0, 200)
    )
    return Image.alpha_composite(base, overlay)


def _for_format(img: Image.Image, fmt: str) -> Image.Image:
    has_alpha = img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info)
    if fmt == "JPEG":
        if has_alpha:  # JPEG has no alpha: flatten onto white rather than onto black
            rgba = img.convert("RGBA")
            flat = Image.new("RGB", rgba.size, (255, 255, 255))
            flat.paste(rgba, mask=rgba.getchannel("A"))
            return flat
        return img if img.mode in ("RGB", "L") else img.convert("RGB")
    if fmt == "WEBP":
        return img if img.mode in ("RGB", "RGBA") else img.convert("RGBA" if has_alpha else "RGB")
    if fmt == "PNG":
        return img if img.mode in ("RGB", "RGBA", "L", "LA", "P", "1", "I", "I;16") else img.convert("RGB")
    return img  # GIF: Pillow quantises to a palette itself


def transform_image(
    data: Source, options: ImageOptions, source_format: str, max_pixels: int, max_side: int
) -> tuple[bytes, str]:
    """Decode safely, apply EXIF orientation, fit, watermark, encode without metadata. Returns (bytes, format).

    Raises ImageRejected for anything that is not a safe, decodable image in an accepted format.
    Animated images keep their first frame only.
    """
    box = target_box(options, max_side)
    img = open_image(data, IMAGE_FORMATS, max_pixels, shrink_to=box)
    fmt = options.format or img.format or source_format
    ImageOps.exif_transpose(img, in_place=True)  # the orientation tag becomes pixels (no copy when upright)
    img = _fit(img, box)
    if options.watermark:
        img = _watermark(img, options.watermark)
    img = _for_format(img, fmt)
    # Strip every piece of metadata (EXIF with GPS, XMP, comments, ICC): save only pixels (and palette
    # transparency, which is pixel data in disguise).
    img.info = {k: v for k, v in img.info.items() if k == "transparency" and img.mode == "P"}
    out = io.BytesIO()
    params: dict[str, object] = {}
    if fmt in ("JPEG", "WEBP"):
        params["quality"] = options.quality
    img.save(out, fmt, **params)
    return out.getvalue(), fmt


# The source is streamed from the store into a spooled file (memory up to this, /tmp past it) and decoded from there.
SPOOL_BYTES = 1024 * 1024


def process(payload: ImageTask, ctx: TaskContext) -> str:
    """Resize, convert and watermark an uploaded image (POST /v1/images); the result's storage key is the task's
    result (GET /v1/tasks/{id}/result serves the file). The store being unreachable (StorageUnavailable) is not
    caught: the runtime retries the task with backoff through its delay queues."""
    s = ctx.settings
    with tempfile.SpooledTemporaryFile(SPOOL_BYTES) as src:
        try:
            ctx.storage.read_into(payload.source_key, src)  # type: ignore[arg-type]
        except (FileNotFoundError, IsADirectoryError, StorageError) as exc:
            raise PermanentError(f"the source image is missing: {payload.source_key}") from exc
        try:
            out, fmt = transform_image(
                src,  # type: ignore[arg-type]
                payload.options,
                payload.source_format,
                s.max_image_pixels,
                s.max_output_side,
            )
        except ImageRejected as exc:
            raise PermanentError(str(exc)) from exc
    key = ctx.storage.task_key("results", ctx.tenant, ctx.task_id, fmt)
    ctx.storage.write(key, out)
    return key
