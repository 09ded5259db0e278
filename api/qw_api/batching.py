"""Group commit: concurrent requests' store writes go to the database together, one thread hop per batch.

While one batch is being written, the next one fills up, so under load each request pays a share of a
transaction instead of a whole one; a lone request is written at once (no timer, no added latency).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from typing import Generic, TypeVar

from starlette.concurrency import run_in_threadpool

T = TypeVar("T")


class WriteBatcher(Generic[T]):
    def __init__(self, write_many: Callable[[Sequence[T]], object], max_batch: int = 256) -> None:
        self._write_many = write_many
        self._max = max_batch
        self._items: list[tuple[T, asyncio.Future[None]]] = []
        self._flushing = False

    async def write(self, item: T) -> None:
        """Returns once `item` is committed; raises what the batch's write raised."""
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._items.append((item, fut))
        if not self._flushing:
            self._flushing = True
            asyncio.create_task(self._flush())
        await fut

    async def _flush(self) -> None:
        try:
            while self._items:
                batch, self._items = self._items[: self._max], self._items[self._max :]
                try:
                    await run_in_threadpool(self._write_many, [item for item, _ in batch])
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
