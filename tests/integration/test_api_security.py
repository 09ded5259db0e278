"""Bad input gets a clear 4xx and changes nothing: no file stored, no row written, nothing queued."""

from __future__ import annotations

import socket

import pytest
from qw_core.topology import queue_name

from tests.support.images import bomb_png, image_bytes, noisy_image_bytes, png_with_bad_crc

pytestmark = pytest.mark.integration
EMAIL = {"to": "ann@example.com", "subject": "Hello", "text": "Hi"}


@pytest.fixture
def nothing_changed(api, peek):
    """After the test body: no upload on disk, no task row, no message in any work queue."""
    yield
    services = api[1].state.services
    assert [p for p in services.storage.root.rglob("*") if p.is_file()] == []
    assert services.store.counts() == {}
    assert peek.depth(queue_name("image")) == 0 and peek.depth(queue_name("email")) == 0


BAD_FILES = {
    "empty": b"",
    "html": b"<!doctype html><html><body>not an image</body></html>",
    "svg": b'<svg xmlns="http://www.w3.org/2000/svg" width="10" height="10"><script>alert(1)</script></svg>',
    "eps": b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 10 10\nshowpage\n",
    "pdf": b"%PDF-1.4\n1 0 obj<</Type/Catalog>>endobj\ntrailer<</Root 1 0 R>>\n%%EOF",
    "psd": b"8BPS\x00\x01" + b"\x00" * 40,
    "tiff": image_bytes("TIFF"),
    "bmp": image_bytes("BMP"),
    "truncated-jpeg": image_bytes("JPEG", (256, 256))[:300],
    "corrupt-png": image_bytes("PNG")[:40] + b"\x00" * 60,
}


@pytest.mark.parametrize("name", sorted(BAD_FILES))
def test_non_images_and_refused_formats_are_422(http, nothing_changed, name):
    r = http.post("/v1/images", files={"file": (f"{name}.png", BAD_FILES[name], "image/png")})
    assert r.status_code == 422, r.text
    assert "refused" in r.json()["detail"]


DAMAGED_FILES = {
    **{f"{fmt.lower()}-cut-short": noisy_image_bytes(fmt)[:-100] for fmt in ("PNG", "JPEG", "WEBP", "GIF")},
    "png-bad-crc": png_with_bad_crc(noisy_image_bytes("PNG")),
    "png-without-its-end": noisy_image_bytes("PNG")[:-12],
}


@pytest.mark.parametrize("name", sorted(DAMAGED_FILES))
def test_damaged_images_are_422_and_say_so(http, nothing_changed, name):
    """Given an image of an accepted format cut short or damaged in transit: the API's bounded check (no full
    decode) finds it, and the answer says what is wrong."""
    r = http.post("/v1/images", files={"file": (f"{name}.jpg", DAMAGED_FILES[name], "image/jpeg")})
    assert r.status_code == 422, r.text
    assert "refused: the image could not be decoded, it is damaged or truncated" in r.json()["detail"]


@pytest.mark.parametrize(("side", "why"), [(7_000, "7000x7000 pixels; the limit is"), (20_000, "too large to decode")])
def test_decompression_bomb_is_refused(http, nothing_changed, side, why):
    data = bomb_png(side)  # 49 (over our limit) or 400 (over Pillow's own) megapixels in a few KB
    assert len(data) < 200_000
    r = http.post("/v1/images", files={"file": ("bomb.png", data, "image/png")})
    assert r.status_code == 422 and why in r.json()["detail"], r.text


@pytest.mark.parametrize(
    "filename",
    ["../../../etc/cron.d/x.png", "..\\..\\win.ini", "/abs/path.png", "a\x00b.png", "x.php.png", "A" * 4000 + ".png"],
)
def test_hostile_names_never_reach_the_disk(http, api, filename):
    r = http.post("/v1/images", files={"file": (filename, image_bytes(), "image/png")})
    assert r.status_code == 202, r.text
    storage = api[1].state.services.storage
    files = [p for p in storage.root.rglob("*") if p.is_file()]
    assert len(files) == 1 and files[0].is_relative_to(storage.root)
    assert files[0].name.endswith(".png") and len(files[0].stem) == 32  # a uuid, nothing of the client's


def test_oversize_body_declared_in_content_length_is_refused_before_reading_it(api, nothing_changed):
    """Send only the headers of a 100 MB upload: the answer must come without the body being sent."""
    host, port = api[0].removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=10) as s:
        s.sendall(
            b"POST /v1/images HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer key-acme\r\n"
            b"Content-Type: multipart/form-data; boundary=b\r\nContent-Length: 104857600\r\n\r\n"
        )
        reply = s.recv(4096)
    assert reply.startswith(b"HTTP/1.1 413"), reply[:200]


def test_oversize_streamed_body_is_refused(http, nothing_changed):
    def chunks():
        yield b'--b\r\nContent-Disposition: form-data; name="file"; filename="a.png"\r\n\r\n'
        for _ in range(40):
            yield b"\x00" * 100_000  # 4 MB against a 2 MB limit, without a Content-Length
        yield b"\r\n--b--\r\n"

    r = http.post("/v1/images", content=chunks(), headers={"Content-Type": "multipart/form-data; boundary=b"})
    assert r.status_code == 413


def test_upload_without_multipart_is_415(http, nothing_changed):
    r = http.post("/v1/images", content=image_bytes(), headers={"Content-Type": "image/png"})
    assert r.status_code == 415 and "multipart/form-data" in r.json()["detail"]


@pytest.mark.parametrize(
    "fields",
    [{"width": "0"}, {"width": "abc"}, {"format": "BMP"}, {"quality": "101"}, {"watermark": "a\x01b"}, {"bogus": "1"}],
)
def test_bad_image_options_are_422(http, nothing_changed, fields):
    r = http.post("/v1/images", files={"file": ("a.png", image_bytes(), "image/png")}, data=fields)
    assert r.status_code == 422, r.text


@pytest.mark.parametrize(
    "change",
    [
        {"subject": "Hi\r\nBcc: victim@example.com"},
        {"subject": "Hi\nBcc: victim@example.com"},
        {"subject": "Hi\rBcc: victim@example.com"},
        {"to": "ann@example.com\r\nBcc: victim@example.com"},
        {"to": "ann@example.com, bob@example.com"},
        {"to": ["ann@example.com", "bob@example.com"]},
        {"to": "not-an-address"},
        {"reply_to": "x@example.com\nBcc: v@example.com"},
        {"text": None},
        {"cc": "sneaky@example.com"},
    ],
)
def test_bad_emails_are_422_and_queue_nothing(http, nothing_changed, change):
    r = http.post("/v1/emails", json={**EMAIL, **change})
    assert r.status_code == 422, r.text
    assert r.json()["detail"]


def test_malformed_json_is_422(http, nothing_changed):
    r = http.post("/v1/emails", content=b"{not json", headers={"Content-Type": "application/json"})
    assert r.status_code == 422


@pytest.mark.parametrize("literal", ["NaN", "Infinity", "-Infinity"])
def test_non_finite_numbers_are_422_not_500(http, nothing_changed, literal):
    """Python's JSON parser takes NaN and Infinity; the 422 that echoes them back must still be valid JSON."""
    body = f'{{"to": {literal}, "subject": "Hello", "text": "Hi"}}'.encode()
    r = http.post("/v1/emails", content=body, headers={"Content-Type": "application/json"})
    assert r.status_code == 422, r.text
    detail = r.json()["detail"]
    assert detail[0]["loc"][-1] == "to" and detail[0]["input"] == literal
