"""The worker runtime: one pika BlockingConnection on the I/O (main) thread, task bodies on a thread pool.

The I/O thread only does AMQP: it receives deliveries and hands them to the pool, and it runs whatever
the worker threads ask of it (publish with confirms, ack, nack) through `add_callback_threadsafe`, so
heartbeats keep flowing however long a task runs and the connection is only touched from its thread.
A worker thread settles its delivery in this order: publish retry/dead copy (confirmed) -> status write ->
ack. Deliveries carry the connection generation; after a reconnect, stale tags are never acked (the
broker redelivers those messages, and the store turns the repeat into a duplicate).
On a cluster each (re)connect tries the nodes in qw_core.brokers' order (per-process random, the node just lost
last), so workers spread over the nodes and fail over to a live one at the first reconnect.
"""

from __future__ import annotations

import logging
import random
import threading
import time
from collections.abc import Callable, Iterable
from concurrent.futures import Future, ThreadPoolExecutor
from functools import partial
from typing import Any, Literal, TypeVar

import pika
import pika.exceptions
from qw_core import brokers
from qw_core.messages import TaskMessage
from qw_core.settings import WorkerSettings
from qw_core.storage import LocalStorage
from qw_core.store import TaskStore
from qw_core.topology import (
    DEAD_EXCHANGE,
    H_ATTEMPT,
    H_ERROR,
    H_REASON,
    RETRY_EXCHANGE,
    Topology,
    build_topology,
    declare_with_pika,
    queue_name,
    retry_routing_key,
)

from qw_workers.context import Handler, TaskContext
from qw_workers.middleware import Delivery, Middleware, Result
from qw_workers.policy import attempt_of, decide_failure, describe, reconnect_delay

log = logging.getLogger("qw_workers.runtime")
T = TypeVar("T")
IO_TIMEOUT = 60.0


class ConnectionLost(Exception):
    """The connection a delivery came on is gone; the broker will redeliver the message."""


