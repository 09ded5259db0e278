"""One QueueWorker's tick, one way: observe (the broker's shared snapshot) -> decide (`policy.decide`) -> act (patch
replicas only on change) -> report (events, metrics, and the status `status.build_status` makes; written only when
it changed).

`Ticker` holds what one QueueWorker carries between ticks (history from its status at start, the last status it
wrote and when, a replica count it just wrote that the Deployment view may not show yet). The history is kept
here between status writes: a busy queue's churn (depth, rates, lastActiveTime) is written at most every
`min_interval` seconds, a change a user must see (`status.visible`) at once. The scheduler (schedule.py) calls
`tick` with each fresh snapshot of the broker's batched read; a status write is queued, not waited for.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import kopf

from qw_operator.crd import PAUSED_ANNOTATION
from qw_operator.metrics import OperatorMetrics
from qw_operator.observe import Reading, Replicas, read_queue
from qw_operator.policy import Decision, History, Policy, decide, is_active
from qw_operator.rabbitmq import Snapshot
from qw_operator.scaler import Kube, target_name
from qw_operator.status import (
    Conditions,
    applied,
    build_status,
    condition_status,
    history_from_status,
    should_write,
)

log = logging.getLogger(__name__)

ReplicaLookup = Callable[[str, str], "Replicas | None"]
PENDING_SECONDS = 15.0  # trust our own write over a lagging Deployment view for this long


@dataclass
class Ticker:
    namespace: str
    name: str
    body: Any  # kopf.Body: the live view of the QueueWorker (kept current by kopf)
    kube: Kube
    metrics: OperatorMetrics
    lookup: ReplicaLookup
    clock: Callable[[], float] = time.time
    history: History = field(default_factory=History)
    last_status: dict[str, Any] = field(default_factory=dict)
    min_interval: float = 10.0  # QW_STATUS_MIN_INTERVAL_SECONDS
    last_write: float = -math.inf  # clock() of the last status write
    unwritten: dict[str, Any] = field(default_factory=dict)  # a patch whose write failed (its lastScaleTime)
    rewrite: bool = False  # the last status write failed: write the next one whatever changed
    pending: tuple[int, float] | None = None
    _children: dict[str, Any] = field(default_factory=dict)  # metric children of this QueueWorker
    _policy: tuple[Mapping[str, Any], Policy] | None = None
    fallback_active: bool = False
    # Why the target Deployment must not be scaled although it exists (a template-form QueueWorker whose
    # `<name>-worker` is not its own), or None.
    target_problem: Callable[[str], str | None] = lambda _target: None
    # The fast path's memory (see `begin`): the last full tick's body, inputs and decision, whether that
    # decision is one time alone cannot change, and whether its status was written as built.
    _last_body: tuple[Any, Any, Any] | None = None
    _last_inputs: tuple[Any, ...] | None = None
    _last_decision: Decision | None = None
    _timeless: bool = False
    _settled: bool = False
    _held: dict[str, Any] | None = None  # the last status built and not written (churn only): `flush` writes it

    def __post_init__(self) -> None:
        status = dict(self.body.get("status") or {})
        self.history = history_from_status(status)
        self.last_status = status

    @property
    def spec(self) -> Mapping[str, Any]:
        return self.body.get("spec") or {}

    @property
    def policy(self) -> Policy:
        """The spec's Policy, parsed again only when a new body brought a new spec."""
        spec = self.spec
        if self._policy is None or self._policy[0] is not spec:
            self._policy = (spec, Policy.from_spec(spec))
        return self._policy[1]

    @property
    def paused(self) -> bool:
        meta = self.body.get("metadata") or {}
        return (meta.get("annotations") or {}).get(PAUSED_ANNOTATION) == "true"

    def current_replicas(self, seen: int, now: float) -> int:
        """The spec.replicas the policy scales from: the index's, or our own write while the index lags it."""
        if self.pending is not None:
            value, until = self.pending
            if seen == value or now > until:
                self.pending = None
            else:
                return value
        return seen

    async def tick(self, snap: Snapshot | None) -> Decision | None:
        """The decision made (None: the target Deployment is missing, nothing decided)."""
        decision, rest = self.begin(snap)
        if rest is not None:
            await rest
        return decision

    def begin(self, snap: Snapshot | None) -> tuple[Decision | None, Awaitable[None] | None]:
        """The tick up to what must wait: (the decision, None) when it is done, or (the decision, the rest: the
        replica write, then the report) when it scales. The scheduler needs no task for a tick that is done.

        Fast path: when everything the tick reads is what the last tick read (the same body, target, replica
        counts, queue figures, broker answer), its status was written as built (or needed no write), and that
        decision cannot change with time alone (`_timeless`: idle at minReplicas, nothing pending), the decision
        is that nothing changed and it is made without the policy, status, events or metrics; with the same
        inputs and a policy that decides the same again, the report (status, events, metrics) is skipped."""
        now = self.clock()
        spec = self.spec
        target = target_name(self.name, spec)
        problem = self.target_problem(target)
        seen = None if problem else self.lookup(self.namespace, target)
        current = None if seen is None else self.current_replicas(seen.spec, now)
        reading = read_queue(snap, str(spec.get("vhost", "/")), str(spec["queue"]))
        inputs = (problem, seen, current, reading.queue, reading.reachable, reading.why)
        same = (
            self._settled
            and self.pending is None
            and self._same_body()
            and not self.rewrite
            and inputs == self._last_inputs
        )
        if same and self._timeless:
            return self._last_decision, None
        decision = None if current is None else self.decide(reading, current, now)
        if decision is not None and current is not None and decision.replicas != current:
            return decision, self._scale(reading, decision, current, target, now, problem, seen, snap)
        if same and decision == self._last_decision:
            return decision, None
        self.report(reading, decision, current, target, now, problem, seen)
        self._remember(inputs, reading, decision, current)
        return decision, None

    def _same_body(self) -> bool:
        """The body the last full tick read: the same object with the same spec and metadata objects (kopf
        brings new ones with every event, also when it replaces a live body's contents)."""
        last = self._last_body
        return (
            last is not None
            and last[0] is self.body
            and last[1] is self.body.get("spec")
            and last[2] is self.body.get("metadata")
        )

    async def _scale(
        self,
        reading: Reading,
        decision: Decision,
        current: int,
        target: str,
        now: float,
        problem: str | None,
        seen: Replicas | None,
        snap: Snapshot | None = None,
    ) -> None:
        await self.kube.set_replicas(self.namespace, target, decision.replicas)
        self.pending = (decision.replicas, now + PENDING_SECONDS)
        self.report(reading, decision, current, target, now, problem, seen)
        if snap is not None:  # where a scale's time went: the read, the wait for the tick, the replica write
            read = snap.read_seconds
            log.info("%s/%s: scale timing: read began %.3f and took %.3fs, decided %.3fs after it, written %.3fs "
                     "after that", self.namespace, self.name, snap.fetched_at - read, read, now - snap.fetched_at,
                     self.clock() - now)  # fmt: skip
        self._last_inputs = None  # the next tick reads the replica count written: no fast path until it settles

    def _remember(
        self, inputs: tuple[Any, ...], reading: Reading, decision: Decision | None, current: int | None
    ) -> None:
        """What the fast path compares the next tick with."""
        self._last_body = (self.body, self.body.get("spec"), self.body.get("metadata"))
        self._last_inputs, self._last_decision = inputs, decision
        q = reading.queue
        self._timeless = (
            decision is not None
            and q is not None
            and q.ready == 0
            and q.unacked == 0
            and not decision.active
            and not decision.fallback
            and decision.replicas == current == self.policy.min_replicas
            and decision.history.consecutive_failures == 0
            and len(decision.history.recommendations) <= 1
        )

    def decide(self, reading: Reading, current: int, now: float) -> Decision:
        if self.paused:
            obs, stale_after = reading.observation, self.policy.rate_stale_seconds
            active = obs is not None and is_active(obs, stale_after)
            decision = Decision(current, f"Paused: {PAUSED_ANNOTATION} holds {current}", False, self.history,
                                active=active)  # fmt: skip
        else:
            decision = decide(self.policy, reading.observation, self.history, current, now)
        self.history = decision.history
        return decision

    def report(
        self,
        reading: Reading,
        decision: Decision | None,
        current: int | None,
        target: str,
        now: float,
        problem: str | None = None,
        observed: Replicas | None = None,
    ) -> None:
        previous = self.last_status.get("conditions") or []
        self._post_events(previous, reading, decision, current, target, problem)
        self._record_metrics(reading, decision, current, observed)
        generation = (self.body.get("metadata") or {}).get("generation")
        status = build_status(
            previous,
            reading,
            decision,
            current=current,
            observed=observed,
            target=target,
            paused=self.paused,
            generation=generation,
            now=now,
            target_problem=problem,
        )
        queue = status.get("queue")
        if queue is not None and queue.get("lastPublishTime") is None:  # none seen since this operator started:
            queue["lastPublishTime"] = (self.last_status.get("queue") or {}).get("lastPublishTime")  # the last known
        self.queue_status(status)

    def _post_events(
        self,
        previous: Conditions,
        reading: Reading,
        decision: Decision | None,
        current: int | None,
        target: str,
        problem: str | None,
    ) -> None:
        """Events on a change only: the broker lost, the target lost, a scale, a fallback begun."""
        if not reading.reachable and condition_status(previous, "BrokerReachable") != "False":
            kopf.warn(self.body, reason="BrokerUnreachable", message=reading.why)
        if current is None or decision is None:
            if condition_status(previous, "Ready") != "False":
                reason, message = ("TargetNotOwned", problem) if problem else ("TargetNotFound", "not found")
                kopf.warn(self.body, reason=reason, message=f"Deployment {target} {message}")
            return
        if decision.replicas != current:
            up = decision.replicas > current
            message = f"{target}: {current} -> {decision.replicas}: {decision.reason}"
            kopf.info(self.body, reason="ScaledUp" if up else "ScaledDown", message=message)
            log.info(
                "%s/%s: %s %d -> %d: %s", self.namespace, self.name, target, current, decision.replicas, decision.reason
            )
        if decision.fallback and not self.fallback_active:
            kopf.warn(self.body, reason="FallbackActive", message=decision.reason)
        self.fallback_active = decision.fallback

    def _record_metrics(
        self, reading: Reading, decision: Decision | None, current: int | None, observed: Replicas | None
    ) -> None:
        m, q = self.metrics, reading.queue
        self._series("available", m.queue_metrics_available).set(0 if q is None else 1)
        if current is None or decision is None:
            return
        if decision.replicas != current:
            m.scale_events.labels("up" if decision.replicas > current else "down").inc()
        if q is not None:
            self._series("ready", m.queue_messages, "ready").set(q.ready)
            self._series("unacked", m.queue_messages, "unacked").set(q.unacked)
        self._series("desired", m.replicas_desired).set(decision.replicas)
        if observed is not None:
            self._series("current", m.replicas_current).set(observed.current)
        self._series("max", m.replicas_max).set(int(self.spec.get("maxReplicas", 0)))

    def _series(self, key: str, metric: Any, *extra: str) -> Any:
        """This QueueWorker's child of a labelled metric, looked up once (labels() costs more than the tick's
        decision; created on first use only, so a value never known is never exported as 0)."""
        child = self._children.get(key)
        if child is None:
            child = self._children[key] = metric.labels(self.namespace, self.name, *extra)
        return child

    def queue_status(self, patch: dict[str, Any]) -> None:
        """Queue the status patch when `should_write` says so; the tick does not wait for the write (one queued
        behind a write in flight merges with it, latest wins). A patch not written is not lost: the next one is
        built from the same in-memory history and compared with what was last written. A patch whose write failed
        (retries exhausted) goes under the next one and that one is written whatever changed, so a scale's
        lastScaleTime is not lost with it. `_settled`: what was built is what was written (the fast path may
        skip the next report)."""
        patch = {**self.unwritten, **patch}
        merged = applied({**self.last_status, **patch})
        now = self.clock()
        if not self.rewrite and not should_write(self.last_status, merged, now - self.last_write, self.min_interval):
            self._settled = merged == self.last_status
            self._held = None if self._settled else patch
            return
        self._write(patch, merged, now)

    def _write(self, patch: dict[str, Any], merged: dict[str, Any], now: float) -> asyncio.Future[None]:
        self.last_status, self.last_write, self.unwritten, self.rewrite = merged, now, {}, False
        self._settled, self._held = True, None
        fut = self.kube.queue_status(self.namespace, self.name, patch)
        fut.add_done_callback(lambda f: self._written(patch, f))
        return fut

    def flush(self) -> asyncio.Future[None] | None:
        """Write the status held back since the last write (only churning values changed: a busy queue's
        history, depth, rates), or None when there is none: on shutdown, so the next operator starts from this
        one's last lastActiveTime and recommendations, not from up to min_interval seconds before them."""
        if self._held is None:
            return None
        patch = self._held
        return self._write(patch, applied({**self.last_status, **patch}), self.clock())

    def _written(self, patch: dict[str, Any], fut: asyncio.Future[None]) -> None:
        if fut.cancelled():
            return
        exc = fut.exception()
        if exc is None:
            return
        self.unwritten, self.rewrite = {**self.unwritten, **patch}, True
        self.metrics.reconcile_errors.inc()
        log.warning("%s/%s: status write failed, the next tick writes it again: %s", self.namespace, self.name, exc)
