import subprocess
import sys

import pytest
from qw_core.images import ImageRejected, identify, inspect, open_image

from tests.support.images import bomb_png, image_bytes, noisy_image_bytes, png_with_bad_crc, png_with_bad_data

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


@pytest.mark.parametrize("fmt", ["PNG", "JPEG", "WEBP", "GIF"])
@pytest.mark.parametrize("keep", [0.5, 0.95])
def test_a_file_cut_short_is_refused_without_a_full_decode(fmt, keep):
    """Given an upload cut off in the middle of its compressed data (a dropped connection, a partial copy)."""
    data = noisy_image_bytes(fmt)
    with pytest.raises(ImageRejected, match="damaged or truncated"):
        identify(data[: int(len(data) * keep)], OK, 10**6)


def test_a_png_damaged_in_transit_is_refused_by_its_crc():
    with pytest.raises(ImageRejected, match="damaged or truncated.*checksum"):
        identify(png_with_bad_crc(noisy_image_bytes("PNG")), OK, 10**6)


def test_a_png_without_its_end_chunk_is_refused():
    with pytest.raises(ImageRejected, match="damaged or truncated"):
        identify(noisy_image_bytes("PNG")[:-12], OK, 10**6)


def test_what_only_a_full_decode_finds_passes_the_check_and_fails_in_the_worker():
    """A PNG whose chunks all check out but whose compressed pixels are garbage: the API's check lets it through
    (it decodes nothing), the worker's full decode refuses it with the reason."""
    bad = png_with_bad_data(noisy_image_bytes("PNG"))
    assert identify(bad, OK, 10**6).format == "PNG"
    with pytest.raises(ImageRejected, match="damaged or truncated"):
        open_image(bad, OK, 10**6)


@pytest.mark.parametrize(
    ("side", "why"),
    [(7_000, "7000x7000 pixels; the limit is 40000000 pixels"), (14_000, "too large to decode safely")],
)
def test_a_decompression_bomb_is_refused_from_its_header(side, why):
    """A few KB that claim 49 or 196 megapixels: over our limit, or over Pillow's own (which it raises itself)."""
    with pytest.raises(ImageRejected, match=why):
        identify(bomb_png(side), OK, 40_000_000)


@pytest.mark.parametrize("fmt", ["GIF", "TIFF", "BMP"])
def test_a_format_outside_the_list_is_refused_whatever_it_claims_to_be(fmt):
    """The content decides, not the name: a GIF where only PNG and JPEG are accepted, a TIFF, a BMP."""
    with pytest.raises(ImageRejected, match=r"not an image in an accepted format \(PNG, JPEG\)"):
        identify(image_bytes(fmt), ["PNG", "JPEG"], 10**6)


def test_what_a_check_allocates_comes_from_the_header():
    w, h = 800, 600
    png = image_bytes("PNG", (w, h), mode="RGBA")
    info = inspect(png, OK, 10**6)
    assert (info.format, info.width, info.height, info.decoded_bytes) == ("PNG", w, h, w * h * 4)
    assert info.check_bytes == len(png)  # chunk by chunk: never more than the file
    assert inspect(image_bytes("JPEG", (w, h)), OK, 10**6).check_bytes == w * h * 3 // 64  # 1/8 of each side
    # Progressive: libjpeg holds every coefficient (2 bytes a sample; 4:2:0 has 1.5 samples a pixel) at any scale.
    progressive = inspect(image_bytes("JPEG", (w, h), progressive=True), OK, 10**6)
    assert progressive.check_bytes == w * h * 3 // 64 + 2 * (w * h * 3 // 2)
    assert inspect(image_bytes("WEBP", (w, h)), OK, 10**6).check_bytes == 0  # opening it was the check
    assert inspect(image_bytes("GIF", (w, h)), OK, 10**6).check_bytes == w * h  # the first frame, 1 byte a pixel


CHECK_PEAK = """
import sys
from qw_core.images import identify
data = open(sys.argv[1], "rb").read()
def peak():  # this process's own high-water mark (ru_maxrss starts at the parent's RSS after a fork)
    return int(next(ln for ln in open("/proc/self/status") if ln.startswith("VmHWM:")).split()[1]) * 1024
before = peak()
identify(data, ["PNG", "JPEG"], 40_000_000)
print(peak() - before)
"""


@pytest.mark.parametrize("fmt", ["PNG", "JPEG"])
def test_checking_the_largest_accepted_image_never_decodes_it(fmt, tmp_path):
    """Given a 40-megapixel image (160 MB as RGBA, 120 MB as RGB when decoded), the check's peak memory stays a
    small fraction of that: measured in a fresh process (Pillow allocates outside Python's allocator)."""
    path = tmp_path / "big"
    path.write_bytes(image_bytes(fmt, (8000, 5000), mode="RGBA" if fmt == "PNG" else "RGB"))
    out = subprocess.run([sys.executable, "-c", CHECK_PEAK, str(path)], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert int(out.stdout) < 24 * 1024 * 1024  # a full decode: 120-160 MB


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


@pytest.mark.parametrize("fmt", ["PNG", "JPEG", "JPEG-progressive", "WEBP", "GIF"])
def test_a_spooled_file_is_identified_as_its_bytes_are(fmt, tmp_path):
    """The API checks an upload where the form parser spooled it (a file on /tmp past 1 MiB), never read whole."""
    import tempfile

    data = image_bytes(fmt.split("-")[0], (300, 200), progressive=fmt.endswith("progressive"))
    with tempfile.SpooledTemporaryFile(max_size=64) as f:  # rolled over to disk: a real file, as a large upload
        f.write(data)
        assert identify(f, OK, 10**6) == identify(data, OK, 10**6)
    with tempfile.SpooledTemporaryFile(max_size=64) as f:
        f.write(data[: len(data) // 2])
        with pytest.raises(ImageRejected):
            identify(f, OK, 10**6)


def test_a_marker_split_across_two_chunks_of_a_file_is_found():
    import io

    from qw_core.images import _find

    for at in range(0, 12):
        blob = b"\x00" * at + b"\xff\xda" + b"\x00" * 7
        assert _find(io.BytesIO(blob), b"\xff\xda", 0, chunk=4) and _find(blob, b"\xff\xda", 0)
    assert not _find(io.BytesIO(b"\xff" + b"\x00" * 9 + b"\xda"), b"\xff\xda", 0, chunk=4)
