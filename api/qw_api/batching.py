"""Group commit: concurrent requests' store writes go to the database together, one thread hop per batch.

While one batch is being written, the next one fills up, so under load each request pays a share of a
transaction instead of a whole one; a lone request is written at once (no timer, no added latency).

Batches run on one thread of their own (a single-thread executor: one batch at a time anyway, and cheaper than
a hop through the shared AnyIO pool). The API's two row writes, a new task's pending row (before its publish)
and a published task's queued mark (after the confirm), share one batcher (`RowWriter`): one transaction and
one hop per batch for both.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Generic, TypeVar

from qw_core.store import PendingRow, TaskStore

T = TypeVar("T")


class WriteBatcher(Generic[T]):
    def __init__(self, write_many: Callable[[Sequence[T]], object], max_batch: int = 256) -> None:
        self._write_many = write_many
        self._max = max_batch
        self._items: list[tuple[T, asyncio.Future[None]]] = []
        self._flushing = False
        self._thread = ThreadPoolExecutor(1, thread_name_prefix="qw-store-writes")

    async def write(self, item: T) -> None:
        """Returns once `item` is committed; raises what the batch's write raised."""
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._items.append((item, fut))
        if not self._flushing:
            self._flushing = True
            asyncio.create_task(self._flush())
        await fut

    def close(self) -> None:
        self._thread.shutdown(wait=False)

    async def _flush(self) -> None:
        loop = asyncio.get_running_loop()
        try:
            while self._items:
                batch, self._items = self._items[: self._max], self._items[self._max :]
                try:
                    await loop.run_in_executor(self._thread, self._write_many, [item for item, _ in batch])
                except Exception as exc:
                    for _, fut in batch:
                        if not fut.done():
                            fut.set_exception(exc)
                else:
                    for _, fut in batch:
                        if not fut.done():
                            fut.set_result(None)
        finally:
            self._flushing = False


class RowWriter:
    """The API's accept-path rows, group-committed together: `create_pending` and `confirm_queued`."""

    def __init__(self, store: TaskStore, max_batch: int = 256) -> None:
        self.store = store
        self._batcher: WriteBatcher[PendingRow | str] = WriteBatcher(self._write, max_batch)

    async def create_pending(self, row: PendingRow) -> None:
        """(task_id, tenant, kind, source_key, not_before): committed, still invisible (qw_core.store)."""
        await self._batcher.write(row)

    async def confirm_queued(self, task_id: str) -> None:
        await self._batcher.write(task_id)

    def close(self) -> None:
        self._batcher.close()

    def _write(self, items: Sequence[PendingRow | str]) -> None:
        pending = [item for item in items if not isinstance(item, str)]
        queued = [item for item in items if isinstance(item, str)]
        self.store.write_api_rows(pending, queued)
