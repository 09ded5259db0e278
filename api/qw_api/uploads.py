"""What image uploads may hold at once in one API process, so parallel uploads of the largest accepted image stay
inside the pod's memory limit (and its /tmp) instead of getting it OOM-killed.

Two budgets, each a FIFO weighted semaphore of bytes:
- bodies: the declared Content-Length (the largest allowed when undeclared) of every upload being received,
  spooled (the multipart parser writes parts over 1 MiB to /tmp) and read into memory;
- decoding: the decoded size (width x height x bands, from the header) of every image being verified by a full
  decode. A 40-megapixel RGBA image takes 160 MB decoded: without this, eight at once need 1.3 GB.
Two, not one: a request holds its body bytes while it waits to decode, so one shared pool could fill with bodies
that all wait for decode room no one can free.

A request heavier than a whole budget is capped at it (it runs alone). A request that cannot get its bytes within
`upload_wait_seconds` gets 503 + Retry-After: the client retries later, nothing was stored or queued.
"""

from __future__ import annotations

import asyncio
import io
from collections.abc import AsyncIterator
from contextlib import AbstractAsyncContextManager, asynccontextmanager

from PIL import Image


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


def decoded_size(data: bytes, formats: list[str] | tuple[str, ...]) -> int:
    """Bytes a full decode of `data` allocates, from its header alone (0 when the header is unreadable: the
    decode that follows refuses the file anyway)."""
    try:
        with Image.open(io.BytesIO(data), formats=[f.upper() for f in formats]) as img:
            w, h = img.size
            return w * h * max(1, len(img.getbands()))
    except Exception:  # noqa: BLE001 - any header the decoder cannot read is refused by identify() next
        return 0


class UploadLimits:
    def __init__(self, body_bytes: int, decode_bytes: int, wait_seconds: float, max_upload_bytes: int) -> None:
        self.bodies = ByteBudget(body_bytes)
        self.decoding = ByteBudget(decode_bytes)
        self.wait_seconds = wait_seconds
        self.max_upload_bytes = max_upload_bytes

    def body(self, content_length: str | None) -> AbstractAsyncContextManager[None]:
        declared = int(content_length) if content_length and content_length.isdigit() else self.max_upload_bytes
        return self.bodies.hold(min(declared, self.max_upload_bytes), self.wait_seconds)

    def decode(self, data: bytes, formats: list[str] | tuple[str, ...]) -> AbstractAsyncContextManager[None]:
        return self.decoding.hold(decoded_size(data, formats), self.wait_seconds)
