"""The API's accept path against the real broker and store: what a client relies on."""

from __future__ import annotations

import json
import threading
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest
from qw_core.topology import NOTIFICATIONS_QUEUE, queue_name

from tests.support.api import client
from tests.support.images import image_bytes
from tests.support.wait import wait_for

pytestmark = pytest.mark.integration
EMAIL = {"to": "ann@example.com", "subject": "Hello", "text": "Hi Ann"}


def test_email_is_accepted_only_once_the_broker_holds_it(http, peek):
    r = http.post("/v1/emails", json=EMAIL)
    assert r.status_code == 202, r.text
    body = r.json()
    assert body["status"] == "queued" and body["status_url"].endswith(f"/v1/tasks/{body['task_id']}")
    props, msg = peek.take(queue_name("email"))
    assert props.delivery_mode == 2 and props.message_id == body["task_id"]
    assert msg["task_id"] == body["task_id"] and msg["tenant"] == "acme" and msg["v"] == 1
    assert msg["payload"] == {**EMAIL, "kind": "email", "html": None, "template": None, "context": {}, "reply_to": None}
    task = http.get(f"/v1/tasks/{body['task_id']}").json()
    assert (task["status"], task["kind"], task["attempts"], task["result_url"]) == ("queued", "email", 0, None)


def test_image_upload_is_stored_under_a_generated_name_and_queued(http, peek, api):
    r = http.post(
        "/v1/images",
        files={"file": ("../../etc/passwd.png", image_bytes("JPEG"), "text/plain")},
        data={"width": "32", "format": "WEBP", "watermark": "(c) acme"},
    )
    assert r.status_code == 202, r.text
    _, msg = peek.take(queue_name("image"))
    payload = msg["payload"]
    assert payload["source_format"] == "JPEG"  # from the bytes, not the name or content type
    assert payload["options"]["width"] == 32 and payload["options"]["format"] == "WEBP"
    storage = api[1].state.services.storage
    path = storage.path(payload["source_key"])
    assert path.is_relative_to(storage.root) and path.read_bytes() == image_bytes("JPEG")
    assert "passwd" not in payload["source_key"] and payload["source_key"].startswith("uploads/acme/")


@pytest.mark.parametrize("key", [None, "wrong", ""])
def test_missing_or_wrong_key_is_401_and_queues_nothing(api, peek, key):
    with client(api[0], key) as c:
        r = c.post("/v1/emails", json=EMAIL)
    assert r.status_code == 401 and "API key" in r.json()["detail"]
    assert r.headers["www-authenticate"] == "Bearer"
    assert peek.depth(queue_name("email")) == 0


def test_another_tenants_task_is_404_not_403(api, http):
    task_id = http.post("/v1/emails", json=EMAIL).json()["task_id"]
    with client(api[0], "key-globex") as other:
        for path in ("", "/events", "/result"):
            r = other.get(f"/v1/tasks/{task_id}{path}")
            assert r.status_code == 404 and r.json()["detail"] == "no such task"
    assert http.get("/v1/tasks/does-not-exist").status_code == 404


def test_events_stream_every_status_change_and_end_on_a_final_status(api, http):
    task_id = http.post("/v1/emails", json=EMAIL).json()["task_id"]
    store = api[1].state.services.store
    seen: list[dict] = []

    def listen():
        with http.stream("GET", f"/v1/tasks/{task_id}/events") as r:
            assert r.headers["content-type"].startswith("text/event-stream")
            for line in r.iter_lines():
                if line.startswith("data: "):
                    seen.append(json.loads(line[6:]))

    t = threading.Thread(target=listen)
    t.start()
    wait_for("the first event", lambda: seen)
    store.start_attempt(task_id, 1)
    wait_for("processing event", lambda: len(seen) >= 2)
    store.schedule_retry(task_id, 1, "smtp 451")
    wait_for("retry event", lambda: len(seen) >= 3)
    store.start_attempt(task_id, 2)
    wait_for("second processing event", lambda: len(seen) >= 4)
    store.succeed(task_id)
    t.join(10)
    assert not t.is_alive(), "the stream must end after a final status"
    assert [(e["status"], e["attempts"]) for e in seen] == [
        ("queued", 0),
        ("processing", 1),
        ("queued", 1),
        ("processing", 2),
        ("succeeded", 2),
    ]
    assert seen[2]["error"] == "smtp 451"


def test_result_is_downloadable_once_the_task_succeeded(api, http):
    task_id = http.post("/v1/images", files={"file": ("a.png", image_bytes(), "image/png")}).json()["task_id"]
    assert http.get(f"/v1/tasks/{task_id}/result").status_code == 409
    services = api[1].state.services
    key = services.storage.new_key("results", "acme", "WEBP")
    services.storage.write(key, image_bytes("WEBP"))
    services.store.start_attempt(task_id, 1)
    services.store.succeed(task_id, key)
    task = http.get(f"/v1/tasks/{task_id}").json()
    assert task["status"] == "succeeded" and task["result_url"].endswith(f"/v1/tasks/{task_id}/result")
    r = http.get(task["result_url"])
    assert r.status_code == 200 and r.headers["content-type"] == "image/webp"
    assert r.content == image_bytes("WEBP")


def test_notification_reaches_the_fanout_subscribers(http, peek):
    r = http.post("/v1/notifications", json={"topic": "order.created", "data": {"id": 7}})
    assert r.status_code == 202
    _, msg = peek.take(NOTIFICATIONS_QUEUE)
    assert msg["notification_id"] == r.json()["notification_id"]
    assert (msg["topic"], msg["data"], msg["tenant"]) == ("order.created", {"id": 7}, "acme")


def test_concurrent_submissions_are_all_confirmed_and_distinct(api, peek):
    def post(i):
        with httpx.Client(base_url=api[0], headers={"Authorization": "Bearer key-acme"}, timeout=30) as c:
            return c.post("/v1/emails", json={**EMAIL, "subject": f"n{i}"})

    with ThreadPoolExecutor(16) as pool:
        responses = list(pool.map(post, range(200)))
    assert [r.status_code for r in responses] == [202] * 200
    assert len({r.json()["task_id"] for r in responses}) == 200
    assert peek.depth(queue_name("email")) == 200


def test_health_readiness_metrics_and_docs(api, http):
    assert http.get("/healthz").json() == {"status": "ok"}
    assert http.get("/readyz").json() == {"broker": True, "store": True}
    http.post("/v1/emails", json=EMAIL)
    text = http.get("/metrics").text
    assert 'queueworker_api_tasks_submitted_total{kind="email"} 1.0' in text
    assert 'queueworker_api_requests_total{method="POST",route="/v1/emails",status="202"} 1.0' in text
    assert "queueworker_api_broker_connected 1.0" in text
    spec = http.get("/openapi.json").json()
    assert {"/v1/images", "/v1/emails", "/v1/notifications", "/v1/tasks/{task_id}"} <= set(spec["paths"])
    assert http.get("/docs").status_code == 200


def test_web_page_is_served(http):
    r = http.get("/")
    assert r.status_code == 200 and "Process an image" in r.text


def test_the_api_runs_on_postgresql_too(api_settings, pg_url):
    from tests.support.api import running_api

    with running_api(api_settings.model_copy(update={"database_url": pg_url})) as (base, app):
        with client(base) as c:
            assert c.get("/readyz").json() == {"broker": True, "store": True}
            task_id = c.post("/v1/emails", json=EMAIL).json()["task_id"]
            assert c.get(f"/v1/tasks/{task_id}").json()["status"] == "queued"
        assert app.state.services.store.counts() == {"queued": 1}
