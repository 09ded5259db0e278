"""The upload page in a real browser (Debian's Chromium driven by Playwright): upload, live status, result."""

from __future__ import annotations

import os
import shutil

import pytest

from tests.support.images import image_bytes

pytestmark = pytest.mark.integration
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync"]  # fmt: skip


@pytest.fixture
def browser_page(tmp_path):
    if not os.path.exists(CHROMIUM):
        if os.environ.get("CI"):
            raise RuntimeError("chromium is not installed (scripts/install-system-deps.sh installs it)")
        pytest.skip("chromium not installed locally; CI installs it")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=FLAGS, headless=True)
        page = browser.new_page()
        yield page
        browser.close()


@pytest.mark.task_delay(1.5)  # slow enough that "processing" is on screen before "succeeded"
def test_person_uploads_an_image_and_watches_it_finish(platform, browser_page, tmp_path):
    http, _ = platform
    photo = tmp_path / "holiday.jpg"
    photo.write_bytes(image_bytes("JPEG", (640, 480), "green"))
    page = browser_page
    page.goto(str(http.base_url))
    page.fill("#key", "key-acme")
    page.set_input_files("#file", str(photo))
    page.fill("input[name=width]", "160")
    page.select_option("select[name=format]", "PNG")
    page.click("#submit")
    page.wait_for_selector("#status[data-status=succeeded]", timeout=30_000)
    log = page.inner_text("#log")
    assert "processing" in log and "succeeded" in log  # the status changed live, not only at the end
    img = page.wait_for_selector("#result-image", timeout=10_000)
    size = img.evaluate("i => [i.naturalWidth, i.naturalHeight]")
    assert size == [160, 120]
    page.screenshot(path=str(tmp_path / "page.png"))


def test_wrong_key_is_shown_to_the_person(platform, browser_page, tmp_path):
    http, _ = platform
    photo = tmp_path / "a.png"
    photo.write_bytes(image_bytes())
    page = browser_page
    page.goto(str(http.base_url))
    page.fill("#key", "not-a-key")
    page.set_input_files("#file", str(photo))
    page.click("#submit")
    page.wait_for_selector("#status:text('refused')", timeout=10_000)
    assert "HTTP 401" in page.inner_text("#error")
