"""One tenant cannot use up what all tenants share: its task creation rate (a token bucket: 429 + Retry-After,
other tenants unaffected, its own tokens back after the wait) and its open event streams (429 over its cap, 503
over the server's). The real API on the real broker and store."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator

import httpx
import pytest

from tests.support.api import client, running_api
from tests.support.wait import wait_for

EMAIL = {"to": "ann@example.com", "subject": "Hello", "text": "Hi Ann"}


@pytest.fixture
def limited(api_settings) -> Iterator[str]:
    settings = api_settings.model_copy(
        update={
            "tenant_rate": 2.0,
            "tenant_burst": 3,
            "tenant_limits": "globex=1000/1000",
            "max_streams_per_tenant": 2,
            "max_streams": 3,
        }
    )
    with running_api(settings) as (base, _app):
        yield base


def test_a_tenant_over_its_rate_gets_429_and_others_do_not(limited: str) -> None:
    with client(limited, "key-acme") as acme, client(limited, "key-globex") as globex:
        answers = [acme.post("/v1/emails", json=EMAIL) for _ in range(4)]
        assert [r.status_code for r in answers] == [202, 202, 202, 429]
        refused = answers[-1]
        assert "2 per second" in refused.json()["detail"] and "bursts of 3" in refused.json()["detail"]
        wait = int(refused.headers["Retry-After"])
        assert wait >= 1
        # Another tenant (with its own, higher limit) is not slowed down by acme's flood
        assert all(globex.post("/v1/emails", json=EMAIL).status_code == 202 for _ in range(10))
        # Reads and cancels take no token: with none left, acme can still follow and cancel what it queued
        first = answers[0].json()["task_id"]
        assert acme.get(f"/v1/tasks/{first}").status_code == 200
        assert acme.delete(f"/v1/tasks/{first}").json()["status"] == "cancelled"
        # After the wait the tenant has a token again
        time.sleep(wait)
        assert acme.post("/v1/emails", json=EMAIL).status_code == 202


def test_event_streams_are_capped_per_tenant_and_in_all(limited: str) -> None:
    with client(limited, "key-acme") as acme, client(limited, "key-globex") as globex:
        ids = [globex.post("/v1/emails", json=EMAIL).json()["task_id"] for _ in range(3)]
        acme_id = acme.post("/v1/emails", json=EMAIL).json()["task_id"]
        opened: list[httpx.Response] = []
        stop = threading.Event()
        streams = [_open(globex, f"/v1/tasks/{ids[i]}/events", opened, stop) for i in range(2)]
        try:
            wait_for("two streams open", lambda: len(opened) == 2)
            assert all(r.status_code == 200 for r in opened)
            # The tenant's third stream: 429 naming the cap; another tenant's first: admitted (3 in all)
            third = globex.get(f"/v1/tasks/{ids[2]}/events")
            assert third.status_code == 429 and "2 event streams" in third.json()["detail"], third.text
            streams.append(_open(acme, f"/v1/tasks/{acme_id}/events", opened, stop))
            wait_for("the third stream open", lambda: len(opened) == 3)
            assert opened[-1].status_code == 200
            # The server's cap (3) is reached: one more stream from anyone is 503
            over = acme.get(f"/v1/tasks/{acme_id}/events")
            assert over.status_code == 503 and over.headers["Retry-After"], over.text
        finally:
            stop.set()
            for r in opened:
                r.close()  # the reader threads end on the closed stream
            for t in streams:
                t.join(15)
        # Closed streams give their slots back
        wait_for("a slot given back", lambda: _stream_status(globex, f"/v1/tasks/{ids[2]}/events") == 200, 15)


def _open(c: httpx.Client, path: str, opened: list[httpx.Response], stop: threading.Event) -> threading.Thread:
    """Holds an event stream open (reading its keep-alives) until `stop`."""

    def run() -> None:
        with httpx.Client(base_url=str(c.base_url), headers=dict(c.headers), timeout=30) as own:
            try:
                with own.stream("GET", path) as r:
                    opened.append(r)
                    for _ in r.iter_raw():
                        if stop.is_set():
                            return
            except (httpx.HTTPError, RuntimeError):  # closed by the test: the end it waits for
                return

    t = threading.Thread(target=run, daemon=True)
    t.start()
    return t


def _stream_status(c: httpx.Client, path: str) -> int:
    """The status an event stream opens with (the stream itself is closed at once)."""
    with c.stream("GET", path) as r:
        return r.status_code
