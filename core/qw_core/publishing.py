"""Publishing tasks from ordinary (threaded, synchronous) Python code: the SDK's `Client` and `task.send()`.

One pika BlockingConnection per publisher, shared by every thread of the process behind a lock: pika connections are
not thread-safe, and a publish holds the lock only for its own round trip (publish -> confirm). Each publish is
persistent and mandatory and returns only once the broker confirmed it; an unroutable message (no queue for the
kind) and a nack (a full queue: `x-overflow=reject-publish`) are errors, never a silent loss.

A BlockingConnection only services heartbeats while it is being used, so an idle producer's connection may be
closed by the broker: before each publish the connection reads what the broker sent meanwhile, and a closed one is
replaced (nodes in qw_core.brokers' order) before anything is sent. A connection lost *during* a publish is never
retried here: the broker may have the message, and a second copy would run the task twice.

`accept` is the API's accept path in synchronous form (qw_api.service.submit): pending row, confirmed publish, then
visible (queued); after a failed publish the pending row is withdrawn, unless a worker already moved it on, which
proves the broker had the message after all: then the task is accepted.
"""

from __future__ import annotations

import logging
import random
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

import pika
import pika.exceptions

from qw_core import brokers
from qw_core import delays as ladder
from qw_core.errors import QueueworkerError
from qw_core.idempotency import KEY_POLL_SECONDS, IdempotencyConflict, IdempotencyKey, IdempotencyKeyInUse, KeyClaim
from qw_core.messages import TaskMessage
from qw_core.store import StoreUnavailable, TaskStore
from qw_core.topology import H_ATTEMPT, TASKS_EXCHANGE, Topology, declare_with_pika

log = logging.getLogger("qw_core.publishing")
# A second request with a key whose first request is still publishing waits this long for its outcome: longer than
# one publish takes (connect, declare, confirm: socket_timeout 5 s), then IdempotencyKeyInUse.
KEY_WAIT_SECONDS = 10.0


class PublishError(QueueworkerError):
    """The task was not queued (nothing claims it is: its status row is removed)."""


class BrokerUnavailable(PublishError):
    """No broker node could be reached, or the connection failed during the publish."""


class PublishRefused(PublishError):
    """The broker nacked the message, for example because the kind's queue is full (reject-publish)."""


class Unroutable(PublishError):
    """The broker had no queue for the message's kind (returned as unroutable)."""


class MessageTooLarge(PublishError):
    """The body is over the broker's message size limit (refused here: the broker would close the channel)."""


class BlockingPublisher:
    """Confirmed, mandatory, persistent publishes to `qw.tasks` over one lazily opened connection; thread-safe.

    `topology_for(kind)` says what to declare before the first publish of a kind on each connection.
    """

    def __init__(
        self,
        urls: Sequence[str],
        topology_for: Callable[[str], Topology],
        heartbeat: int = 30,
        max_message_bytes: int = 16 * 1024 * 1024,
        connection_name: str = "qw-client",
    ) -> None:
        self.urls = list(urls)
        self.topology_for = topology_for
        self.heartbeat = heartbeat
        self.max_message_bytes = max_message_bytes
        self.connection_name = connection_name
        self._lock = threading.Lock()
        self._rng = random.Random()
        self._conn: pika.BlockingConnection | None = None
        self._ch: Any = None
        self._node: str | None = None
        self._lost: str | None = None
        self._declared: set[str] = set()

    def publish(
        self,
        kind: str,
        body: bytes,
        message_id: str,
        headers: dict[str, Any] | None = None,
        not_before: float | None = None,
    ) -> None:
        """Return once the broker confirmed the routed message; raise a PublishError subclass otherwise.

        `not_before` (epoch seconds): the message goes through the delay ladder and reaches the kind's queue then."""
        if len(body) > self.max_message_bytes:
            raise MessageTooLarge(
                f"the message would be {len(body)} bytes; the broker accepts at most {self.max_message_bytes}"
            )
        headers = {H_ATTEMPT: 0, **(headers or {})}
        exchange, key = TASKS_EXCHANGE, kind
        if not_before is not None:
            headers[ladder.H_NOT_BEFORE] = round(not_before * 1000)
        props = pika.BasicProperties(
            message_id=message_id,
            content_type="application/json",
            delivery_mode=pika.DeliveryMode.Persistent,
            headers=headers,
        )
        with self._lock:
            ch = self._live_channel(kind)
            if not_before is not None:  # the time left is measured now, after any reconnect
                exchange, key = ladder.ENTRY_EXCHANGE, ladder.routing_key((not_before - time.time()) * 1000, kind)
            try:
                ch.basic_publish(exchange, key, body, props, mandatory=True)
            except pika.exceptions.UnroutableError:
                raise Unroutable(f"the broker has no queue for kind {kind!r}; nothing was queued") from None
            except pika.exceptions.NackError:
                raise PublishRefused(f"the broker refused the {kind!r} task (its queue may be full)") from None
            except pika.exceptions.ChannelClosedByBroker as exc:
                self._drop()
                raise PublishError(f"the broker closed the channel: {exc!r}") from exc
            except (pika.exceptions.AMQPError, OSError) as exc:
                self._drop()
                raise BrokerUnavailable(f"the broker connection failed during the publish ({exc!r})") from exc

    def close(self) -> None:
        with self._lock:
            self._drop()

    def _live_channel(self, kind: str) -> Any:
        """A channel on a connection known to be open, the kind declared on it; nothing has been sent yet, so any
        failure here is safe to report (BrokerUnavailable, or PublishError if the broker refused a declaration)."""
        try:
            if self._conn is not None and self._conn.is_open:
                self._conn.process_data_events(0)  # a close the broker sent while we were idle surfaces here
        except (pika.exceptions.AMQPError, OSError):
            self._drop()
        try:
            if self._conn is None or not self._conn.is_open or self._ch is None or not self._ch.is_open:
                self._drop()
                self._connect()
            if kind not in self._declared:
                declare_with_pika(self._ch, self.topology_for(kind))
                self._declared.add(kind)
        except pika.exceptions.ChannelClosedByBroker as exc:
            self._drop()
            raise PublishError(f"the broker refused to declare the {kind!r} queues: {exc!r}") from exc
        except (pika.exceptions.AMQPError, OSError) as exc:
            self._drop()
            raise BrokerUnavailable(f"the message broker is not reachable ({exc!r})") from exc
        return self._ch

    def _connect(self) -> None:
        error: Exception = BrokerUnavailable("no broker URL")
        for url in brokers.connect_order(self.urls, self._rng, self._lost):
            params = pika.URLParameters(url)
            params.heartbeat = self.heartbeat
            params.connection_attempts = 1
            params.socket_timeout = 5
            params.blocked_connection_timeout = 30
            params.client_properties = {"connection_name": self.connection_name}
            try:
                conn = pika.BlockingConnection(params)
            except (pika.exceptions.AMQPConnectionError, OSError) as exc:
                error = exc
                continue
            self._conn, self._node = conn, url
            self._ch = conn.channel()
            self._ch.confirm_delivery()
            return
        raise error

    def _drop(self) -> None:
        conn, self._conn, self._ch = self._conn, None, None
        self._declared.clear()
        if self._node is not None:
            self._lost, self._node = self._node, None
        if conn is not None and conn.is_open:
            try:
                conn.close()
            except Exception:  # noqa: S110 - already broken; the next publish reconnects
                pass


