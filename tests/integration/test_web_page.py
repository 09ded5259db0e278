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


@pytest.mark.task_delay(1.5)
def test_person_sees_their_recent_tasks_by_status_in_a_live_chart(platform, browser_page, tmp_path):
    http, _ = platform
    page = browser_page
    page.goto(str(http.base_url))
    page.fill("#key", "key-acme")
    for i, color in enumerate(("red", "blue")):
        photo = tmp_path / f"p{i}.png"
        photo.write_bytes(image_bytes("PNG", (64, 48), color))
        page.set_input_files("#file", str(photo))
        page.click("#submit")
        if i == 0:
            page.wait_for_selector("#status[data-status=succeeded]", timeout=30_000)
    bar = "#task-chart rect[data-status={}][data-count='{}']"
    # Live: at one moment the second task is processing beside the first one's success; then both succeeded.
    both = [bar.format("processing", 1), bar.format("succeeded", 1)]
    page.wait_for_function("sels => sels.every((s) => document.querySelector(s))", arg=both, timeout=30_000)
    page.wait_for_selector(bar.format("succeeded", 2), timeout=30_000)
    counts = page.eval_on_selector_all("#task-chart rect", "rs => rs.map(r => [r.dataset.status, +r.dataset.count])")
    assert dict(counts) == {"scheduled": 0, "queued": 0, "processing": 0, "succeeded": 2, "failed": 0, "dead": 0,
                            "cancelled": 0}  # fmt: skip
    labels = page.eval_on_selector_all("#task-chart text", "ts => ts.map(t => t.textContent)")
    assert labels[labels.index("succeeded") + 1] == "2"  # each bar says its status and count: no colour needed
    page.locator("#task-chart").screenshot(path=str(tmp_path / "chart.png"))


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


def test_the_page_shows_a_result_redirected_to_the_s3_store(api_settings, amqp_url, s3_env, browser_page, tmp_path):
    """Results on S3 with QW_RESULT_REDIRECT_SECONDS: the page's fetch follows the 302 to the presigned URL on the
    store's origin (allowed by the page's CSP; the store answers CORS) and shows the image."""
    from pydantic import SecretStr

    from tests.support.api import running_api
    from tests.support.workers import running_worker, worker_env

    settings = api_settings.model_copy(
        update={
            "storage_url": s3_env["QW_STORAGE_URL"],
            "s3_endpoint_url": s3_env["QW_S3_ENDPOINT_URL"],
            "s3_access_key_id": SecretStr(s3_env["QW_S3_ACCESS_KEY_ID"]),
            "s3_secret_access_key": SecretStr(s3_env["QW_S3_SECRET_ACCESS_KEY"]),
            "result_redirect_seconds": 60,
        }
    )
    photo = tmp_path / "holiday.png"
    photo.write_bytes(image_bytes("PNG", (640, 480), "green"))
    env = worker_env(amqp_url, settings.database_url, tmp_path / "unused", **s3_env)
    with running_api(settings) as (base, _), running_worker("image", env, tmp_path / "logs"):
        page = browser_page
        page.goto(base)
        page.fill("#key", "key-acme")
        page.set_input_files("#file", str(photo))
        page.fill("input[name=width]", "160")
        page.click("#submit")
        page.wait_for_selector("#status[data-status=succeeded]", timeout=30_000)
        img = page.wait_for_selector("#result-image", timeout=10_000)
        assert img.evaluate("i => [i.naturalWidth, i.naturalHeight]") == [160, 120]
        assert page.inner_text("#error") == ""
