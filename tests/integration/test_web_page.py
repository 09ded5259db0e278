"""The upload page in a real browser (Debian's Chromium driven by Playwright): upload, live status, result."""

from __future__ import annotations

import os
import shutil

import pytest

from tests.support.api import running_api
from tests.support.images import image_bytes
from tests.support.workers import running_worker, worker_env

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
    assert page.get_attribute("#status", "data-via") == "push"  # over the WebSocket, not by polling
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
    from tests.support.api import on_s3, running_api
    from tests.support.workers import running_worker, worker_env

    settings = on_s3(api_settings, s3_env, result_redirect_seconds=60)
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


@pytest.fixture
def polling_platform(api_settings, amqp_url, tmp_path):
    """API with QW_EVENTS_PUSH=false (its WebSocket refuses) + an image worker taking 1.5 s per task."""
    settings = api_settings.model_copy(update={"events_push": False})
    with running_api(settings) as (base, _app):
        env = worker_env(amqp_url, settings.database_url, settings.storage_dir, QW_TEST_TASK_DELAY=1.5)
        with running_worker("image", env, tmp_path / "logs"):
            yield base


@pytest.fixture
def short_socket_platform(api_settings, amqp_url, tmp_path):
    """API whose WebSockets live 1 s (QW_WS_MAX_SECONDS) + an image worker taking 3 s per task."""
    settings = api_settings.model_copy(update={"ws_max_seconds": 1.0})
    with running_api(settings) as (base, _app):
        env = worker_env(amqp_url, settings.database_url, settings.storage_dir, QW_TEST_TASK_DELAY=3)
        with running_worker("image", env, tmp_path / "logs"):
            yield base


def test_the_page_reconnects_its_socket_after_its_lifetime(short_socket_platform, browser_page, tmp_path):
    """The server closes each socket after 1 s with 4000: the page opens another and keeps following the task by
    push (not by polling) to the end."""
    photo = tmp_path / "a.png"
    photo.write_bytes(image_bytes())
    page = browser_page
    page.goto(short_socket_platform)
    page.fill("#key", "key-acme")
    page.set_input_files("#file", str(photo))
    page.click("#submit")
    page.wait_for_selector("#status[data-status=succeeded]", timeout=30_000)
    assert page.get_attribute("#status", "data-via") == "push"
    assert int(page.get_attribute("#status", "data-reconnects") or 0) >= 1
    assert "processing" in page.inner_text("#log")


def test_without_push_the_page_falls_back_to_polling(polling_platform, browser_page, tmp_path):
    photo = tmp_path / "a.png"
    photo.write_bytes(image_bytes())
    page = browser_page
    page.goto(polling_platform)
    page.fill("#key", "key-acme")
    page.set_input_files("#file", str(photo))
    page.click("#submit")
    page.wait_for_selector("#status[data-status=succeeded]", timeout=30_000)
    assert page.get_attribute("#status", "data-via") == "poll"
    assert "processing" in page.inner_text("#log")
    page.wait_for_selector("#result-image", timeout=10_000)


SOCKETS_JS = """async ([acmeKey, globexKey]) => {
  const url = new URL("v1/ws", location.href).href.replace(/^http/, "ws");
  const open = (protocols, first) => new Promise((resolve) => {
    const ws = protocols ? new WebSocket(url, protocols) : new WebSocket(url);
    const got = { ws, messages: [], closed: null };
    ws.onopen = () => { if (first) ws.send(JSON.stringify(first)); };
    ws.onmessage = (ev) => {
      const m = JSON.parse(ev.data);
      got.messages.push(m);
      if (m.type === "ready") resolve(got);
    };
    ws.onclose = (ev) => { got.closed = ev.code; resolve(got); };
  });
  window.sockets = {
    acme: await open(null, { type: "auth", key: acmeKey }),
    globex: await open(["queueworker", "bearer." + globexKey], null),
    stranger: await open(["queueworker", "bearer.not-a-key"], null),
  };
  return [window.sockets.acme.messages[0], window.sockets.globex.messages[0], window.sockets.stranger.closed];
}"""


def test_the_websocket_in_chromium_authenticates_without_the_key_in_the_url_and_keeps_tenants_apart(
    platform, browser_page
):
    http, _ = platform
    page = browser_page
    page.goto(str(http.base_url))
    acme_ready, globex_ready, stranger = page.evaluate(SOCKETS_JS, ["key-acme", "key-globex"])
    assert (acme_ready["tenant"], globex_ready["tenant"], stranger) == ("acme", "globex", 4401)
    task_id = http.post("/v1/emails", json={"to": "a@example.com", "subject": "s", "text": "t"}).json()["task_id"]
    # A function, not a bare expression: Playwright polls a bare expression through eval(), which the page's CSP
    # (no 'unsafe-eval') refuses once the first check comes back false.
    page.wait_for_function(
        "id => window.sockets.acme.messages.some(m => m.type === 'status' && m.task.task_id === id "
        "&& m.task.status === 'succeeded')",
        arg=task_id,
        timeout=30_000,
    )
    seqs = page.evaluate(f"window.sockets.acme.messages.filter(m => m.task && m.task.task_id === '{task_id}')"
                         ".map(m => m.task.seq)")  # fmt: skip
    assert seqs == list(range(1, len(seqs) + 1))
    assert page.evaluate("window.sockets.globex.messages.filter(m => m.type === 'status').length") == 0
