"""The whole path a client uses: API -> real broker -> real worker processes -> status, result, real SMTP."""

from __future__ import annotations

import io
import json

import pytest
from PIL import Image

from tests.support.images import image_bytes, noisy_image_bytes, png_with_bad_data
from tests.support.wait import wait_for

pytestmark = [pytest.mark.integration, pytest.mark.broker_matrix]  # on RabbitMQ 3.10 and 4.x


def _final(http, task_id, timeout=30):
    def done():
        t = http.get(f"/v1/tasks/{task_id}").json()
        return t if t["status"] in ("succeeded", "failed", "dead") else None

    return wait_for(f"task {task_id} to finish", done, timeout)


def test_uploaded_image_is_processed_and_downloadable(platform):
    http, _ = platform
    r = http.post("/v1/images", files={"file": ("cat.jpg", image_bytes("JPEG", (400, 300)), "image/jpeg")},
                  data={"width": "100", "format": "PNG"})  # fmt: skip
    assert r.status_code == 202
    task = _final(http, r.json()["task_id"])
    assert task["status"] == "succeeded" and task["attempts"] == 1, task
    result = http.get(task["result_url"])
    assert result.status_code == 200 and result.headers["content-type"] == "image/png"
    img = Image.open(io.BytesIO(result.content))
    assert (img.format, img.size) == ("PNG", (100, 75))


def test_an_image_only_a_full_decode_finds_broken_ends_failed_with_the_reason(platform):
    """Given a PNG whose chunks all check out but whose compressed pixels are garbage: the API's bounded check
    accepts it (it never decodes pixels), the worker's full decode refuses it: `failed` after one attempt, with
    the reason, and the worker goes on serving the next upload."""
    http, _ = platform
    bad = png_with_bad_data(noisy_image_bytes("PNG"))
    r = http.post("/v1/images", files={"file": ("bad.png", bad, "image/png")})
    assert r.status_code == 202, r.text
    task = _final(http, r.json()["task_id"])
    assert (task["status"], task["attempts"], task["result_url"]) == ("failed", 1, None), task
    assert "could not be decoded, it is damaged or truncated" in task["error"], task
    good = http.post("/v1/images", files={"file": ("ok.png", image_bytes(), "image/png")}).json()["task_id"]
    assert _final(http, good)["status"] == "succeeded"


def test_events_follow_a_real_task_to_its_end(platform):
    http, _ = platform
    task_id = http.post("/v1/images", files={"file": ("a.png", image_bytes(), "image/png")}).json()["task_id"]
    with http.stream("GET", f"/v1/tasks/{task_id}/events") as r:
        events = [json.loads(line[6:]) for line in r.iter_lines() if line.startswith("data: ")]
    assert events[-1]["status"] == "succeeded" and events[-1]["result_url"]


def test_email_reaches_the_smtp_server_with_its_headers(platform):
    http, mails = platform
    r = http.post("/v1/emails", json={"to": "ann@example.com", "subject": "Your report", "text": "It is ready.",
                                      "html": "<p>It is <b>ready</b>.</p>"})  # fmt: skip
    task = _final(http, r.json()["task_id"])
    assert task["status"] == "succeeded", task
    [msg] = wait_for("the email", lambda: mails.messages())
    assert (msg["To"], msg["Subject"], msg["From"]) == ("ann@example.com", "Your report", "noreply@queueworker.test")
    assert msg["X-QW-Task-Id"] == task["task_id"]
    assert "It is ready." in msg.get_body(("plain",)).get_content()
    assert "<b>ready</b>" in msg.get_body(("html",)).get_content()
