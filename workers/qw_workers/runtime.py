"""The worker runtime: one pika BlockingConnection on the I/O (main) thread, task bodies on a thread pool.

The I/O thread only does AMQP: it receives deliveries and hands them to the pool, and it runs whatever
the worker threads ask of it (publish with confirms, ack, nack) through qw_workers.bridge, so heartbeats keep
flowing however long a task runs and the connection is only touched from its thread. A worker thread settles
its delivery through qw_workers.settle (the order of each path is in its docstring). While the store is down the
settle backoff holds deliveries (no new ones come beyond the prefetch) and /readyz says not ready; a background
ping (at most once per backoff) notices the store is back when no delivery does.
Deliveries carry the connection generation; after a reconnect, stale tags are never acked (the broker
redelivers those messages, and the store turns the repeat into a duplicate).
On a cluster each (re)connect tries the nodes in qw_core.brokers' order (per-process random, the node just lost
last), so workers spread over the nodes and fail over to a live one at the first reconnect.
"""

from __future__ import annotations

import logging
import random
import threading
import time
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from typing import Any

import pika
import pika.exceptions
from qw_core import brokers
from qw_core.registry import RetryPolicy
from qw_core.settings import WorkerSettings
from qw_core.storage import Storage
from qw_core.store import TaskStore
from qw_core.topology import Topology, build_topology, declare_with_pika, queue_name

from qw_workers.bridge import IoBridge
from qw_workers.context import Handler
from qw_workers.middleware import Delivery, MetricsMiddleware, Middleware
from qw_workers.policy import describe, reconnect_delay
from qw_workers.settle import ConnectionLost, Settler, StoreBackoff

log = logging.getLogger("qw_workers.runtime")

__all__ = ["ConnectionLost", "Worker"]