class Worker:
    def __init__(
        self,
        kind: str,
        handler: Handler,
        settings: WorkerSettings,
        store: TaskStore,
        storage: LocalStorage,
        middleware: Iterable[Middleware] = (),
        kinds: Iterable[str] = ("image", "email"),
    ) -> None:
        self.kind = kind
        self.handler = handler
        self.settings = settings
        self.store = store
        self.storage = storage
        self.middleware = list(middleware)
        self.topology: Topology = build_topology(tuple(kinds), settings.retry_delays, settings.delivery_limit)
        self._stop = threading.Event()
        self._ready = threading.Event()
        self._lock = threading.Lock()
        self._inflight = 0
        self._gen = 0
        self._conn: pika.BlockingConnection | None = None
        self._ch: Any = None
        self._pending: set[Future[Any]] = set()
        self._broker_cancelled = False
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
        return self._ready.is_set() and not self._stop.is_set()

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
        # Stopped while disconnected: threads still working cannot ack; they get what is left of the grace period.
        grace_deadline = self._grace_deadline or time.monotonic() + self.settings.grace_period
        while self.inflight and time.monotonic() < grace_deadline:
            time.sleep(0.05)
        self.abandoned = self.inflight
        self._pool.shutdown(wait=False, cancel_futures=True)
        return 0 if self.abandoned == 0 else 1

    _was_consuming = False
    _grace_deadline: float | None = None

    def _params(self, url: str) -> pika.URLParameters:
        params = pika.URLParameters(url)
        params.heartbeat = self.settings.heartbeat
        params.blocked_connection_timeout = 60
        params.connection_attempts = 1
        params.socket_timeout = 5
        params.client_properties = {"connection_name": f"qw-worker-{self.kind}"}
        return params

    def _open(self) -> pika.BlockingConnection:
        """A connection to the first node in this round's order that answers; the last refusal if none does."""
        error: Exception = pika.exceptions.AMQPConnectionError("no broker URL")
        for url in brokers.connect_order(self.settings.rabbitmq_urls(), self._rng, self._lost):
            try:
                conn = pika.BlockingConnection(self._params(url))
            except (pika.exceptions.AMQPConnectionError, OSError) as exc:
                error = exc
                continue
            self._node = url
            log.info("connected to %s", brokers.redact(url), extra={"kind": self.kind})
            return conn
        raise error

    def _connect(self) -> tuple[pika.BlockingConnection, Any]:
        conn = self._open()
        try:
            ch = conn.channel()
            declare_with_pika(ch, self.topology)
            ch.confirm_delivery()
            ch.basic_qos(prefetch_count=self.settings.prefetch)
        except BaseException:
            if conn.is_open:
                conn.close()
            raise
        return conn, ch

    def _consume_until_stopped(self) -> None:
        self._was_consuming = False
        conn, ch = self._connect()
        with self._lock:
            self._gen += 1
            gen = self._gen
            self._conn, self._ch = conn, ch
        self._broker_cancelled = False
        ch.add_on_cancel_callback(self._on_broker_cancel)
        tag = ch.basic_consume(queue_name(self.kind), partial(self._on_message, gen), auto_ack=False)
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
        consuming = True
        deadline = 0.0
        while True:
            conn.process_data_events(time_limit=0.2)
            if self._broker_cancelled:
                raise ConnectionLost("the broker cancelled the consumer (queue deleted?)")
            if self._stop.is_set():
                if consuming:
                    # No new deliveries; unstarted prefetched ones go back to the queue (pika nacks them).
                    self._ready.clear()
                    self._hook_connection(False)
                    ch.basic_cancel(tag)
                    consuming = False
                    deadline = self._grace_deadline = time.monotonic() + self.settings.grace_period
                    log.info("stopping: finishing %d task(s) in hand", self.inflight, extra={"kind": self.kind})
                if self.inflight == 0:
                    break
                if time.monotonic() >= deadline:
                    log.warning(
                        "grace period over with %d task(s) unfinished; the broker will redeliver them",
                        self.inflight,
                        extra={"kind": self.kind},
                    )
                    break
        self._disconnected()
        try:
            conn.close()
        except Exception:  # noqa: S110 - closing a broken connection; nothing left to save
            pass
        log.info("stopped", extra={"kind": self.kind})

    def _disconnected(self) -> None:
        self._ready.clear()
        self._hook_connection(False)
        with self._lock:
            self._conn = self._ch = None
            pending, self._pending = self._pending, set()
        for fut in pending:
            if not fut.done():
                try:
                    fut.set_exception(ConnectionLost("connection closed"))
                except Exception:  # noqa: S110 - resolved concurrently by the I/O thread
                    pass

    def _on_broker_cancel(self, _frame: Any) -> None:
        self._broker_cancelled = True

    def _on_message(self, gen: int, _ch: Any, method: Any, props: Any, body: bytes) -> None:
        delivery = Delivery(
            kind=self.kind,
            generation=gen,
            delivery_tag=method.delivery_tag,
            body=body,
            message_id=props.message_id,
            headers=dict(props.headers or {}),
            redelivered=bool(method.redelivered),
            content_type=props.content_type,
        )
        with self._lock:
            self._inflight += 1
        self._pool.submit(self._process, delivery)

    def _hook_connection(self, connected: bool) -> None:
        for m in self.middleware:
            m.on_connection(connected)

    # --- bridging worker threads to the I/O thread ----------------------------------------------------

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
            return fut.result(timeout=IO_TIMEOUT)
        except pika.exceptions.ConnectionWrongStateError as exc:
            raise ConnectionLost(str(exc)) from exc
        except TimeoutError as exc:
            raise ConnectionLost("the I/O thread did not answer in time") from exc
        finally:
            with self._lock:
                self._pending.discard(fut)

    def _ack(self, d: Delivery) -> None:
        self._io(d.generation, lambda ch: ch.basic_ack(d.delivery_tag))

    def _requeue(self, d: Delivery) -> None:
        self._io(d.generation, lambda ch: ch.basic_nack(d.delivery_tag, requeue=True))

    def _publish_copy(self, d: Delivery, exchange: str, routing_key: str, headers: dict[str, Any]) -> None:
        """Same body and message_id, new headers; returns once the broker confirmed it (routed)."""
        props = pika.BasicProperties(
            message_id=d.message_id,
            content_type=d.content_type or "application/json",
            delivery_mode=pika.DeliveryMode.Persistent,
            headers={**d.headers, **headers},
        )
        self._io(d.generation, lambda ch: ch.basic_publish(exchange, routing_key, d.body, props, mandatory=True))

    def _dead_letter(self, d: Delivery, reason: str, error: str, attempt: int) -> None:
        headers = {H_REASON: reason, H_ERROR: error, H_ATTEMPT: attempt}
        self._publish_copy(d, DEAD_EXCHANGE, self.kind, headers)

    # --- a worker thread -------------------------------------------------------------------------------

    def _process(self, d: Delivery) -> None:
        try:
            if self._stop.is_set():
                self._requeue(d)  # not started before the stop: leave it for another worker
                return
            for m in self.middleware:
                m.before_process(d)
            started = time.monotonic()
            result = self._settle(d, started)
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

    def _settle(self, d: Delivery, started: float) -> Result:
        def done(
            outcome: str, task_id: str | None, attempt: int, reason: str | None = None, error: str | None = None
        ) -> Result:
            return Result(outcome, task_id, attempt, time.monotonic() - started, reason, error)

        attempt = attempt_of(d.headers)
        try:
            task = TaskMessage.from_bytes(d.body)
            if task.kind != self.kind:
                raise ValueError(f"a {task.kind} task on the {self.kind} queue")
        except Exception as exc:
            error = describe(exc)
            self._dead_letter(d, "undecodable", error, attempt)
            if d.message_id:
                self._best_effort(lambda: self.store.finish_failed(str(d.message_id), "failed", error, attempt))
            self._ack(d)
            return done("failed", d.message_id, attempt, "undecodable", error)

        task_id = task.task_id
        try:
            if self._last_delivery(d):
                # Every earlier delivery died with its worker (crash loop, OOM kill). If this one dies too the
                # broker dead-letters it behind our back and the status would say "processing" for ever.
                error = f"the task was delivered {self.settings.delivery_limit} times without finishing"
                self._dead_letter(d, "delivery-limit", error, attempt)
                self.store.finish_failed(task_id, "dead", error, attempt)
                self._ack(d)
                return done("dead", task_id, attempt, "delivery-limit", error)
            if not self.store.start_attempt(task_id, attempt):
                if self.store.get(task_id) is None:
                    error = "no status record for this task"
                    self._dead_letter(d, "permanent", error, attempt)
                    self._ack(d)
                    return done("failed", task_id, attempt, "permanent", error)
                self._ack(d)
                return done("duplicate", task_id, attempt)
            ctx = TaskContext(
                self.settings,
                self.store,
                self.storage,
                attempt,
                logging.LoggerAdapter(
                    logging.getLogger(f"qw_workers.{self.kind}"),
                    {"task_id": task_id, "kind": self.kind, "attempt": attempt},
                ),
            )
            try:
                result_key = self.handler(task, ctx)
            except Exception as exc:
                return self._failed(d, task_id, attempt, exc, done)
            if not self.store.succeed(task_id, result_key):
                # Another delivery of the same task finished first (it ran side by side with this one).
                self._ack(d)
                return done("duplicate", task_id, attempt)
            self._ack(d)
            return done("succeeded", task_id, attempt)
        except ConnectionLost:
            raise
        except Exception as exc:
            # The status write (or the publish of a copy) failed: hand the message back, try again later.
            log.exception("could not settle the task; requeueing it", extra={"task_id": task_id, "kind": self.kind})
            self._requeue(d)
            return done("requeued", task_id, attempt, error=describe(exc))

    def _failed(self, d: Delivery, task_id: str, attempt: int, exc: Exception, done: Callable[..., Result]) -> Result:
        error = describe(exc)
        s = self.settings
        decision = decide_failure(exc, attempt, s.max_attempts, s.retry_delays)
        if decision.action == "retry":
            rk = retry_routing_key(self.kind, decision.delay_ms)
            self._publish_copy(d, RETRY_EXCHANGE, rk, {H_ATTEMPT: attempt, H_ERROR: error})
            self.store.schedule_retry(task_id, attempt, error)
            self._ack(d)
            return done("retried", task_id, attempt, error=error)
        assert decision.reason is not None
        self._dead_letter(d, decision.reason, error, attempt)
        status: Literal["dead", "failed"] = "dead" if decision.action == "dead" else "failed"
        self.store.finish_failed(task_id, status, error, attempt)
        self._ack(d)
        return done(status, task_id, attempt, decision.reason, error)

    def _last_delivery(self, d: Delivery) -> bool:
        """Quorum queues count returns in x-delivery-count; past the limit the broker dead-letters the message."""
        count = d.headers.get("x-delivery-count")
        return isinstance(count, int) and count >= self.settings.delivery_limit

    @staticmethod
    def _best_effort(fn: Callable[[], object]) -> None:
        try:
            fn()
        except Exception:
            log.warning("status write failed (best effort)", exc_info=True)
