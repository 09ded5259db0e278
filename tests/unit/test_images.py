import pytest
from qw_core.images import ImageRejected, identify

from tests.support.images import image_bytes

OK = ["JPEG", "PNG", "WEBP", "GIF"]


def test_identifies_by_content_not_name():
    assert identify(image_bytes("JPEG", (8, 8)), OK, 10_000).format == "JPEG"


@pytest.mark.parametrize(
    ("data", "why"),
    [
        (b"", "empty"),
        (b"<html><body>hi</body></html>", "not an image"),
        (b'<svg xmlns="http://www.w3.org/2000/svg"/>', "not an image"),
        (b"%!PS-Adobe-3.0 EPSF-3.0\n", "not an image"),
        (b"%PDF-1.4\n", "not an image"),
    ],
)
def test_non_images_are_refused(data, why):
    with pytest.raises(ImageRejected, match=why):
        identify(data, OK, 10_000)


def test_truncated_image_is_refused():
    with pytest.raises(ImageRejected, match="could not be decoded"):
        identify(image_bytes("JPEG", (64, 64))[:200], OK, 100_000)


def test_format_outside_the_allowed_list_is_refused():
    with pytest.raises(ImageRejected):
        identify(image_bytes("BMP", (8, 8)), OK, 10_000)


def test_too_many_pixels_is_refused_before_decoding():
    with pytest.raises(ImageRejected, match="limit"):
        identify(image_bytes("PNG", (200, 200)), OK, 10_000)


def test_draft_size_keeps_twice_the_fitted_size_in_either_orientation() -> None:
    from qw_core.images import draft_size

    assert draft_size((1024, 768), (256, 256)) == (512, 384)  # what thumbnail()'s reducing_gap=2 decodes
    # a wide box: upright the image fits at 0.2, rotated at 0.1 -> keep enough for the larger one
    assert draft_size((1000, 500), (320, 100)) == (400, 200)
    assert draft_size((100, 80), (256, 256)) == (200, 160)  # never asks for less than the image when not shrinking
