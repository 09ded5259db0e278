"""Status pushed from the broker (qw.events -> each API process's hub -> SSE / WebSocket), with the real API, the
real broker, the real store and real worker processes."""

from __future__ import annotations

import json
import urllib.parse
from collections import defaultdict
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest
from qw_api.push import Subscription
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import connect as ws_connect

from tests.support.api import api_process, client, running_api
from tests.support.events import sse, ws_url
from tests.support.smtp import smtp_server
from tests.support.wait import wait_for
from tests.support.workers import running_worker, worker_env

pytestmark = pytest.mark.integration
EMAIL = {"to": "ann@example.com", "subject": "Hello", "text": "Hi Ann"}
ENDED = ("succeeded", "failed", "dead", "cancelled")


@pytest.fixture
def push_settings(api_settings):
    return api_settings.model_copy(update={"sse_keepalive_seconds": 0.5, "tenant_rate": 0.0})


@pytest.fixture
def push_rig(push_settings, amqp_url, tmp_path):
    """The API (in this process) + an email worker + an SMTP server, on one broker and store."""
    with smtp_server() as (smtp_port, mails), running_api(push_settings) as (base, _app):
        env = worker_env(amqp_url, push_settings.database_url, push_settings.storage_dir,
                         QW_SMTP_PORT=smtp_port, QW_SMTP_FROM="noreply@queueworker.test")  # fmt: skip
        with running_worker("email", env, tmp_path / "logs"):
            yield base


def _seqs_by_task(views):
    seen = defaultdict(list)
    for v in views:
        seen[v["task_id"]].append((v["seq"], v["status"]))
    return seen


def test_every_change_of_every_task_arrives_once_and_in_order_under_load(push_rig):
    """Given a tenant stream open, when 150 emails are submitted at once from 8 threads and a real worker runs
    them: every task's changes arrive numbered 1..n without a gap, a repeat or a reordering, the last one is the
    stored final state, and another tenant's stream receives none of them."""
    base = push_rig
    with sse(base, "/v1/events") as acme, sse(base, "/v1/events", key="key-globex") as globex, client(base) as http:
        wait_for("the streams subscribed", lambda: acme.comments and globex.comments, 10)
        with ThreadPoolExecutor(8) as pool:
            answers = list(pool.map(lambda _: http.post("/v1/emails", json=EMAIL), range(150)))
        ids = [r.json()["task_id"] for r in answers]
        assert all(r.status_code == 202 for r in answers)
        finals = {}

        def all_ended():
            for task_id in ids:
                if task_id not in finals:
                    view = http.get(f"/v1/tasks/{task_id}").json()
                    if view["status"] in ENDED:
                        finals[task_id] = view
            return len(finals) == len(ids)

        wait_for("every task ended", all_ended, 120, 0.5)
        wait_for("the last change of every task pushed",
                 lambda: {t: s[-1][0] for t, s in _seqs_by_task(acme.statuses()).items()}
                 == {t: v["seq"] for t, v in finals.items()}, 30)  # fmt: skip
    seen = _seqs_by_task(acme.statuses())
    assert set(seen) == set(ids)
    for task_id, changes in seen.items():
        assert [s for s, _ in changes] == list(range(1, finals[task_id]["seq"] + 1)), (task_id, changes)
        assert changes[-1][1] == finals[task_id]["status"] == "succeeded"
        assert "processing" in [st for _, st in changes]
    assert globex.statuses() == []


def test_a_reconnecting_tenant_stream_is_told_to_read_again(push_settings):
    """A browser's EventSource reconnects by itself (after the stream's lifetime, a dropped connection) and sends
    the last `id` it saw. The tenant stream keeps no history, so the reconnect starts with `resync`: the page reads
    again what changed while it was away. A first connection does not."""
    with running_api(push_settings) as (base, _app):
        with sse(base, "/v1/events", **{"Last-Event-ID": "7"}) as again, sse(base, "/v1/events") as fresh:
            wait_for("both subscribed, the reconnect told to resync", lambda: fresh.comments and again.frames, 10)
            assert [(f.event, f.data) for f in again.frames] == [("resync", "{}")]
            assert fresh.frames == []