class Worker:
    """Orchestrates one kind's consumer: the connection and its reconnects, the pool, a graceful stop.

    What is said to the broker about each delivery is decided by `Settler` and carried by `IoBridge`.
    """

    def __init__(
        self,
        kind: str,
        handler: Handler,
        settings: WorkerSettings,
        store: TaskStore,
        storage: Storage,
        middleware: Iterable[Middleware] = (),
        kinds: Iterable[str] = ("image", "email"),
        policy: RetryPolicy | None = None,
    ) -> None:
        """`policy`: an SDK kind's own retry policy."""
        self.kind = kind
        self.settings = settings
        self.middleware = list(middleware)
        self._bridge = IoBridge()
        self._stop = threading.Event()
        self.store = store
        # The store's ups and downs reach the metrics middleware's registry (qw_workers.metrics.store_event).
        self._store_listeners = [m.m.store_event for m in self.middleware if isinstance(m, MetricsMiddleware)]
        self.store_backoff = StoreBackoff(listener=self._store_event)
        self._probing = threading.Lock()  # one background store ping at a time
        self._settler = Settler(
            kind,
            handler,
            settings,
            store,
            storage,
            self._bridge,
            backoff=self.store_backoff,
            pause=self._stop.wait,
            policy=policy or RetryPolicy(),
        )
        declared = tuple(dict.fromkeys((*kinds, kind)))
        self.topology: Topology = build_topology(declared, settings.delivery_limit, settings.queue_limits())
        self._ready = threading.Event()
        self._lock = threading.Lock()  # guards _inflight
        self._inflight = 0
        self._broker_cancelled = False
        self._was_consuming = False  # the connection that just failed had been consuming: reconnect at once
        self._grace_deadline: float | None = None  # set when a stop begins; bounds the wait for tasks in hand
        self._rng = random.Random()  # spreads processes over the broker nodes
        self._node: str | None = None  # the broker node of the current connection
        self._lost: str | None = None  # the node whose connection just failed: tried last on the next connect
        self._pool = ThreadPoolExecutor(settings.concurrency, thread_name_prefix=f"qw-{kind}")
        self.abandoned = 0  # tasks still running when the grace period ran out

    # --- control (any thread, signal handlers included) -----------------------------------------

    def request_stop(self) -> None:
        """Async-signal-safe: only sets a flag the I/O loop polls."""
        self._stop.set()

    @property
    def ready(self) -> bool:
        """Consuming, not stopping, and the store answering: a worker that cannot record anything is not ready
        (/readyz 503; /healthz stays 200, a restart would not bring the store back)."""
        if self.store_backoff.down:
            self._probe_store()
            return False
        return self._ready.is_set() and not self._stop.is_set()

    def _store_event(self, up: bool) -> None:
        for hear in self._store_listeners:
            hear(up)

    def _probe_store(self) -> None:
        """The store was down: once its backoff is over, ping it on a thread of its own (a ping may take the
        pool's timeout), so an idle worker also notices it is back."""
        if self.store_backoff.remaining() > 0 or not self._probing.acquire(blocking=False):
            return

        def ping() -> None:
            try:
                if self.store.ping():
                    self.store_backoff.succeeded()
                else:
                    self.store_backoff.failed()
            finally:
                self._probing.release()

        threading.Thread(target=ping, name=f"qw-{self.kind}-store-ping", daemon=True).start()

    @property
    def inflight(self) -> int:
        with self._lock:
            return self._inflight

    # --- the I/O thread ----------------------------------------------------------------------------

    def run(self) -> int:
        """Consume until stopped; reconnect with capped, jittered backoff. 0 = clean stop."""
        failures = 0
        while not self._stop.is_set():
            try:
                self._consume_until_stopped()
                break
            except (pika.exceptions.AMQPError, OSError, ConnectionLost) as exc:
                self._disconnected()
                self._lost, self._node = self._node, None
                failures = 1 if self._was_consuming else failures + 1
                delay = reconnect_delay(failures)
                log.warning(
                    "broker connection lost or refused (%s); reconnecting in %.1fs",
                    describe(exc),
                    delay,
                    extra={"kind": self.kind},
                )
                self._stop.wait(delay)
        self._wait_for_stragglers()
        self.abandoned = self.inflight
        self._pool.shutdown(wait=False, cancel_futures=True)
        return 0 if self.abandoned == 0 else 1

    def _wait_for_stragglers(self) -> None:
        """Stopped while disconnected: threads still working cannot ack; they get what is left of the grace period."""
        grace_deadline = self._grace_deadline or time.monotonic() + self.settings.grace_period
        while self.inflight and time.monotonic() < grace_deadline:
            time.sleep(0.05)

    def _open(self) -> pika.BlockingConnection:
        """A connection to the first node in this round's order that answers; the last refusal if none does."""
        error: Exception = pika.exceptions.AMQPConnectionError("no broker URL")
        for url in brokers.connect_order(self.settings.rabbitmq_urls(), self._rng, self._lost):
            try:
                conn = pika.BlockingConnection(_params(url, self.settings, self.kind))
            except (pika.exceptions.AMQPConnectionError, OSError) as exc:
                error = exc
                continue
            self._node = url
            log.info("connected to %s", brokers.redact(url), extra={"kind": self.kind})
            return conn
        raise error

    def _consume_until_stopped(self) -> None:
        self._was_consuming = False
        conn = self._open()
        ch = _set_up_channel(conn, self.topology, self.settings.prefetch)
        tag = self._start_consuming(conn, ch)
        self._serve(conn, ch, tag)
        self._disconnected()
        try:
            conn.close()
        except Exception:  # noqa: S110 - closing a broken connection; nothing left to save
            pass
        log.info("stopped", extra={"kind": self.kind})

    def _start_consuming(self, conn: pika.BlockingConnection, ch: Any) -> str:
        gen = self._bridge.attach(conn, ch)
        self._broker_cancelled = False
        ch.add_on_cancel_callback(self._on_broker_cancel)
        tag: str = ch.basic_consume(queue_name(self.kind), partial(self._on_message, gen), auto_ack=False)
        self._was_consuming = True
        self._ready.set()
        self._hook_connection(True)
        log.info(
            "consuming %s (prefetch %d, concurrency %d)",
            queue_name(self.kind),
            self.settings.prefetch,
            self.settings.concurrency,
            extra={"kind": self.kind, "queue": queue_name(self.kind)},
        )
        return tag

    def _serve(self, conn: pika.BlockingConnection, ch: Any, tag: str) -> None:
        """Pump AMQP until stopped and the tasks in hand are settled, or the grace period is over."""
        deadline: float | None = None
        while True:
            conn.process_data_events(time_limit=0.2)
            if self._broker_cancelled:
                raise ConnectionLost("the broker cancelled the consumer (queue deleted?)")
            if not self._stop.is_set():
                continue
            if deadline is None:
                deadline = self._stop_consuming(ch, tag)
            if self.inflight == 0:
                return
            if time.monotonic() >= deadline:
                log.warning(
                    "grace period over with %d task(s) unfinished; the broker will redeliver them",
                    self.inflight,
                    extra={"kind": self.kind},
                )
                return

    def _stop_consuming(self, ch: Any, tag: str) -> float:
        """No new deliveries; unstarted prefetched ones go back to the queue (pika nacks them). Returns the deadline."""
        self._ready.clear()
        self._hook_connection(False)
        ch.basic_cancel(tag)
        deadline = self._grace_deadline = time.monotonic() + self.settings.grace_period
        log.info("stopping: finishing %d task(s) in hand", self.inflight, extra={"kind": self.kind})
        return deadline

    def _disconnected(self) -> None:
        self._ready.clear()
        self._hook_connection(False)
        self._bridge.detach()

    def _on_broker_cancel(self, _frame: Any) -> None:
        self._broker_cancelled = True

    def _on_message(self, gen: int, _ch: Any, method: Any, props: Any, body: bytes) -> None:
        delivery = _delivery(self.kind, gen, method, props, body)
        with self._lock:
            self._inflight += 1
        self._pool.submit(self._process, delivery)

    def _hook_connection(self, connected: bool) -> None:
        for m in self.middleware:
            m.on_connection(connected)

    # --- a worker thread -------------------------------------------------------------------------------

    def _process(self, d: Delivery) -> None:
        try:
            if self._stop.is_set():
                self._bridge.requeue(d)  # not started before the stop: leave it for another worker
                return
            for m in self.middleware:
                m.before_process(d)
            result = self._settler.settle(d)
            for m in reversed(self.middleware):
                m.after_process(d, result)
        except ConnectionLost as exc:
            log.warning(
                "connection lost before the task was settled (%s); the broker redelivers it",
                exc,
                extra={"task_id": d.message_id, "kind": self.kind},
            )
        except Exception:
            log.exception("unexpected error settling a delivery", extra={"task_id": d.message_id, "kind": self.kind})
        finally:
            with self._lock:
                self._inflight -= 1


