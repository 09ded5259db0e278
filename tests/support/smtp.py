"""A real SMTP server (aiosmtpd) on 127.0.0.1 (or another local address) for tests: it collects what it accepts
and can answer 451/550.

Failures are scripted server behaviour (a real server answering so over a real socket), not mocks.
"""

from __future__ import annotations

import asyncio
import email
import email.policy
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from email.message import EmailMessage
from typing import Any

from aiosmtpd.controller import Controller

from tests.support.workers import free_port

OK = "250 OK"


class Recorder:
    """`data_replies` are answered to DATA in order, then `data_default`; `rcpt_reply` answers every RCPT;
    `delay` seconds pass before each DATA reply (a remote server's latency)."""

    def __init__(
        self, data_replies: list[str] | None = None, data_default: str = OK, rcpt_reply: str = OK, delay: float = 0.0
    ) -> None:
        self.delay = delay
        self.data_replies = list(data_replies or [])
        self.data_default = data_default
        self.rcpt_reply = rcpt_reply
        self.accepted: list[tuple[str, list[str], bytes]] = []
        self.accepted_at: list[float] = []  # time.time() of each accepted message, in order
        self.received_at: list[float] = []  # ... and of the end of its data reaching the server, before `delay`
        self.data_attempts = 0
        self._lock = threading.Lock()

    async def handle_RCPT(self, server: Any, session: Any, envelope: Any, address: str, rcpt_options: Any) -> str:  # noqa: N802
        if self.rcpt_reply.startswith("250"):
            envelope.rcpt_tos.append(address)
        return self.rcpt_reply

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:  # noqa: N802
        received = time.time()
        if self.delay:
            await asyncio.sleep(self.delay)
        with self._lock:
            self.data_attempts += 1
            reply = self.data_replies.pop(0) if self.data_replies else self.data_default
            if reply.startswith("250"):
                self.accepted.append((envelope.mail_from, list(envelope.rcpt_tos), bytes(envelope.original_content)))
                self.accepted_at.append(time.time())
                self.received_at.append(received)
        return reply

    def messages(self) -> list[EmailMessage]:
        with self._lock:
            raw = [m[2] for m in self.accepted]
        return [email.message_from_bytes(r, policy=email.policy.default) for r in raw]  # type: ignore[misc]


@contextmanager
def smtp_server(host: str = "127.0.0.1", **recorder: Any) -> Iterator[tuple[int, Recorder]]:
    """Yields (port, recorder) of a running server on host (a local address: 127.0.0.1, or e.g. a real node's
    bridge gateway for pods); stops it afterwards."""
    handler = Recorder(**recorder)
    port = free_port()
    controller = Controller(handler, hostname=host, port=port)
    controller.start()
    try:
        yield port, handler
    finally:
        controller.stop()
