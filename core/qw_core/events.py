"""Status changes pushed through the broker: every process that writes the store publishes what it changed.

    store UPDATE (seq=seq+1, RETURNING) --on_change--> EventPublisher (a thread) --> qw.events (topic)
        routing key <tenant>.<kind>.<task_id>          --> each API process's own exclusive queue (qw_api.push)

Best effort by design: `offer` never blocks and never raises (a bounded buffer; past it, or while the broker is
away, events are dropped and counted). The store stays the truth: each event carries the task's `seq`, so a
subscriber that sees a gap, or whose API lost its consumer, re-reads the store. Messages are transient: the
queues they land in are exclusive and auto-deleted, so persisting them would buy nothing.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import threading
from collections import deque
from collections.abc import Iterator, Sequence
from typing import Any
from urllib.parse import quote

import orjson
import pika
from pika.adapters.select_connection import SelectConnection

from qw_core.store import TaskRecord, TaskStore
from qw_core.topology import EVENTS_EXCHANGE

log = logging.getLogger(__name__)

CONTENT_TYPE = "application/json"
CONNECTION_NAME = "qw-status-events"  # as the broker's management UI lists it
# Not sent: where the upload lies in storage is nobody's business but the workers'.
_PRIVATE = ("source_key",)
_BATCH = 256  # events published before one flush, at most


class _OneWriteConnection(SelectConnection):
    """pika's SelectConnection (what a BlockingConnection drives) that can hold the frames it outputs and hand
    them to its transport as one buffer: the transport makes a send() per buffer, three per message (method,
    header, body), which was most of this thread's time under load. (`_output_marshaled_frames` is pika 1.x's one
    place where marshalled frames go out, as qw_api.publisher uses it; the bytes and their order are the same.)"""

    _held: list[bytes] | None = None

    def _output_marshaled_frames(self, marshaled_frames: Sequence[bytes]) -> None:
        if self._held is not None:
            self._held.extend(marshaled_frames)
        else:
            super()._output_marshaled_frames(marshaled_frames)

    @contextlib.contextmanager
    def one_write(self) -> Iterator[None]:
        """Frames output inside go out as one buffer at its end (also when it raises: what pika took is sent)."""
        self._held = []
        try:
            yield
        finally:
            held, self._held = self._held, None
            if held:
                super()._output_marshaled_frames([b"".join(held)])


def _word(value: str) -> str:
    """One routing-key word: a dot inside a tenant or kind name must not split it."""
    return quote(value, safe="").replace(".", "%2E")


def routing_key(tenant: str, kind: str, task_id: str) -> str:
    """`<tenant>.<kind>.<task_id>`: bind `<tenant>.#` for a tenant, `<tenant>.<kind>.*` for one of its kinds."""
    return f"{_word(tenant)}.{_word(kind)}.{_word(task_id)}"


def tenant_binding(tenant: str) -> str:
    """The binding key for all of a tenant's changes."""
    return f"{_word(tenant)}.#"


_SENT = tuple(f.name for f in dataclasses.fields(TaskRecord) if f.name not in _PRIVATE)


def encode(record: TaskRecord) -> bytes:
    """The event's JSON. orjson on the record's fields (dataclasses.asdict deep-copies: ~15x slower, and every
    status change, the API's queued marks included, is encoded on its writer's thread)."""
    body = {name: getattr(record, name) for name in _SENT}
    try:
        return orjson.dumps(body)
    except TypeError:  # a lone surrogate in a text, which orjson refuses: json escapes it
        return json.dumps(body, separators=(",", ":")).encode()


def decode(body: bytes) -> TaskRecord:
    data: dict[str, Any] = json.loads(body)
    fields = {f.name for f in dataclasses.fields(TaskRecord)}
    return TaskRecord(**{k: v for k, v in data.items() if k in fields}, source_key=None)


