"""Publishes task messages with publisher confirms from the event loop, never blocking it.

Design: pika's AsyncioConnection on the API's own event loop (the connection and channel helpers are
qw_core.aio_publishing's, which the SDK's async client uses too). Many publishes are in flight at once on one
channel; each waits on a plain future, matched to the broker's `basic.ack`/`basic.nack` by delivery tag (the
channel numbers its publishes 1, 2, ... once confirms are on; `multiple` settles every tag up to the one named).
A `basic.return` (unroutable; it comes before the message's ack) marks the message id so its ack fails it.
This replaced aio-pika, whose per-message cost (a Message object, a task hand-off to its writer, a future chain
per confirm) was most of the AMQP share of a request: bench/broker_pipelined.py measures both side by side.

Confirm timeouts: the confirm timeout is the same for every publish, so deadlines grow with the tag; one timer
sweeps the oldest pending publishes (every quarter of the timeout, while any are pending) instead of a timer per
message: a publish fails at most a quarter of the timeout late.

A supervisor task owns the connection: it connects, declares the topology, and when the connection
drops it reconnects with capped exponential backoff. While disconnected, `publish` fails at once
with `PublishUnavailable` (the API answers 503 + Retry-After) instead of queueing work in memory;
a connection lost with publishes in flight fails each of them (the caller withdraws its row).

On a cluster (several nodes in QW_RABBITMQ_URL, or a name with several addresses) every (re)connect tries the
nodes in turn, in qw_core.brokers' per-process random order with the node just lost last: API replicas spread
over the nodes, and a dead node costs one refused connection, not a backoff.
"""

from __future__ import annotations

import asyncio
import logging
import random
import struct
from collections.abc import Sequence
from typing import Any, cast

import pika
import pika.exceptions
import pika.frame
import pika.spec
from pika.adapters.asyncio_connection import AsyncioConnection
from pika.channel import Channel
from qw_core.aio_publishing import declare, open_channel, open_connection, rpc
from qw_core.brokers import connect_order, parse_urls, redact
from qw_core.topology import H_ATTEMPT, Topology

log = logging.getLogger(__name__)
OPEN_TIMEOUT = 5.0  # seconds to connect to one node and set its channel up
_PERSISTENT = pika.DeliveryMode.Persistent.value
_FRAME = struct.Struct(">BHI")  # frame type, channel, payload size
_HEADER_PAYLOAD = struct.Struct(">HxxQ")  # class (60: basic), weight (0), body size
_FRAME_END = bytes((pika.spec.FRAME_END,))


class PublishUnavailable(Exception):
    """The broker did not take the message (down, not confirming, nacked, or unroutable)."""


class MessageTooLarge(Exception):
    """The body is over the broker's message size limit: refused here, before it can close the shared channel."""

    def __init__(self, size: int, limit: int) -> None:
        super().__init__(f"the message would be {size} bytes; the broker accepts at most {limit} bytes per message")
        self.size, self.limit = size, limit


class _OneWritePerMessage(AsyncioConnection):
    """pika's AsyncioConnection handing a message's frames (method, header, body) to its transport as one buffer:
    one write and one send() per publish instead of three. (`_output_marshaled_frames` is pika 1.x's one place
    where marshalled frames go out; the frames are the same bytes.)"""

    def _output_marshaled_frames(self, marshaled_frames: Sequence[bytes]) -> None:
        if len(marshaled_frames) > 1:
            marshaled_frames = [b"".join(marshaled_frames)]
        super()._output_marshaled_frames(marshaled_frames)

    def send_frames(self, frames: bytes) -> None:
        """Marshalled frames (PublishFrames), as one write."""
        if self.is_closed:
            raise pika.exceptions.ConnectionWrongStateError("Attempted to send a frame on closed connection.")
        super()._output_marshaled_frames([frames])


