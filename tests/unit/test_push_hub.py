"""The API's in-memory fan-out (qw_api.push.Hub) and the event encoding (qw_core.events): pure, no broker."""

from __future__ import annotations

import asyncio

import pytest
from qw_api.push import CLOSED, RESYNC, Hub, Subscription
from qw_core.events import decode, encode, routing_key
from qw_core.store import TaskRecord


def rec(seq: int, task_id: str = "t1", tenant: str = "acme", kind: str = "email", status: str = "processing"):
    return TaskRecord(task_id, tenant, kind, status, 1, None, "uploads/secret", None, 0, 1.0, 2.0, seq=seq)  # type: ignore[arg-type]


def drain(sub: Subscription) -> list:
    out = []
    while not sub.queue.empty():
        item = sub.queue.get_nowait()
        out.append(item if item is RESYNC else item.rec.seq)
    return out


@pytest.mark.parametrize(
    ("tenant", "kind", "task_id", "key"),
    [
        ("acme", "email", "abc", "acme.email.abc"),
        ("a.b", "shop.send", "x", "a%2Eb.shop%2Esend.x"),  # a dot never splits a word
        ("a#", "k*", "t", "a%23.k%2A.t"),
    ],
)
def test_routing_key_is_tenant_kind_task_one_word_each(tenant, kind, task_id, key):
    assert routing_key(tenant, kind, task_id) == key


def test_an_event_carries_the_task_but_not_where_its_upload_lies():
    body = encode(rec(3))
    assert b"uploads/secret" not in body
    back = decode(body)
    assert (back.task_id, back.seq, back.status, back.source_key) == ("t1", 3, "processing", None)


async def test_changes_reach_the_tasks_and_the_tenants_subscribers_only():
    hub = Hub()
    task = hub.subscribe(Subscription("acme", task_id="t1"))
    other_task = hub.subscribe(Subscription("acme", task_id="t2"))
    tenant = hub.subscribe(Subscription("acme"))
    images_only = hub.subscribe(Subscription("acme", kind="image"))
    globex = hub.subscribe(Subscription("globex"))
    hub.receive(rec(1))
    assert (drain(task), drain(other_task), drain(tenant), drain(images_only), drain(globex)) == ([1], [], [1], [], [])
    hub.unsubscribe(task)
    hub.receive(rec(2))
    assert (drain(task), drain(tenant), hub.subscribers) == ([], [2], 4)


async def test_a_change_that_overtook_the_one_before_it_waits_for_it():
    hub = Hub(reorder_wait=5)
    sub = hub.subscribe(Subscription("acme"))
    hub.receive(rec(2))
    hub.receive(rec(3))
    assert drain(sub) == []
    hub.receive(rec(1))
    hub.receive(rec(2))  # a duplicate: passed on once
    assert drain(sub) == [1, 2, 3]


async def test_a_gap_that_never_fills_is_passed_on_after_the_wait():
    hub = Hub(reorder_wait=0.05)
    sub = hub.subscribe(Subscription("acme"))
    hub.receive(rec(1))
    hub.receive(rec(3))
    assert drain(sub) == [1]
    await asyncio.sleep(0.2)
    hub.receive(rec(2))  # too late: dropped (the task stream re-read the store at the gap)
    assert drain(sub) == [3]


async def test_a_slow_subscriber_gets_resync_instead_of_a_growing_queue():
    hub = Hub()
    slow = hub.subscribe(Subscription("acme", size=4))
    for seq in range(1, 11):
        hub.receive(rec(seq))
    assert slow.queue.qsize() <= 4 and slow.overflows >= 1
    items = drain(slow)
    assert RESYNC in items and items[-1] == 10


async def test_after_the_consumer_rebinds_every_subscriber_resyncs():
    hub = Hub()
    subs = [hub.subscribe(Subscription("acme", task_id="t1")), hub.subscribe(Subscription("globex"))]
    hub.resync_all()
    assert [drain(s) for s in subs] == [[RESYNC], [RESYNC]]


async def test_the_hub_forgets_the_least_recently_changed_tasks_past_its_bound():
    hub = Hub(remembered=2, reorder_wait=5)
    sub = hub.subscribe(Subscription("acme"))
    for task in ("a", "b", "c"):
        hub.receive(rec(1, task_id=task))
    hub.receive(rec(1, task_id="a"))  # forgotten: seq 1 is expected again, so a repeat is passed on
    hub.receive(rec(1, task_id="c"))  # remembered: a repeat is not
    assert drain(sub) == [1, 1, 1, 1]


async def test_a_task_read_from_the_store_needs_no_wait_for_changes_before_it():
    hub = Hub(reorder_wait=5)
    sub = hub.subscribe(Subscription("acme", task_id="t1"))
    hub.known("t1", 4)  # the stream sent the stored state, seq 4: the next change is 5
    hub.receive(rec(5))
    hub.known("t1", 2)  # older knowledge changes nothing
    hub.receive(rec(6))
    assert drain(sub) == [5, 6]


async def test_a_task_read_from_the_store_after_changes_that_never_came_needs_no_wait_either():
    """Its tenant was not bound here for a while (no subscriber): the hub's idea of the next seq is stale."""
    hub = Hub(reorder_wait=5)
    hub.receive(rec(1))  # remembered: 2 is expected next
    sub = hub.subscribe(Subscription("acme", task_id="t1"))
    hub.known("t1", 7)  # changes 2..7 were routed nowhere; the stream read 7 from the store
    hub.receive(rec(8))
    assert drain(sub) == [8]


async def test_each_change_is_encoded_once_however_many_subscribers_send_it():
    hub = Hub()
    subs = [hub.subscribe(Subscription("acme")) for _ in range(50)] + [hub.subscribe(Subscription("acme", "t1"))]
    hub.receive(rec(1))
    made = []
    frames = {s.queue.get_nowait().frame("sse", lambda r: made.append(r.seq) or f"frame {r.seq}") for s in subs}
    assert (frames, made) == ({"frame 1"}, [1])


async def test_a_stream_whose_client_left_gets_closed_even_behind_a_full_buffer():
    hub = Hub()
    sub = hub.subscribe(Subscription("acme", size=2))
    for seq in (1, 2):
        hub.receive(rec(seq))
    sub.close()
    assert await sub.get(1) is CLOSED
