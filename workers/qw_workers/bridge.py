"""The bridge from task threads to the I/O thread: the `Channel` the settle machine talks to, over pika.

pika's BlockingConnection may only be touched from the thread that owns it, so a worker thread's ack, nack or
publish is queued to the I/O thread with `add_callback_threadsafe` and the worker thread waits for its result.
Each connection gets a new generation; a delivery carries the generation it came on, and a call for an older
one raises ConnectionLost instead of acking a tag that now means another message (the broker redelivers it).
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from concurrent.futures import Future
from typing import Any, TypeVar

import pika
import pika.exceptions

from qw_workers.middleware import Delivery
from qw_workers.settle import ConnectionLost

T = TypeVar("T")
IO_TIMEOUT = 60.0


class IoBridge:
    """Implements settle.Channel for the connection attached last; thread-safe."""

    def __init__(self, timeout: float = IO_TIMEOUT) -> None:
        self._timeout = timeout
        self._lock = threading.Lock()
        self._gen = 0
        self._conn: pika.BlockingConnection | None = None
        self._ch: Any = None
        self._pending: set[Future[Any]] = set()

    def attach(self, conn: pika.BlockingConnection, ch: Any) -> int:
        """A new connection (I/O thread): returns its generation, to be carried by its deliveries."""
        with self._lock:
            self._gen += 1
            self._conn, self._ch = conn, ch
            return self._gen

    def detach(self) -> None:
        """The connection is gone (I/O thread): every worker thread still waiting gets ConnectionLost."""
        with self._lock:
            self._conn = self._ch = None
            pending, self._pending = self._pending, set()
        for fut in pending:
            if not fut.done():
                try:
                    fut.set_exception(ConnectionLost("connection closed"))
                except Exception:  # noqa: S110 - resolved concurrently by the I/O thread
                    pass

    def ack(self, d: Delivery) -> None:
        self._io(d.generation, lambda ch: ch.basic_ack(d.delivery_tag))

    def requeue(self, d: Delivery) -> None:
        self._io(d.generation, lambda ch: ch.basic_nack(d.delivery_tag, requeue=True))

    def publish_copy(self, d: Delivery, exchange: str, routing_key: str, headers: dict[str, Any]) -> None:
        """Same body and message_id, new headers (None removes one); returns once the broker confirmed it (routed)."""
        merged = {k: v for k, v in {**d.headers, **headers}.items() if v is not None}
        props = pika.BasicProperties(
            message_id=d.message_id,
            content_type=d.content_type or "application/json",
            delivery_mode=pika.DeliveryMode.Persistent,
            headers=merged,
        )
        self._io(d.generation, lambda ch: ch.basic_publish(exchange, routing_key, d.body, props, mandatory=True))

    def _io(self, gen: int, fn: Callable[[Any], T]) -> T:
        """Run fn(channel) on the I/O thread and wait for its result (raises ConnectionLost if it is gone)."""
        fut: Future[T] = Future()

        def run() -> None:
            if gen != self._gen or self._ch is None or not self._ch.is_open:
                fut.set_exception(ConnectionLost("connection replaced"))
                return
            try:
                fut.set_result(fn(self._ch))
            except BaseException as exc:  # handed to the waiting worker thread
                fut.set_exception(exc)

        with self._lock:
            conn = self._conn
            if gen != self._gen or conn is None:
                raise ConnectionLost("connection replaced")
            self._pending.add(fut)
        try:
            conn.add_callback_threadsafe(run)
            return fut.result(timeout=self._timeout)
        except pika.exceptions.ConnectionWrongStateError as exc:
            raise ConnectionLost(str(exc)) from exc
        except TimeoutError as exc:
            raise ConnectionLost("the I/O thread did not answer in time") from exc
        finally:
            with self._lock:
                self._pending.discard(fut)