def _params(url: str, settings: WorkerSettings, kind: str) -> pika.URLParameters:
    params = pika.URLParameters(url)
    params.heartbeat = settings.heartbeat
    params.blocked_connection_timeout = 60
    params.connection_attempts = 1
    params.socket_timeout = 5
    params.client_properties = {"connection_name": f"qw-worker-{kind}"}
    return params


def _set_up_channel(conn: pika.BlockingConnection, topology: Topology, prefetch: int) -> Any:
    """Declare the topology, turn confirms on, set the prefetch; a connection that fails here is closed."""
    try:
        ch = conn.channel()
        declare_with_pika(ch, topology)
        ch.confirm_delivery()
        ch.basic_qos(prefetch_count=prefetch)
    except BaseException:
        if conn.is_open:
            conn.close()
        raise
    return ch


def _delivery(kind: str, gen: int, method: Any, props: Any, body: bytes) -> Delivery:
    """What a worker thread needs of a pika delivery, copied on the I/O thread (no pika objects cross over)."""
    return Delivery(
        kind=kind,
        generation=gen,
        delivery_tag=method.delivery_tag,
        body=body,
        message_id=props.message_id,
        headers=dict(props.headers or {}),
        redelivered=bool(method.redelivered),
        content_type=props.content_type,
    )