def test_a_task_stream_sends_the_stored_state_then_each_change_and_resumes_with_last_event_id(push_rig):
    base = push_rig
    with client(base) as http:
        task_id = http.post("/v1/emails?delay=2", json=EMAIL).json()["task_id"]
        with sse(base, f"/v1/tasks/{task_id}/events") as live:
            wait_for("the stored state", lambda: live.frames, 10)
            first = live.frames[0]
            assert (first.event, first.id, first.json()["status"]) == ("status", "1", "scheduled")
            wait_for("the stream to end at the final state", lambda: live.ended, 60)
        statuses = [f.json()["status"] for f in live.frames]
        ids = [int(f.id) for f in live.frames]
        assert statuses[0] == "scheduled" and statuses[-1] == "succeeded" and "processing" in statuses
        assert ids == sorted(set(ids)) and ids[0] == 1, ids
        assert any(c == ": keep-alive" for c in live.comments)  # 2 s of silence, keep-alives every 0.5 s

        # Resume after the first change: only what is newer (the stored, final state) comes, once
        with sse(base, f"/v1/tasks/{task_id}/events", **{"Last-Event-ID": "1"}) as resumed:
            wait_for("the resumed stream to end", lambda: resumed.ended, 20)
        assert [(f.id, f.json()["status"]) for f in resumed.frames] == [(str(ids[-1]), "succeeded")]
        # Resume with everything received: nothing more, and the stream ends (the task ended)
        with sse(base, f"/v1/tasks/{task_id}/events", **{"Last-Event-ID": str(ids[-1])}) as done:
            wait_for("the stream to end", lambda: done.ended, 20)
        assert done.frames == [] and done.status == 200


def test_streams_need_the_tenants_key_and_never_show_another_tenants_task(push_rig):
    base = push_rig
    with client(base) as http, client(base, "key-globex") as globex:
        task_id = http.post("/v1/emails?delay=30", json=EMAIL).json()["task_id"]
        assert httpx.get(f"{base}/v1/events").status_code == 401
        assert httpx.get(f"{base}/v1/tasks/{task_id}/events").status_code == 401
        assert globex.get(f"/v1/tasks/{task_id}/events").status_code == 404
        with sse(base, "/v1/events?kind=email", key="key-globex") as other:
            wait_for("subscribed", lambda: other.comments, 10)
            assert http.delete(f"/v1/tasks/{task_id}").json()["status"] == "cancelled"
            marker = globex.post("/v1/emails?delay=30", json=EMAIL).json()["task_id"]
            wait_for("globex's own change", lambda: other.statuses(marker), 15)
            assert other.statuses(task_id) == []


def test_a_tenant_over_its_stream_cap_gets_429(push_settings):
    settings = push_settings.model_copy(update={"max_streams_per_tenant": 2})
    with running_api(settings) as (base, _app), sse(base, "/v1/events") as a, sse(base, "/v1/events") as b:
        assert (a.status, b.status) == (200, 200)
        over = client(base).get("/v1/events")
        assert over.status_code == 429 and "2 event streams" in over.json()["detail"]
        with sse(base, "/v1/events", key="key-globex") as other:  # another tenant is not affected
            assert other.status == 200


def _ws_events(ws, task_id, until, timeout=30.0):
    got = []
    while not got or got[-1]["status"] not in until:
        msg = json.loads(ws.recv(timeout=timeout))
        if msg["type"] == "status" and msg["task"]["task_id"] == task_id:
            got.append(msg["task"])
    return got