def accept(
    store: TaskStore,
    publisher: BlockingPublisher,
    task: TaskMessage,
    key: IdempotencyKey | None = None,
    wait_seconds: float = KEY_WAIT_SECONDS,
    not_before: float | None = None,
) -> str:
    """Row, confirmed publish, then visible: all or nothing, like the API's (qw_api.service.submit). Returns the
    task id: `task`'s, or under an idempotency `key` already used for the same request, the first task's.

    `not_before` (epoch seconds): a delayed task, 'scheduled' until it runs. Raises StoreUnavailable (nothing
    published) or a PublishError (the pending row withdrawn, so a copy the broker kept after all is dead-lettered by
    the worker for want of a status record, never run; its key released); IdempotencyConflict (the key names a
    different request) or IdempotencyKeyInUse (its first request was still being queued after `wait_seconds`).
    """
    body = task.to_bytes()  # a payload that cannot be serialised fails here, before any row exists
    if key is None:
        store.create_pending(task.task_id, task.tenant, task.kind, not_before=not_before)
    else:
        claim = _claim(store, task, key, wait_seconds, not_before)
        if claim.outcome == "existing":
            return claim.task_id
    try:
        publisher.publish(task.kind, body, task.task_id, not_before=not_before)
    except BaseException:
        if not _withdraw(store, task.task_id):
            log.info("task %s: the publish failed but a worker already has it; accepted", task.task_id)
            return task.task_id
        raise
    try:
        store.confirm_queued(task.task_id)
    except StoreUnavailable:
        pass  # the broker has it; the worker's own status writes move the task on
    return task.task_id


def _claim(
    store: TaskStore, task: TaskMessage, key: IdempotencyKey, wait_seconds: float, not_before: float | None
) -> KeyClaim:
    """Bind `key` to `task` (a pending row written) or name the task it is bound to; while that one's first request
    is still publishing (`busy`), wait for its outcome: queued (then it is ours to return) or withdrawn (then the
    key is free again)."""
    deadline = time.monotonic() + wait_seconds
    while True:
        claim = store.claim_key(task.task_id, task.tenant, task.kind, key, not_before=not_before)
        if claim.outcome == "mismatch":
            raise IdempotencyConflict(key.key, claim.task_id)
        if claim.outcome != "busy":
            return claim
        if time.monotonic() >= deadline:
            raise IdempotencyKeyInUse(key.key)
        time.sleep(KEY_POLL_SECONDS)


def _withdraw(store: TaskStore, task_id: str) -> bool:
    """Remove a still-pending row; False when a worker already moved it on (the broker had the message)."""
    try:
        return bool(store.discard_pending(task_id))
    except StoreUnavailable:
        log.warning("could not withdraw the pending row of unpublished task %s", task_id)
        return True  # not queued as far as we know; the row stays pending (invisible)
