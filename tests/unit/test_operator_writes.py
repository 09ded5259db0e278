"""The operator's own writes are paced by one token bucket (replica changes first) and a QueueWorker's status
writes queue one behind the other, the pending one merged with newer patches (latest wins)."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from typing import Any

from kubernetes import client as k8s
from kubernetes.client.rest import ApiException
from qw_operator.scaler import Kube
from qw_operator.writes import SCALE, STATUS, TEMPLATE, StatusQueue, TokenBucket


async def test_waiting_writes_go_out_by_priority_then_in_order() -> None:
    # A token every 250 ms: all four must be waiting before the next one comes, also on a busy machine (at 50/s a
    # 20 ms pause before the gather let status-1 take a fresh token on arrival, ahead of scale).
    bucket = TokenBucket(qps=4, burst=1)
    await bucket.acquire(STATUS)  # the one saved-up token: the rest wait for the refill
    order: list[str] = []

    async def write(name: str, priority: int) -> None:
        await bucket.acquire(priority)
        order.append(name)

    await asyncio.gather(
        write("status-1", STATUS), write("template", TEMPLATE), write("status-2", STATUS), write("scale", SCALE)
    )
    assert order == ["scale", "status-1", "status-2", "template"]


async def test_the_bucket_holds_writes_to_its_rate() -> None:
    """20 writes at 40/s with a burst of 5: the 15 beyond the burst take at least 15/40 s."""
    bucket = TokenBucket(qps=40, burst=5)
    loop = asyncio.get_running_loop()
    start = loop.time()
    await asyncio.gather(*(bucket.acquire(STATUS) for _ in range(20)))
    assert loop.time() - start >= 15 / 40 * 0.9  # a lower bound only: a busy machine is slower, never faster


async def test_status_patches_queued_behind_a_write_in_flight_merge_latest_wins() -> None:
    release = asyncio.Event()
    written: list[dict[str, Any]] = []

    async def write(namespace: str, name: str, patch: Mapping[str, Any]) -> None:
        written.append(dict(patch))
        if len(written) == 1:
            await release.wait()

    q = StatusQueue(write)
    first = q.submit("ns", "w", {"replicas": 1, "reason": "a"})
    await asyncio.sleep(0)  # the first write is in flight
    second = q.submit("ns", "w", {"replicas": 2, "reason": "b"})
    third = q.submit("ns", "w", {"reason": "c"})
    other = q.submit("ns", "v", {"replicas": 7})
    assert second is third  # one pending write per QueueWorker
    await other
    release.set()
    await asyncio.gather(first, second)
    mine = [p for p in written if p.get("replicas") != 7]
    assert mine == [{"replicas": 1, "reason": "a"}, {"replicas": 2, "reason": "c"}]


async def test_drain_waits_for_the_queued_writes_but_not_past_its_timeout() -> None:
    stuck = asyncio.Event()
    written: list[str] = []

    async def write(namespace: str, name: str, patch: Mapping[str, Any]) -> None:
        await asyncio.sleep(0.01)
        if name == "stuck":
            await stuck.wait()
        written.append(name)

    q = StatusQueue(write)
    for name in ("a", "b", "c"):
        q.submit("ns", name, {"replicas": 1})
    assert await q.drain(5) == 0 and sorted(written) == ["a", "b", "c"]
    q.submit("ns", "stuck", {"replicas": 1})
    q.submit("ns", "d", {"replicas": 1})
    assert await q.drain(0.2) == 1 and "d" in written  # it gave up on the stuck one at its timeout
    await q.stop()


async def test_a_status_write_that_failed_fails_its_future() -> None:
    async def write(namespace: str, name: str, patch: Mapping[str, Any]) -> None:
        raise ApiException(status=403, reason="Forbidden")

    fut = StatusQueue(write).submit("ns", "w", {"replicas": 1})
    try:
        await fut
    except ApiException as exc:
        assert exc.status == 403
    else:
        raise AssertionError("the write's failure was not passed on")


async def test_every_429_is_counted_and_each_retry_takes_a_token() -> None:
    """A fake apiserver (a 429 on demand cannot be made cheaply on the real one: see test_operator_kube_retry)."""
    calls: list[Any] = []

    def patch(*args: Any, **kwargs: Any) -> dict[str, Any]:
        calls.append(args)
        if len(calls) < 3:
            raise ApiException(status=429, reason="Too Many Requests")
        return {}

    throttled: list[int] = []
    bucket = TokenBucket(qps=1000, burst=100, clock=lambda: 0.0)  # a stopped clock: no refill
    k = Kube(k8s.ApiClient(k8s.Configuration(host="http://127.0.0.1:1")), bucket=bucket,
             on_throttled=lambda: throttled.append(1))  # fmt: skip
    k.custom.patch_namespaced_custom_object_status = patch  # type: ignore[method-assign]

    async def no_sleep(seconds: float) -> None:
        pass

    k.sleep = no_sleep
    await k.queue_status("ns", "w", {"replicas": 1})
    assert len(calls) == 3 and len(throttled) == 2
    assert bucket._tokens == 97  # one token per attempt
