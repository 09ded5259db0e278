"""RabbitMQ 4.x's max_message_size (16 MiB): a larger publish gets 406 PRECONDITION_FAILED and the broker closes the
channel, failing every publish in flight on it, every tenant's. The API refuses such a message with 413 before it
reaches the broker: no task row, no stored upload, nothing queued, and the shared channel keeps working."""

from __future__ import annotations

import pytest
from qw_core.settings import ApiSettings
from qw_core.topology import NOTIFICATIONS_QUEUE, queue_name

from tests.integration.conftest import Peek
from tests.support.api import client, running_api
from tests.support.images import image_bytes

pytestmark = pytest.mark.integration
EMAIL = {"to": "ann@example.com", "subject": "Hello", "text": "Hi Ann"}
LIMIT = 64 * 1024  # far under the 2 MiB body cap of these tests' API: the message limit, not the body cap, answers


@pytest.fixture
def small_limit_api(api_settings):
    with running_api(api_settings.model_copy(update={"max_message_bytes": LIMIT})) as (base, app):
        yield base, app


@pytest.fixture
def depth(amqp_url):
    """A queue's depth as the broker counts it (a passive declare); call it once the API declared the topology."""
    peek = Peek(amqp_url)
    yield peek.depth
    peek.close()


@pytest.fixture
def small_limit_http(small_limit_api):
    with client(small_limit_api[0]) as c:
        yield c


def _assert_refused_for_size(r, limit: int) -> None:
    assert r.status_code == 413, r.text
    detail = r.json()["detail"]
    assert f"at most {limit} bytes" in detail and "QW_MAX_MESSAGE_BYTES" in detail and "nothing was queued" in detail


@pytest.mark.parametrize(
    ("path", "body", "queue"),
    [
        ("/v1/emails", {**EMAIL, "context": {f"k{i}": "v" * 1000 for i in range(80)}}, queue_name("email")),
        ("/v1/emails", {**EMAIL, "text": None, "html": "<p>" + "x" * 70_000 + "</p>"}, queue_name("email")),
        ("/v1/notifications", {"topic": "order.created", "data": {"blob": "x" * 70_000}}, NOTIFICATIONS_QUEUE),
    ],
    ids=["email-context", "email-html", "notification-data"],
)
def test_a_message_over_the_limit_is_413_with_nothing_stored_or_queued(
    small_limit_api, small_limit_http, depth, path, body, queue
):
    # Given the API limited to 64 KiB messages, and a request body well under the 2 MiB body cap
    services = small_limit_api[1].state.services
    before = depth(queue)
    # When a message above the limit is submitted
    r = small_limit_http.post(path, json=body)
    # Then it is refused with the limit and the size in the answer; nothing reached the store or the broker
    _assert_refused_for_size(r, LIMIT)
    assert "the message would be" in r.json()["detail"]
    assert services.store.counts() == {}
    assert depth(queue) == before
    # And the publisher's channel is intact: a normal message right after is confirmed
    ok = small_limit_http.post("/v1/emails", json=EMAIL)
    assert ok.status_code == 202, ok.text
    assert small_limit_http.get(f"/v1/tasks/{ok.json()['task_id']}").json()["status"] == "queued"
    assert services.store.counts() == {"queued": 1}
    assert small_limit_http.get("/readyz").json() == {"broker": True, "store": True}
    metrics = small_limit_http.get("/metrics").text
    assert f'queueworker_api_requests_total{{method="POST",route="{path}",status="413"}} 1.0' in metrics


def test_an_image_task_over_the_limit_leaves_no_upload_behind(api_settings, depth):
    # An image message holds a storage key, not the image: only an absurdly low limit refuses one. The upload is
    # stored before the message is built, so the refusal must remove it again.
    with running_api(api_settings.model_copy(update={"max_message_bytes": 200})) as (base, app):
        services = app.state.services
        with client(base) as http:
            r = http.post("/v1/images", files={"file": ("a.png", image_bytes(), "image/png")}, data={"width": "8"})
            _assert_refused_for_size(r, 200)
            assert services.store.counts() == {}
            assert not [p for p in services.storage.root.rglob("*") if p.is_file()], "the upload was left behind"
            assert depth(queue_name("image")) == 0


def test_the_default_limit_is_rabbitmq_4s_16_mib(api_settings, depth):
    # Given the API's defaults for both limits: 20 MiB request bodies, 16 MiB messages (RabbitMQ 4.x)
    # (JSON bodies are capped far lower, QW_MAX_JSON_BYTES: raised here so the message guard is what answers)
    settings = api_settings.model_copy(
        update={"max_upload_bytes": ApiSettings.model_fields["max_upload_bytes"].default, "max_json_bytes": 20 << 20}
    )
    assert (settings.max_upload_bytes, settings.max_message_bytes) == (20 * 1024 * 1024, 16 * 1024 * 1024)
    with running_api(settings) as (base, _app):
        with client(base) as http:
            before = depth(NOTIFICATIONS_QUEUE)
            # When a ~17 MiB notification arrives (under the body cap, over the broker's message size)
            r = http.post("/v1/notifications", json={"topic": "big", "data": {"blob": "x" * (17 * 1024 * 1024)}})
            # Then 413, nothing published, and the channel still confirms the next notification
            _assert_refused_for_size(r, 16 * 1024 * 1024)
            assert depth(NOTIFICATIONS_QUEUE) == before
            ok = http.post("/v1/notifications", json={"topic": "small", "data": {"id": 1}})
            assert ok.status_code == 202, ok.text
            assert depth(NOTIFICATIONS_QUEUE) == before + 1


@pytest.mark.parametrize(
    ("path", "body"),
    [
        ("/v1/emails", {**EMAIL, "template": "welcome", "text": None, "context": {"blob": "x" * (2 << 20)}}),
        ("/v1/notifications", {"topic": "order.created", "data": {"blob": "x" * (2 << 20)}}),
    ],
)
def test_a_json_body_over_its_cap_is_refused_before_it_is_parsed(http, depth, path, body) -> None:
    """A 2 MiB email context or notification is far under the upload cap but over the JSON one (1 MiB)."""
    before = depth(NOTIFICATIONS_QUEUE), depth(queue_name("email"))
    r = http.post(path, json=body)
    assert r.status_code == 413, r.text
    assert str(1 << 20) in r.json()["detail"]
    assert (depth(NOTIFICATIONS_QUEUE), depth(queue_name("email"))) == before
