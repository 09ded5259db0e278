"""The scaling policy: a pure function from (spec, observation, history, now) to a decision.

No I/O and no clock: the caller passes `now` (epoch seconds) and persists the returned history (in the
QueueWorker's status), so a restarted operator continues the same stabilization window and cooldown.

Order of the steps (each one documented in the CRD's field descriptions):
1. no metrics -> hold the current replicas; after `fallback.failureThreshold` failures use `fallback.replicas`
2. raw recommendation: QueueLength (backlog / messagesPerReplica) or DrainTime (arrivals + backlog/T over the
   measured per-replica ack rate; QueueLength until an ack rate is known)
3. tolerance: within +-tolerance of the current count, keep it
4. activation (0 -> 1 needs `activationThreshold` messages) and cooldown (-> 0 only after `cooldownSeconds`
   without activity; this bypasses the stabilization window, as KEDA does)
5. clamp to [minReplicas, maxReplicas]
6. scale-down stabilization: the max recommendation over the last `scaleDownStabilizationSeconds`
7. step limits per tick (`maxStepUp`, `maxStepDown`)
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any, Literal

Mode = Literal["QueueLength", "DrainTime"]


@dataclass(frozen=True)
class Policy:
    min_replicas: int = 0
    max_replicas: int = 10
    mode: Mode = "QueueLength"
    messages_per_replica: int = 20
    count_unacked: bool = True
    target_drain_seconds: float = 60.0
    activation_threshold: int = 0
    cooldown_seconds: float = 300.0
    scale_down_stabilization_seconds: float = 300.0
    max_step_up: int | None = None
    max_step_down: int | None = None
    tolerance: float = 0.1
    fallback_failure_threshold: int | None = None
    fallback_replicas: int | None = None
    # A publish rate whose counter has not grown for longer is history, not activity (a purged queue's rate is
    # still held or averaged for up to 15 s): twice the polling interval, at least 2 s.
    rate_stale_seconds: float = 2.0

    @classmethod
    def from_spec(cls, spec: Mapping[str, Any]) -> Policy:
        """Build from a QueueWorker `spec` (camelCase, defaults as in the CRD)."""
        s = spec.get("scaling") or {}
        fb = spec.get("fallback") or {}
        d = cls()
        return cls(
            min_replicas=int(spec.get("minReplicas", d.min_replicas)),
            max_replicas=int(spec.get("maxReplicas", d.max_replicas)),
            mode=s.get("mode", d.mode),
            messages_per_replica=max(1, int(s.get("messagesPerReplica", d.messages_per_replica))),
            count_unacked=bool(s.get("countUnacked", d.count_unacked)),
            target_drain_seconds=max(1.0, float(s.get("targetDrainSeconds", d.target_drain_seconds))),
            activation_threshold=int(s.get("activationThreshold", d.activation_threshold)),
            cooldown_seconds=float(s.get("cooldownSeconds", d.cooldown_seconds)),
            scale_down_stabilization_seconds=float(
                s.get("scaleDownStabilizationSeconds", d.scale_down_stabilization_seconds)
            ),
            max_step_up=_opt_int(s.get("maxStepUp")),
            max_step_down=_opt_int(s.get("maxStepDown")),
            tolerance=float(s.get("tolerance", d.tolerance)),
            fallback_failure_threshold=_opt_int(fb.get("failureThreshold")) if fb else None,
            fallback_replicas=_opt_int(fb.get("replicas")) if fb else None,
            rate_stale_seconds=max(2.0, 2 * float(spec.get("pollingInterval") or 0)),
        )


def _opt_int(v: Any) -> int | None:
    return None if v is None else int(v)


@dataclass(frozen=True)
class Observation:
    """What the broker said about the queue, and how many replicas the Deployment asks for now."""

    ready: int
    unacked: int
    consumers: int = 0
    publish_rate: float | None = 0.0  # None: unknown (no source has a rate yet); never read as 0 for scale-to-zero
    ack_rate: float | None = 0.0
    publish_age: float | None = None  # seconds since the publish counter last grew (None: not known)


@dataclass(frozen=True)
class History:
    """State carried between ticks (persisted in status, so restarts resume it).

    `recommendations` holds change points (time, replicas): the value recommended from `time` until the next
    point. That keeps the status small (a steady recommendation is one point) and the window exact.
    """

    recommendations: tuple[tuple[float, int], ...] = ()
    last_active: float | None = None
    consecutive_failures: int = 0
    per_replica_ack_rate: float | None = None


@dataclass(frozen=True)
class Decision:
    replicas: int
    reason: str
    limited: bool = False
    history: History = field(default_factory=History)
    fallback: bool = False
    active: bool = False  # the queue had work at this tick (Active condition): backlog, or a live publish rate


def _window_max(points: tuple[tuple[float, int], ...], start: float) -> int | None:
    """Largest value in effect at any time in [start, now], given change points sorted by time."""
    before = [v for t, v in points if t < start]
    inside = [v for t, v in points if t >= start]
    values = inside + ([before[-1]] if before else [])
    return max(values) if values else None


def _record(
    points: tuple[tuple[float, int], ...], now: float, value: int, window: float
) -> tuple[tuple[float, int], ...]:
    if not points or points[-1][1] != value:
        points = (*points, (now, value))
    start = now - window
    # Keep the last point before the window (it is the value at the window's start) and everything after.
    keep_from = 0
    for i, (t, _) in enumerate(points):
        if t < start:
            keep_from = i
    return points[keep_from:]


def is_active(obs: Observation, rate_stale_seconds: float) -> bool:
    """Work waits or arrives: a backlog, or a publish rate whose counter grew within `rate_stale_seconds`."""
    stale = obs.publish_age is not None and obs.publish_age > rate_stale_seconds
    return obs.ready > 0 or obs.unacked > 0 or (not stale and (obs.publish_rate or 0.0) > 0)


def _measure_ack_rate(obs: Observation, current: int, known: float | None) -> float | None:
    """Per-replica capacity in acks/s, measured only while every replica is up (consumers >= replicas) and
    saturated (messages wait in `ready`): an idle or half-started fleet would understate it. Smoothed (EWMA)."""
    if current > 0 and obs.consumers >= current and obs.ack_rate and obs.ready > 0:
        sample = obs.ack_rate / current
        return sample if known is None else 0.5 * known + 0.5 * sample
    return known


def decide(policy: Policy, obs: Observation | None, history: History, current: int, now: float) -> Decision:
    """Desired replicas for one QueueWorker. `obs` is None when the metrics could not be read."""
    if obs is None:
        failures = history.consecutive_failures + 1
        hist = replace(history, consecutive_failures=failures)
        thr, fb = policy.fallback_failure_threshold, policy.fallback_replicas
        if thr is not None and fb is not None and failures >= thr:
            n = min(max(fb, policy.min_replicas), policy.max_replicas)
            return Decision(n, f"Fallback: {failures} consecutive metric failures, using {n}", False, hist, True)
        return Decision(
            current, f"MetricsUnavailable: holding {current} ({failures} consecutive failures)", False, hist
        )

    backlog = obs.ready + (obs.unacked if policy.count_unacked else 0)
    active = is_active(obs, policy.rate_stale_seconds)
    stale = obs.publish_age is not None and obs.publish_age > policy.rate_stale_seconds
    publish_rate = 0.0 if stale else obs.publish_rate or 0.0
    last_active = now if active else history.last_active
    ack_rate = _measure_ack_rate(obs, current, history.per_replica_ack_rate)

    # 2. raw recommendation
    exact = backlog / policy.messages_per_replica
    why = f"backlog {backlog} / {policy.messages_per_replica} per replica"
    if policy.mode == "DrainTime" and ack_rate:
        exact = (publish_rate + backlog / policy.target_drain_seconds) / ack_rate
        why = (
            f"(publish {publish_rate:.1f}/s + backlog {backlog} / {policy.target_drain_seconds:g}s)"
            f" / {ack_rate:.2f} acks/s per replica"
        )
    elif policy.mode == "DrainTime":
        why += " (DrainTime: no ack rate measured yet)"

    # 3. tolerance
    if current > 0 and abs(exact / current - 1.0) <= policy.tolerance:
        rec = current
        why += f" = {exact:.2f}, within tolerance of {current}"
    else:
        rec = math.ceil(exact - 1e-9)
        why += f" -> {rec}"

    # 4. activation and cooldown
    to_zero = False
    if current == 0 and backlog < max(1, policy.activation_threshold) and rec > 0:
        rec = 0
        why = f"Inactive: backlog {backlog} below activation threshold {max(1, policy.activation_threshold)}"
    elif current == 0 and rec == 0 and backlog >= max(1, policy.activation_threshold):
        rec = 1
        why = f"Activate: backlog {backlog}"
    elif current > 0 and rec == 0:
        idle_for = math.inf if last_active is None else now - last_active
        if policy.min_replicas == 0 and idle_for >= policy.cooldown_seconds and obs.publish_rate is None:
            rec = 1  # an empty queue with consumers may be drained as fast as it fills: idle needs a rate
            why = "Cooldown: queue empty but its publish rate is unknown yet, keeping 1"
        elif policy.min_replicas == 0 and idle_for >= policy.cooldown_seconds:
            to_zero = True
            why = f"Cooldown: idle for {_fmt(idle_for)} >= {policy.cooldown_seconds:g}s"
        else:
            rec = 1
            if policy.min_replicas == 0:
                why = f"Cooldown: idle for {_fmt(idle_for)} < {policy.cooldown_seconds:g}s, keeping 1"

    # 4b. keep-up guard: never scale down below what the current arrivals need at the measured capacity,
    # or the backlog regrows and the next tick scales straight back up (the QueueLength flap).
    if ack_rate and rec < current and not to_zero:
        keep_up = min(current, math.ceil(publish_rate / ack_rate - 1e-9))
        if keep_up > rec:
            rec = keep_up
            why += f"; keep-up guard {keep_up} (publish {publish_rate:.1f}/s at {ack_rate:.2f}/s per replica)"

    # 5. clamp
    limited = False
    clamped = min(max(rec, policy.min_replicas), policy.max_replicas)
    if clamped != rec:
        limited = rec > policy.max_replicas
        why += f"; clamped to [{policy.min_replicas}, {policy.max_replicas}]"
    rec = clamped

    # 6. stabilization (scale-down only): the max recommendation over the window
    window = policy.scale_down_stabilization_seconds
    # No history (a new QueueWorker, or status lost): the current count counts as recommended now, so the
    # first scale-down still waits a full window instead of acting on one sample.
    seed = history.recommendations or (((now, current),) if current > 0 else ())
    points = _record(seed, now, rec, window)
    target = rec
    if not to_zero and rec < current and window > 0:
        stable = _window_max(points, now - window)
        stable = rec if stable is None else stable
        target = min(current, max(rec, stable))
        if target != rec:
            why += f"; stabilized at {target} (max over {window:g}s)"

    # 7. step limits
    if target > current and policy.max_step_up is not None and target - current > policy.max_step_up:
        target, limited = current + policy.max_step_up, True
        why += f"; step limited to +{policy.max_step_up}"
    if target < current and policy.max_step_down is not None and current - target > policy.max_step_down:
        target, limited = current - policy.max_step_down, True
        why += f"; step limited to -{policy.max_step_down}"

    verb = "ScaleUp" if target > current else "ScaleDown" if target < current else "Steady"
    hist = History(points, last_active, 0, ack_rate)
    return Decision(target, f"{verb}: {why}", limited, hist, active=active)


def _fmt(seconds: float) -> str:
    return "ever" if math.isinf(seconds) else f"{seconds:.0f}s"
