"""What image uploads may hold at once in one API process, so parallel uploads of the largest accepted image stay
inside the pod's memory limit (and its /tmp) instead of getting it OOM-killed.

Two budgets, each a FIFO weighted semaphore of bytes:
- bodies: the declared Content-Length (the largest allowed when undeclared) of every upload being received,
  spooled (the multipart parser writes parts over 1 MiB to /tmp), checked and streamed to the store from there
  (never read whole into memory; on S3 one 8 MiB part at a time);
- checking: what the bounded check of every image being validated allocates, estimated from its header
  (qw_core.images: a PNG's largest chunk at most the file, a JPEG at 1/8 scale plus libjpeg's coefficient buffer
  when multi-scan, a GIF's first frame). The API never decodes fully: a 40-megapixel RGBA PNG would take 160 MB.
Two, not one: a request holds its body bytes while it waits for its check, so one shared pool could fill with bodies
that all wait for check room no one can free.

A request heavier than a whole budget is capped at it (it runs alone). A request that cannot get its bytes within
`upload_wait_seconds` gets 503 + Retry-After: the client retries later, nothing was stored or queued.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import AbstractAsyncContextManager, asynccontextmanager


class Busy(Exception):
    """No room within the wait: the caller answers 503 + Retry-After."""


class ByteBudget:
    """An asyncio weighted semaphore of `total` bytes, served first come first served (a large request is not
    starved by a stream of small ones)."""

    def __init__(self, total: int) -> None:
        self.total = total
        self.free = total
        self._cond = asyncio.Condition()
        self._next_ticket = 0
        self._head = 0  # the ticket allowed to take bytes next
        self._gone: set[int] = set()  # tickets that gave up before their turn

    def _advance(self) -> None:
        self._head += 1
        while self._head in self._gone:
            self._gone.discard(self._head)
            self._head += 1

    @asynccontextmanager
    async def hold(self, nbytes: int, wait_seconds: float) -> AsyncIterator[None]:
        n = max(0, min(nbytes, self.total))
        async with self._cond:
            ticket = self._next_ticket
            self._next_ticket += 1
            my_turn = lambda: self._head == ticket and self.free >= n  # noqa: E731
            try:
                await asyncio.wait_for(self._cond.wait_for(my_turn), wait_seconds)
            except BaseException as exc:  # timed out or cancelled (client gone): leave the line
                if self._head == ticket:
                    self._advance()
                    self._cond.notify_all()
                else:
                    self._gone.add(ticket)
                if isinstance(exc, TimeoutError):
                    raise Busy from None
                raise
            self.free -= n
            self._advance()
            self._cond.notify_all()
        try:
            yield
        finally:
            async with self._cond:
                self.free += n
                self._cond.notify_all()


class UploadLimits:
    def __init__(self, body_bytes: int, check_bytes: int, wait_seconds: float, max_upload_bytes: int) -> None:
        self.bodies = ByteBudget(body_bytes)
        self.checking = ByteBudget(check_bytes)
        self.wait_seconds = wait_seconds
        self.max_upload_bytes = max_upload_bytes

    def body(self, content_length: str | None) -> AbstractAsyncContextManager[None]:
        declared = int(content_length) if content_length and content_length.isdigit() else self.max_upload_bytes
        return self.bodies.hold(min(declared, self.max_upload_bytes), self.wait_seconds)

    def check(self, nbytes: int) -> AbstractAsyncContextManager[None]:
        return self.checking.hold(nbytes, self.wait_seconds)