class _Buffer:
    """The events waiting for the publishing thread, at most `capacity`: a writer adds a whole store batch under
    one lock (one wake-up of that thread per batch, not one per event, so it publishes the batch in one write)."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self._items: deque[tuple[str, bytes]] = deque()
        self._ready = threading.Condition()
        self._closed = False

    def put(self, items: list[tuple[str, bytes]]) -> int:
        """Add what fits; returns how many did not (dropped)."""
        with self._ready:
            room = max(self.capacity - len(self._items), 0)
            self._items.extend(items[:room])
            self._ready.notify()
        return max(len(items) - room, 0)

    def take(self, most: int, timeout: float) -> list[tuple[str, bytes]]:
        """Up to `most` events, waiting up to `timeout` for the first unless closed; [] when none."""
        with self._ready:
            if not self._items and not self._closed:
                self._ready.wait(timeout)
            return [self._items.popleft() for _ in range(min(most, len(self._items)))]

    def close(self) -> None:
        """From now on `take` never waits."""
        with self._ready:
            self._closed = True
            self._ready.notify()

    def empty(self) -> bool:
        return not self._items

    def clear(self) -> int:
        """Drop everything waiting; returns how many."""
        with self._ready:
            n = len(self._items)
            self._items.clear()
        return n


class EventPublisher:
    """Publishes status changes from a thread of its own (one pika connection), fed by a bounded buffer."""

    def __init__(self, urls: Sequence[str], capacity: int = 10_000, reconnect_seconds: float = 1.0) -> None:
        self.urls = list(urls)  # a cluster's nodes, tried in turn
        self.reconnect_seconds = reconnect_seconds
        self.published = 0
        self.dropped = 0
        self._buffer = _Buffer(capacity)
        self._stop = threading.Event()
        self.connected = threading.Event()
        self.connected_once = False
        self._thread = threading.Thread(target=self._run, name="qw-events", daemon=True)

    def start(self) -> EventPublisher:
        self._thread.start()
        return self

    def attach(self, store: TaskStore) -> EventPublisher:
        """Publish every status change `store` makes from now on."""
        store.on_change = self.offer
        return self

    def offer(self, records: Sequence[TaskRecord]) -> None:
        if records:
            self.dropped += self._buffer.put([(routing_key(r.tenant, r.kind, r.task_id), encode(r)) for r in records])

    def close(self, timeout: float = 2.0) -> None:
        """Publish what is buffered (for up to `timeout` seconds), then disconnect."""
        self._stop.set()
        self._buffer.close()  # wakes the thread
        if self._thread.is_alive():
            self._thread.join(timeout)

    def _run(self) -> None:
        attempt = 0
        while not self._stop.is_set() or not self._buffer.empty():
            url = self.urls[attempt % len(self.urls)]
            attempt += 1
            try:
                params = pika.URLParameters(url)
                params.client_properties = {"connection_name": CONNECTION_NAME}
                conn = pika.BlockingConnection(params, _impl_class=_OneWriteConnection)
            except Exception as exc:  # broker away: drop what waits (subscribers re-read the store), try again
                if attempt == 1 or self.connected_once:  # once per outage, not every second
                    log.warning("status events: cannot connect to the broker (%s); retrying", exc)
                    self.connected_once = False
                self._drain_dropped()
                if self._stop.wait(self.reconnect_seconds):
                    return
                continue
            try:
                channel = conn.channel()
                channel.exchange_declare(EVENTS_EXCHANGE, "topic", durable=True)
                self.connected.set()
                self.connected_once = True
                self._pump(conn, channel)
            except Exception as exc:
                log.warning("status events: broker connection lost (%s); reconnecting", exc)
            finally:
                self.connected.clear()
                if conn.is_open:
                    with contextlib.suppress(Exception):  # it is going away either way
                        conn.close()
            if self._stop.is_set():
                return

    def _pump(self, conn: Any, channel: Any) -> None:
        props = pika.BasicProperties(content_type=CONTENT_TYPE, delivery_mode=1)
        while True:
            # What waits goes out together: each message handed to pika's channel, its frames held and written as
            # one buffer, then one flush for the lot (BlockingChannel.basic_publish flushes, a poll loop and its
            # syscalls, after every message; pika's transport sends each frame on its own: under load the larger
            # part of this thread's time, and every API request's queued mark is one event).
            batch = self._buffer.take(_BATCH, 1.0)
            if not batch:
                if self._stop.is_set():
                    return  # closed, and everything buffered went out
                conn.process_data_events(0)  # heartbeats while idle
                continue
            try:
                with conn._impl.one_write():
                    for key, body in batch:
                        channel._impl.basic_publish(EVENTS_EXCHANGE, key, body, props)
                conn.process_data_events(0)  # sends what the publishes buffered
            except Exception:
                self.dropped += len(batch)
                raise
            self.published += len(batch)

    def _drain_dropped(self) -> None:
        self.dropped += self._buffer.clear()


def publish_changes(store: TaskStore, urls: Sequence[str], capacity: int = 10_000) -> EventPublisher:
    """Attach a started EventPublisher to `store` (close it before closing the store)."""
    return EventPublisher(urls, capacity).start().attach(store)


__all__ = [
    "EVENTS_EXCHANGE",
    "EventPublisher",
    "decode",
    "encode",
    "publish_changes",
    "routing_key",
    "tenant_binding",
]
