"""Client-side pacing of the operator's own Kubernetes writes: one token bucket with priorities, and a status
queue that coalesces what is not sent yet.

Every write (a replica patch, a status patch, the owned Deployment) takes a token from one `TokenBucket`
(QW_KUBE_QPS, QW_KUBE_BURST) before it goes out, retries included, so a start-up of thousands of QueueWorkers
reaches the apiserver at a pace it accepts instead of as one burst it answers with 429s. Waiters are served by
priority: a replica change (users wait for it) before a status write, before a Deployment template write.

`Slots` keeps at most one write per writer thread in flight, so a token always means a write about to be sent
(not one queued behind thousands in the threads' queue), and priority holds all the way to the apiserver.

`StatusQueue` keeps at most one status write per QueueWorker in flight and one pending behind it: a newer patch
for the same object merges over the pending one (latest wins), so a QueueWorker ticking while its write waits
for a token costs one write, not one per tick, and writes of one object never overtake each other.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

SCALE, STATUS, TEMPLATE = 0, 1, 2  # priorities: lower goes first


class TokenBucket:
    """`qps` tokens a second, at most `burst` saved up; `acquire(priority)` waits its turn. qps <= 0: no limit."""

    def __init__(self, qps: float, burst: int, clock: Callable[[], float] = time.monotonic) -> None:
        self.qps = qps
        self.burst = max(1, burst)
        self._clock = clock
        self._tokens = float(self.burst)
        self._updated = clock()
        self._waiters: list[tuple[int, int, asyncio.Future[None]]] = []
        self._seq = itertools.count()
        self._server: asyncio.Task[None] | None = None

    @property
    def waiting(self) -> int:
        return len(self._waiters)

    def _refill(self) -> None:
        now = self._clock()
        self._tokens = min(float(self.burst), self._tokens + (now - self._updated) * self.qps)
        self._updated = now

    async def acquire(self, priority: int = STATUS) -> None:
        if self.qps <= 0:
            return
        self._refill()
        if not self._waiters and self._tokens >= 1:
            self._tokens -= 1
            return
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        heapq.heappush(self._waiters, (priority, next(self._seq), fut))
        if self._server is None or self._server.done():
            self._server = asyncio.create_task(self._serve(), name="kube write pacing")
        await fut

    async def _serve(self) -> None:
        while self._waiters:
            self._refill()
            if self._tokens < 1:
                await asyncio.sleep((1 - self._tokens) / self.qps)
                continue
            _, _, fut = heapq.heappop(self._waiters)
            if not fut.done():  # a cancelled waiter takes no token
                self._tokens -= 1
                fut.set_result(None)


class Slots:
    """At most `n` writes in flight (one per writer thread); waiters served by priority, like the bucket's.

    Without it a token let a write into the writer threads' FIFO queue: when the apiserver answered slower than
    QW_KUBE_QPS (a start-up at 5,000 QueueWorkers: ~70 status writes/s), thousands of status writes queued
    there and a replica change that took its token first still waited behind all of them (24 s measured). A write
    takes a slot first, then its token, and gives the slot back when its call returns."""

    def __init__(self, n: int) -> None:
        self.free = max(1, n)
        self._waiters: list[tuple[int, int, asyncio.Future[None]]] = []
        self._seq = itertools.count()

    @property
    def waiting(self) -> int:
        return len(self._waiters)

    async def acquire(self, priority: int = STATUS) -> None:
        if self.free > 0 and not self._waiters:
            self.free -= 1
            return
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        heapq.heappush(self._waiters, (priority, next(self._seq), fut))
        try:
            await fut
        except asyncio.CancelledError:
            if fut.done() and not fut.cancelled():  # handed a slot, then cancelled: pass it on
                self.release()
            raise

    def release(self) -> None:
        while self._waiters:
            _, _, fut = heapq.heappop(self._waiters)
            if not fut.done():  # a cancelled waiter takes no slot
                fut.set_result(None)
                return
        self.free += 1


Key = tuple[str, str]  # (namespace, name)
Write = Callable[[str, str, Mapping[str, Any]], Awaitable[None]]


class StatusQueue:
    """`submit(ns, name, patch)` returns a future of that patch's write; it does not wait for it."""

    def __init__(self, write: Write) -> None:
        self._write = write  # paced and retried by the caller (Kube.patch_status)
        self._pending: dict[Key, dict[str, Any]] = {}
        self._futures: dict[Key, asyncio.Future[None]] = {}
        self._active: dict[Key, asyncio.Task[None]] = {}

    @property
    def pending(self) -> int:
        return len(self._pending)

    def submit(self, namespace: str, name: str, patch: Mapping[str, Any]) -> asyncio.Future[None]:
        key = (namespace, name)
        self._pending[key] = {**self._pending.get(key, {}), **patch}
        fut = self._futures.get(key)
        if fut is None:
            fut = self._futures[key] = asyncio.get_running_loop().create_future()
        if key not in self._active:
            self._active[key] = asyncio.create_task(self._drain(key), name=f"status {namespace}/{name}")
        return fut

    async def _drain(self, key: Key) -> None:
        try:
            while key in self._pending:
                patch, fut = self._pending.pop(key), self._futures.pop(key)
                try:
                    await self._write(key[0], key[1], patch)
                except asyncio.CancelledError:
                    fut.cancel()
                    raise
                except Exception as exc:  # retries exhausted: the submitter takes it back (Ticker.unwritten)
                    fut.set_exception(exc)
                else:
                    fut.set_result(None)
        finally:
            self._active.pop(key, None)

    async def drain(self, seconds: float) -> int:
        """Wait up to `seconds` for the queued writes to finish; how many were still queued then."""
        deadline = asyncio.get_running_loop().time() + seconds
        while self._active and (left := deadline - asyncio.get_running_loop().time()) > 0:
            await asyncio.wait(list(self._active.values()), timeout=left)
        return len(self._active)

    async def stop(self) -> None:
        tasks = list(self._active.values())
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