def test_websocket_authenticates_by_first_message_or_subprotocol_never_the_url(push_rig):
    base = push_rig
    url = ws_url(base)
    # No key, a wrong key (subprotocol or first message): closed with 4401 and nothing sent
    for kwargs, first in (({}, {"type": "auth", "key": "nope"}),
                          ({"subprotocols": ["queueworker", "bearer.nope"]}, None),
                          ({}, {"type": "hello"})):  # fmt: skip
        with ws_connect(url, **kwargs) as ws:
            if first is not None:
                ws.send(json.dumps(first))
            with pytest.raises(ConnectionClosed) as closed:
                ws.recv(timeout=15)
            assert closed.value.rcvd.code == 4401
    with (
        client(base) as http,
        ws_connect(url) as acme,
        ws_connect(ws_url(base, "kind=email"), subprotocols=["queueworker", "bearer.key-globex"]) as globex,
    ):
        acme.send(json.dumps({"type": "auth", "key": "key-acme"}))
        assert json.loads(acme.recv(timeout=10)) == {"type": "ready", "tenant": "acme", "kind": None}
        assert globex.subprotocol == "queueworker"
        assert json.loads(globex.recv(timeout=10))["tenant"] == "globex"
        task_id = http.post("/v1/emails", json=EMAIL).json()["task_id"]
        changes = _ws_events(acme, task_id, ENDED)
        assert [c["seq"] for c in changes] == list(range(1, len(changes) + 1))
        assert changes[-1]["status"] == "succeeded"
        marker = client(base, "key-globex").post("/v1/emails", json=EMAIL).json()["task_id"]
        theirs = _ws_events(globex, marker, ENDED)  # globex's own, and before it nothing of acme's
        assert {c["task_id"] for c in theirs} == {marker}


def test_a_change_made_through_one_api_process_is_pushed_by_another(api_settings, amqp_url, tmp_path):
    """Two `python -m qw_api` processes on one broker and store: a task queued and cancelled through A reaches a
    subscriber of B (tenant stream and task stream)."""
    env = {"QW_RABBITMQ_URL": amqp_url, "QW_DATABASE_URL": api_settings.database_url,
           "QW_STORAGE_DIR": str(api_settings.storage_dir), "QW_API_KEYS": "key-acme:acme,key-globex:globex",
           "QW_SSE_KEEPALIVE_SECONDS": "0.5"}  # fmt: skip
    with api_process(env, tmp_path / "a.log") as a, api_process(env, tmp_path / "b.log") as b:
        with sse(b, "/v1/events") as on_b, client(a) as via_a:
            wait_for("subscribed", lambda: on_b.comments, 10)
            task_id = via_a.post("/v1/emails?delay=60", json=EMAIL).json()["task_id"]
            with sse(b, f"/v1/tasks/{task_id}/events") as task_on_b:
                wait_for("the stored state on B", lambda: task_on_b.frames, 10)
                assert via_a.delete(f"/v1/tasks/{task_id}").json()["status"] == "cancelled"
                wait_for("B's task stream to end", lambda: task_on_b.ended, 15)
            wait_for("the cancel pushed by B", lambda: len(on_b.statuses(task_id)) == 2, 15)
        assert [v["status"] for v in on_b.statuses(task_id)] == ["scheduled", "cancelled"]
        assert [f.json()["status"] for f in task_on_b.frames] == ["scheduled", "cancelled"]


def test_a_change_lost_while_the_api_rebinds_reaches_the_task_stream_from_the_store(push_settings, broker, vhost):
    """Given a task stream open, when the broker closes the API's event consumer (its exclusive queue goes with it)
    and the task is cancelled before the consumer is back: the change was routed nowhere, yet the stream shows it,
    read from the store when the consumer rebinds (every subscriber resyncs)."""
    from qw_api.push import CONNECTION_NAME  # noqa: PLC0415

    q = urllib.parse.quote(vhost, safe="")

    def consumers():
        return [c["name"] for c in broker.api(f"/api/vhosts/{q}/connections")
                if c.get("client_properties", {}).get("connection_name") == CONNECTION_NAME]  # fmt: skip

    with running_api(push_settings) as (base, app), client(base) as http:
        task_id = http.post("/v1/emails?delay=60", json=EMAIL).json()["task_id"]
        with sse(base, f"/v1/tasks/{task_id}/events") as live:
            wait_for("the stored state", lambda: live.frames, 10)
            names = wait_for("the consumer's connection listed", consumers, 30, 0.5)
            hub = app.state.services.hub
            hub.subscribe(spy := Subscription("acme"))
            broker.api(f"/api/connections/{urllib.parse.quote(names[0], safe='')}", "DELETE")
            wait_for("the consumer gone", lambda: not spy.queue.empty(), 15, 0.02)  # its RESYNC
            assert http.delete(f"/v1/tasks/{task_id}").json()["status"] == "cancelled"
            assert not app.state.event_consumer.bound.is_set()  # so the cancel was routed to no queue of ours
            wait_for("the stream to end", lambda: live.ended, 30)
        assert [f.json()["status"] for f in live.frames] == ["scheduled", "cancelled"]
