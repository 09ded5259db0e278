"""The pure image transform: bounds, aspect ratio, formats, EXIF orientation, metadata stripping, bombs."""

from __future__ import annotations

import functools
import io

import pytest
from PIL import Image
from qw_core.images import ImageRejected
from qw_core.messages import ImageOptions
from qw_workers.images import target_box, transform_image

from tests.support.images import bomb_png, image_bytes

MAX_PIXELS, MAX_SIDE = 4_000_000, 1000


make = functools.partial(image_bytes, size=(400, 200))  # a 2:1 source the bounds below are computed from


def run(data: bytes, src="PNG", **options) -> Image.Image:
    out, fmt = transform_image(data, ImageOptions(**options), src, MAX_PIXELS, MAX_SIDE)
    img = Image.open(io.BytesIO(out))
    assert img.format == fmt
    return img


@pytest.mark.parametrize(
    ("options", "box"),
    [
        ({}, (1000, 1000)),
        ({"width": 100}, (100, 1000)),
        ({"height": 50}, (1000, 50)),
        ({"width": 5000, "height": 5000}, (1000, 1000)),
        ({"thumbnail": True}, (256, 256)),
        ({"thumbnail": True, "width": 64}, (64, 256)),
    ],
)
def test_target_box(options, box):
    assert target_box(ImageOptions(**options), MAX_SIDE) == box


@pytest.mark.parametrize(
    ("options", "size"),
    [
        ({"width": 100}, (100, 50)),
        ({"height": 100}, (200, 100)),
        ({"thumbnail": True}, (256, 128)),
        ({"width": 2000}, (400, 200)),  # never upscaled
        ({}, (400, 200)),
    ],
)
def test_resize_keeps_aspect_and_never_upscales(options, size):
    assert run(make(), **options).size == size


def test_output_capped_by_max_side():
    assert run(make(size=(2400, 1200))).size == (1000, 500)


@pytest.mark.parametrize("fmt", ["JPEG", "PNG", "WEBP", "GIF"])
def test_rgba_converts_to_every_format(fmt):
    img = run(make("PNG", mode="RGBA", color=(0, 0, 255, 0)), format=fmt)
    if fmt == "JPEG":
        assert img.mode == "RGB" and img.getpixel((0, 0)) == pytest.approx((255, 255, 255), abs=3)  # alpha on white


def test_exif_orientation_applied_and_metadata_stripped():
    src = Image.new("RGB", (200, 100), "blue")
    src.paste((255, 0, 0), (0, 0, 100, 100))
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90° clockwise when displayed
    exif.get_ifd(0x8825)[2] = (1.0, 2.0, 3.0)  # GPS
    buf = io.BytesIO()
    src.save(buf, "JPEG", exif=exif, quality=95)
    for fmt in ("JPEG", "PNG", "WEBP"):
        img = run(buf.getvalue(), "JPEG", format=fmt)
        assert img.size == (100, 200)
        assert img.convert("RGB").getpixel((50, 10))[0] > 200  # left (red) is now on top
        assert not img.getexif() and "exif" not in img.info and "xmp" not in img.info


def test_watermark_changes_pixels_only_when_asked():
    data = make(size=(300, 200), color="gray")
    plain, marked = run(data), run(data, watermark="© QW")
    assert plain.size == marked.size
    assert plain.convert("RGB").tobytes() != marked.convert("RGB").tobytes()
    assert run(data).tobytes() == plain.tobytes()


@pytest.mark.parametrize("data", [b"", b"not an image", make()[:60], make("BMP")])
def test_refused_inputs_raise_image_rejected(data):
    with pytest.raises(ImageRejected):
        run(data)


def test_decompression_bomb_refused():
    with pytest.raises(ImageRejected, match="limit|too large"):
        run(bomb_png(5000))
