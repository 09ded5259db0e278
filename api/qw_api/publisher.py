"""Publishes task messages with publisher confirms from the event loop, never blocking it.

Design: aio-pika (an asyncio AMQP client) on the API's own event loop. Each publish awaits its own
broker confirm, and many publishes are in flight at once on one channel, so throughput does not pay
a round trip per request the way the seed guide's connection-per-request pattern does. A pika
BlockingConnection would block the loop and is not thread-safe; a publisher thread would need a
hand-off queue and futures to get the confirm back, which is what aio-pika already is.

A supervisor task owns the connection: it connects, declares the topology, and when the connection
drops it reconnects with capped exponential backoff. While disconnected, `publish` fails at once
with `PublishUnavailable` (the API answers 503 + Retry-After) instead of queueing work in memory.

On a cluster (several nodes in QW_RABBITMQ_URL, or a name with several addresses) every (re)connect tries the
nodes in turn, in qw_core.brokers' per-process random order with the node just lost last: API replicas spread
over the nodes, and a dead node costs one refused connection, not a backoff.
"""

from __future__ import annotations

import asyncio
import logging
import random
from typing import Any

import aio_pika
from aio_pika.abc import AbstractChannel, AbstractConnection, AbstractExchange
from pamqp.commands import Basic
from qw_core import delays as ladder
from qw_core.brokers import connect_order, parse_urls, redact
from qw_core.topology import H_ATTEMPT, NOTIFICATIONS_EXCHANGE, TASKS_EXCHANGE, Topology, declare_with_aio_pika

log = logging.getLogger(__name__)


class PublishUnavailable(Exception):
    """The broker did not take the message (down, not confirming, nacked, or unroutable)."""


class MessageTooLarge(Exception):
    """The body is over the broker's message size limit: refused here, before it can close the shared channel."""

    def __init__(self, size: int, limit: int) -> None:
        super().__init__(f"the message would be {size} bytes; the broker accepts at most {limit} bytes per message")
        self.size, self.limit = size, limit


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
        self._connection: AbstractConnection | None = None
        self._channel: AbstractChannel | None = None
        self._exchanges: dict[str, AbstractExchange] = {}
        self._ready = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._stopping = False

    @property
    def connected(self) -> bool:
        return self._ready.is_set() and self._channel is not None and not self._channel.is_closed

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
        if self._connection and not self._connection.is_closed:
            await self._connection.close()

    async def _supervise(self) -> None:
        delay = 0.2
        while not self._stopping:
            closed = asyncio.Event()
            try:
                conn = await self._connect()
                on_close = _setter(closed)
                conn.close_callbacks.add(on_close)
                channel = await conn.channel(publisher_confirms=True, on_return_raises=True)
                channel.close_callbacks.add(on_close)
                await declare_with_aio_pika(conn, self.topology)
                self._exchanges = {
                    name: await channel.get_exchange(name, ensure=False)
                    for name in (TASKS_EXCHANGE, NOTIFICATIONS_EXCHANGE, ladder.ENTRY_EXCHANGE)
                }
                self._connection, self._channel = conn, channel
                self._ready.set()
                log.info("publisher connected to the broker at %s", redact(self._node or ""))
                delay = 0.2
                await closed.wait()
                log.warning("publisher lost the broker connection; reconnecting")
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning("broker connection failed (%s); retrying in %.1fs", exc, delay)
            finally:
                self._ready.clear()
                self._lost = self._node
                if self._connection is not None and not self._connection.is_closed:
                    try:
                        await self._connection.close()
                    except Exception:  # noqa: S110 - already broken; reconnecting anyway
                        pass
                self._connection = self._channel = None
            await asyncio.sleep(delay * (0.5 + random.random()))
            delay = min(delay * 2, 5.0)

    async def _connect(self) -> AbstractConnection:
        """A connection to the first node in this round's order that answers."""
        failures = []
        for url in connect_order(self.urls, self._rng, self._lost):
            try:
                conn = await aio_pika.connect(url, timeout=5, client_properties={"connection_name": "qw-api"})
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                failures.append(f"{redact(url)}: {type(exc).__name__}")
                continue
            self._node = url
            return conn
        raise ConnectionError("no broker node answered: " + "; ".join(failures))

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
        ex = self._exchanges.get(exchange)
        if not self.connected or ex is None:
            raise PublishUnavailable("the message broker is not reachable")
        message = aio_pika.Message(
            body,
            message_id=message_id,
            content_type="application/json",
            delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
            headers={H_ATTEMPT: 0, **(headers or {})},
        )
        try:
            confirmation = await ex.publish(message, routing_key, mandatory=True, timeout=self.confirm_timeout)
        except aio_pika.exceptions.DeliveryError as exc:
            raise PublishUnavailable(f"the broker refused the message ({_describe(exc)})") from exc
        except TimeoutError as exc:
            raise PublishUnavailable("the broker did not confirm the message in time") from exc
        except (aio_pika.exceptions.AMQPError, ConnectionError, RuntimeError) as exc:
            raise PublishUnavailable(f"the broker connection failed ({type(exc).__name__})") from exc
        if not isinstance(confirmation, Basic.Ack):
            raise PublishUnavailable(f"the broker did not acknowledge the message ({type(confirmation).__name__})")


def _setter(event: asyncio.Event) -> Any:
    def on_close(*_: Any) -> None:
        event.set()

    return on_close


def _describe(exc: aio_pika.exceptions.DeliveryError) -> str:
    frame = getattr(exc, "frame", None)
    if frame is not None and type(frame).__name__ == "Return":
        return "unroutable"
    return "nacked, probably a full queue"