class PublishFrames:
    """The frames of a task's publish (method, content header, body), marshalled here instead of by pika's
    generic encoders (a third of our publisher's CPU per message): every task message has the same properties but
    its id (persistent, JSON, `x-qw-attempt: 0`, no other header), so the header frame is a constant prefix, the
    body's size and the id; the method frame depends only on the exchange and routing key. The bytes are pika's
    own for the same publish (tests/unit/test_publish_frames.py compares them); any other message (more headers,
    a body over one frame) goes through pika's basic_publish."""

    def __init__(self, channel_number: int, body_max: int) -> None:
        self.channel_number = channel_number
        self.body_max = body_max  # the connection's frame_max less a frame's header and end
        props = pika.BasicProperties(
            message_id="", content_type="application/json", delivery_mode=_PERSISTENT, headers={H_ATTEMPT: 0}
        )
        # message_id is the last property set: its length byte and text end the header frame's payload
        self._props_prefix = b"".join(props.encode())[:-1]
        self._methods: dict[tuple[str, str], bytes] = {}

    def marshal(self, exchange: str, routing_key: str, body: bytes, message_id: str) -> bytes | None:
        """The publish's frames, or None when this message is not of the common shape (pika's path then)."""
        mid = message_id.encode()
        if len(body) > self.body_max or len(mid) > 255:
            return None
        method = self._methods.get((exchange, routing_key))
        if method is None:
            if len(self._methods) >= 1024:  # routing keys are kinds and delay steps: few; bounded anyway
                self._methods.clear()
            publish = pika.spec.Basic.Publish(exchange=exchange, routing_key=routing_key, mandatory=True)
            method = self._methods[(exchange, routing_key)] = pika.frame.Method(self.channel_number, publish).marshal()
        ch = self.channel_number
        header = _HEADER_PAYLOAD.pack(60, len(body)) + self._props_prefix + bytes((len(mid),)) + mid
        parts = [method, _FRAME.pack(2, ch, len(header)), header, _FRAME_END]
        if body:
            parts += (_FRAME.pack(3, ch, len(body)), body, _FRAME_END)
        return b"".join(parts)


class Publisher:
    def __init__(
        self, url: str, topology: Topology, confirm_timeout: float = 5.0, max_message_bytes: int = 16 * 1024 * 1024
    ) -> None:
        self.max_message_bytes = max_message_bytes
        self.url = url
        self.urls = parse_urls(url)  # one node, or the comma-separated nodes of a cluster
        self._rng = random.Random()  # spreads API processes over the broker nodes
        self._node: str | None = None  # the node the current (or last) connection went to
        self._lost: str | None = None  # the node whose connection just dropped: tried last next time
        self.topology = topology
        self.confirm_timeout = confirm_timeout
        self._conn: _OneWritePerMessage | None = None
        self._ch: Channel | None = None
        self._frames: PublishFrames | None = None  # the channel's publish frames, marshalled here
        self._tag = 0  # the delivery tag of the last publish on the channel
        self._pending: dict[int, tuple[asyncio.Future[None], str, float]] = {}  # tag -> (future, message id, deadline)
        self._returned: set[str] = set()  # message ids returned unroutable, awaiting their confirm
        self._sweeper: asyncio.TimerHandle | None = None
        self._ready = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._stopping = False

    @property
    def connected(self) -> bool:
        return self._ready.is_set() and self._ch is not None and self._ch.is_open

    async def start(self) -> None:
        self._task = asyncio.create_task(self._supervise(), name="amqp-publisher")

    async def wait_connected(self, seconds: float) -> bool:
        try:
            await asyncio.wait_for(self._ready.wait(), seconds)
            return True
        except TimeoutError:
            return False

    async def stop(self) -> None:
        self._stopping = True
        if self._task:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass

    async def publish(
        self,
        exchange: str,
        routing_key: str,
        body: bytes,
        message_id: str,
        headers: dict[str, Any] | None = None,
    ) -> None:
        """Return only once the broker confirmed a persistent, routed message; raise otherwise."""
        # RabbitMQ answers an oversize body (4.x: over 16 MiB) with 406 and closes the channel, which fails every
        # other publish in flight on it: every caller's message passes this check first.
        if len(body) > self.max_message_bytes:
            raise MessageTooLarge(len(body), self.max_message_bytes)
        ch, conn, frames = self._ch, self._conn, self._frames
        if ch is None or conn is None or frames is None or not self._ready.is_set() or not ch.is_open:
            raise PublishUnavailable("the message broker is not reachable")
        loop = asyncio.get_running_loop()
        confirmed: asyncio.Future[None] = loop.create_future()
        try:
            raw = None if headers else frames.marshal(exchange, routing_key, body, message_id)
            if raw is not None:
                conn.send_frames(raw)
            else:
                props = pika.BasicProperties(
                    message_id=message_id,
                    content_type="application/json",
                    delivery_mode=_PERSISTENT,
                    headers={H_ATTEMPT: 0, **headers} if headers else {H_ATTEMPT: 0},
                )
                ch.basic_publish(exchange, routing_key, body, props, mandatory=True)
        except (pika.exceptions.AMQPError, OSError) as exc:
            raise PublishUnavailable(f"the broker connection failed ({type(exc).__name__})") from exc
        self._tag += 1
        self._pending[self._tag] = (confirmed, message_id, loop.time() + self.confirm_timeout)
        if self._sweeper is None:
            self._sweeper = loop.call_later(self.confirm_timeout / 4, self._sweep)
        await confirmed

    # --- confirms (pika's callbacks, on the loop) --------------------------------------------------------------

    def _on_confirm(self, frame: Any) -> None:
        method = frame.method
        nack = isinstance(method, pika.spec.Basic.Nack)
        last = method.delivery_tag
        if method.multiple:
            tags = []
            for tag in self._pending:  # in tag order
                if tag > last:
                    break
                tags.append(tag)
        else:
            tags = [last]
        for tag in tags:
            entry = self._pending.pop(tag, None)
            if entry is None:  # timed out already
                continue
            fut, message_id, _ = entry
            returned = bool(self._returned) and message_id in self._returned
            if returned:
                self._returned.discard(message_id)
            if fut.done():
                continue
            if nack:
                fut.set_exception(PublishUnavailable("the broker refused the message (nacked, probably a full queue)"))
            elif returned:
                fut.set_exception(PublishUnavailable("the broker refused the message (unroutable)"))
            else:
                fut.set_result(None)

    def _on_return(self, _ch: Any, _method: Any, props: Any, _body: bytes) -> None:
        if props.message_id:
            self._returned.add(props.message_id)

    def _sweep(self) -> None:
        """Fail the publishes whose confirm is overdue (the oldest first: deadlines grow with the tag)."""
        self._sweeper = None
        now = asyncio.get_running_loop().time()
        while self._pending:
            tag, (fut, message_id, deadline) = next(iter(self._pending.items()))
            if deadline > now:
                break
            del self._pending[tag]
            self._returned.discard(message_id)
            if not fut.done():
                fut.set_exception(PublishUnavailable("the broker did not confirm the message in time"))
        if self._pending:
            self._sweeper = asyncio.get_running_loop().call_later(self.confirm_timeout / 4, self._sweep)

    def _fail_pending(self, why: str) -> None:
        pending, self._pending = self._pending, {}
        self._returned.clear()
        for fut, _, _ in pending.values():
            if not fut.done():
                fut.set_exception(PublishUnavailable(f"the broker connection failed ({why})"))

    # --- the connection ----------------------------------------------------------------------------------------

    async def _supervise(self) -> None:
        delay = 0.2
        loop = asyncio.get_running_loop()
        while not self._stopping:
            closed: asyncio.Future[str] = loop.create_future()

            def on_close(_what: Any, reason: BaseException, closed: asyncio.Future[str] = closed) -> None:
                if not closed.done():
                    closed.set_result(type(reason).__name__)

            try:
                conn = await self._connect()
                conn.add_on_close_callback(on_close)
                self._conn = conn
                ch = await asyncio.wait_for(open_channel(conn), OPEN_TIMEOUT)
                ch.add_on_close_callback(on_close)
                ch.add_on_return_callback(self._on_return)
                await asyncio.wait_for(rpc(ch, ch.confirm_delivery, self._on_confirm), OPEN_TIMEOUT)
                await declare(conn, self.topology)
                self._frames = PublishFrames(ch.channel_number, conn._body_max_length)
                self._ch, self._tag = ch, 0
                self._ready.set()
                log.info("publisher connected to the broker at %s", redact(self._node or ""))
                delay = 0.2
                why = await closed
                log.warning("publisher lost the broker connection (%s); reconnecting", why)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning("broker connection failed (%r); retrying in %.1fs", exc, delay)
            finally:
                self._ready.clear()
                self._lost = self._node
                self._ch = self._frames = None
                self._fail_pending("connection lost")
                lost, self._conn = self._conn, None
                if lost is not None:
                    await _close(lost)
            await asyncio.sleep(delay * (0.5 + random.random()))
            delay = min(delay * 2, 5.0)

    async def _connect(self) -> _OneWritePerMessage:
        """A connection to the first node in this round's order that answers."""
        failures = []
        for url in connect_order(self.urls, self._rng, self._lost):
            params = pika.URLParameters(url)
            params.connection_attempts = 1
            params.socket_timeout = OPEN_TIMEOUT
            params.client_properties = {"connection_name": "qw-api"}
            try:
                conn = cast(
                    _OneWritePerMessage,
                    await asyncio.wait_for(open_connection(params, _OneWritePerMessage), OPEN_TIMEOUT),
                )
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                failures.append(f"{redact(url)}: {type(exc).__name__}")
                continue
            self._node = url
            return conn
        raise ConnectionError("no broker node answered: " + "; ".join(failures))


async def _close(conn: AsyncioConnection, wait: float = 2.0) -> None:
    """Close `conn` if open and give the broker's close-ok a moment (a clean close, not a dropped socket)."""
    if conn.is_closed or conn.is_closing:
        return
    closed = asyncio.Event()
    conn.add_on_close_callback(lambda *_: closed.set())
    try:
        conn.close()
    except Exception:  # noqa: S110 - already broken; reconnecting anyway
        return
    try:
        await asyncio.wait_for(closed.wait(), wait)
    except TimeoutError:
        pass
