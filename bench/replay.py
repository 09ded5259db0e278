"""Benchmark 5, policy replay: a discrete-time simulation (1 s steps) of a queue, its workers and an autoscaler,
replaying arrival traces against queueworker's policy and against a model of KEDA + HPA defaults.

The KEDA + HPA model uses the documented defaults:
- KEDA ScaledObject `pollingInterval` 30 s (checks activation, i.e. 0 <-> 1) and `cooldownPeriod` 300 s before
  scaling back to zero (keda.sh, "Scaling Deployments ... ScaledObject spec").
- KEDA RabbitMQ scaler, mode QueueLength, `value` 20 messages per replica, exposed to the HPA as an AverageValue
  external metric, so the HPA's desired count is ceil(queue length / 20) (keda.sh, "RabbitMQ Queue" scaler).
- HPA sync period 15 s (`--horizontal-pod-autoscaler-sync-period`), tolerance 0.1
  (`--horizontal-pod-autoscaler-tolerance`), default behavior: scale-up without stabilization, at most
  max(100 %, 4 pods) per 15 s; scale-down stabilization 300 s, at most 100 % per 15 s
  (kubernetes.io, "Horizontal Pod Autoscaling", default behavior).

Both autoscalers see the same queue (ready + unacked messages) and drive identical workers: each replica
serves `service_rate` messages/s after `start_delay` seconds of start-up. Reported per trace: p95 and max
message wait (s), max backlog, replica-seconds, scale events; and under "timelines", the series the pictures
draw (bench/plots): arrivals, backlog, replicas and task wait, in buckets of at most 600 per run.
"""

from __future__ import annotations

import math
import random
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

Trace = Callable[[int], float]  # second -> expected arrivals in that second


@dataclass
class Observation:
    now: float
    backlog: int  # ready + unacked
    publish_rate: float  # messages/s arriving, as the management API reports it (last few seconds)
    ack_rate: float  # messages/s being completed
    replicas: int  # current replicas (spec)
    consumers: int  # replicas started and consuming


class Autoscaler(Protocol):
    name: str
    interval: float

    def desired(self, obs: Observation) -> int: ...


@dataclass
class KedaHpaModel:
    """KEDA + HPA with their documented defaults (see the module docstring)."""

    min_replicas: int = 0
    max_replicas: int = 20
    target_per_replica: float = 20.0
    keda_polling: float = 30.0
    hpa_sync: float = 15.0
    cooldown: float = 300.0
    tolerance: float = 0.1
    down_window: float = 300.0
    name: str = "keda+hpa defaults"
    interval: float = 1.0  # stepped every second; it keeps its own clocks below
    _last_keda: float = -1e9
    _last_hpa: float = -1e9
    _last_active: float = -1e9
    _replicas: int = 0
    _recommendations: deque[tuple[float, int]] = field(default_factory=deque)
    _up_events: deque[tuple[float, int]] = field(default_factory=deque)

    def desired(self, obs: Observation) -> int:
        now = obs.now
        self._replicas = obs.replicas
        # KEDA: activation and scale to zero, every polling interval.
        if now - self._last_keda >= self.keda_polling:
            self._last_keda = now
            if obs.backlog > 0:
                self._last_active = now
                if self._replicas == 0:
                    self._replicas = max(1, self.min_replicas)
                    return self._replicas
            elif self._replicas > 0 and now - self._last_active >= self.cooldown:
                self._recommendations.clear()
                self._replicas = self.min_replicas
                return self._replicas
        # HPA: only while KEDA has the target at >= 1 replica.
        if self._replicas == 0 or now - self._last_hpa < self.hpa_sync:
            return self._replicas
        self._last_hpa = now
        current = self._replicas
        metric_avg = obs.backlog / current
        ratio = metric_avg / self.target_per_replica
        raw = current if abs(ratio - 1.0) <= self.tolerance else math.ceil(obs.backlog / self.target_per_replica)
        raw = max(1, min(self.max_replicas, raw))
        self._recommendations.append((now, raw))
        while self._recommendations and self._recommendations[0][0] < now - self.down_window:
            self._recommendations.popleft()
        if raw < current:  # scale-down stabilization: the highest recommendation in the window
            target = max(r for _, r in self._recommendations)
            target = max(target, current - current)  # 100 % per 15 s allows going all the way down
        else:
            limit = max(current * 2, current + 4)  # max(100 %, 4 pods) per 15 s
            target = min(raw, limit)
        self._replicas = max(1, min(self.max_replicas, target))
        return self._replicas


@dataclass
class Timeline:
    """Per-bucket series of one run: arrivals summed (then per second), the rest the bucket's maximum, so the
    series' peaks are the table's max_backlog and max_wait exactly."""

    step: int
    arrivals: list[int] = field(default_factory=list)
    backlog: list[int] = field(default_factory=list)
    replicas: list[int] = field(default_factory=list)
    wait: list[int] = field(default_factory=list)  # the longest wait of a task started in the bucket, seconds

    def add(self, now: int, arrivals: int, backlog: int, replicas: int, waits: list[int]) -> None:
        if now % self.step == 0:
            for series in (self.arrivals, self.backlog, self.replicas, self.wait):
                series.append(0)
        self.arrivals[-1] += arrivals
        self.backlog[-1] = max(self.backlog[-1], backlog)
        self.replicas[-1] = max(self.replicas[-1], replicas)
        self.wait[-1] = max([self.wait[-1], *waits])

    def as_dict(self) -> dict[str, object]:
        per_s = [round(a / self.step, 2) for a in self.arrivals]
        return {"step_s": self.step, "arrivals_per_s": per_s, "backlog": self.backlog, "replicas": self.replicas,
                "wait_s": self.wait}  # fmt: skip


@dataclass
class Result:
    name: str
    p95_wait: float
    max_wait: float
    max_backlog: int
    replica_seconds: float
    scale_events: int
    unfinished: int
    timeline: Timeline | None = None

    def as_dict(self) -> dict[str, float | int | str]:
        return {k: (round(v, 2) if isinstance(v, float) else v) for k, v in self.__dict__.items() if k != "timeline"}


def simulate(
    trace: Trace,
    scaler: Autoscaler,
    seconds: int,
    service_rate: float = 5.0,
    start_delay: float = 3.0,
    initial_replicas: int = 0,
    seed: int = 7,
    rate_window: int = 5,
    timeline_step: int = 1,
) -> Result:
    rng = random.Random(seed)
    queue: deque[int] = deque()  # arrival second of each waiting message
    waits: list[int] = []
    replicas = initial_replicas
    starting: list[float] = []  # ready-at times of replicas still starting
    ready = initial_replicas
    events = 0
    replica_seconds = 0.0
    max_backlog = 0
    arrivals_hist: deque[int] = deque(maxlen=rate_window)
    acks_hist: deque[int] = deque(maxlen=rate_window)
    credit = 0.0
    next_tick = 0.0
    timeline = Timeline(timeline_step)
    for now in range(seconds + 600):  # after the trace ends, let the queue drain (bounded)
        if now >= seconds and not queue:
            break
        n = _poisson(rng, trace(now)) if now < seconds else 0
        queue.extend([now] * n)
        arrivals_hist.append(n)
        ready += sum(1 for t in starting if t <= now)
        starting = [t for t in starting if t > now]
        credit += ready * service_rate
        served = min(len(queue), int(credit))
        credit -= served
        if not queue:
            credit = 0.0
        started = [now - queue.popleft() for _ in range(served)]
        waits.extend(started)
        acks_hist.append(served)
        max_backlog = max(max_backlog, len(queue))
        replica_seconds += replicas
        timeline.add(now, n, len(queue), replicas, started)
        if now >= next_tick:
            next_tick = now + scaler.interval
            obs = Observation(
                now=float(now),
                backlog=len(queue),
                publish_rate=sum(arrivals_hist) / len(arrivals_hist),
                ack_rate=sum(acks_hist) / len(acks_hist),
                replicas=replicas,
                consumers=ready,
            )
            want = scaler.desired(obs)
            if want != replicas:
                events += 1
                if want > replicas:
                    starting.extend([now + start_delay] * (want - replicas))
                else:  # scale-in removes starting replicas first, then ready ones
                    drop = replicas - want
                    cut = min(drop, len(starting))
                    starting = starting[: len(starting) - cut]
                    ready -= drop - cut
                replicas = want
    waits.sort()
    return Result(
        name=scaler.name,
        p95_wait=float(waits[int(0.95 * (len(waits) - 1))]) if waits else 0.0,
        max_wait=float(waits[-1]) if waits else 0.0,
        max_backlog=max_backlog,
        replica_seconds=replica_seconds,
        scale_events=events,
        unfinished=len(queue),
        timeline=timeline,
    )


def _poisson(rng: random.Random, lam: float) -> int:
    if lam <= 0:
        return 0
    if lam > 50:
        return max(0, round(rng.gauss(lam, math.sqrt(lam))))
    k, p, limit = 0, 1.0, math.exp(-lam)
    while True:
        p *= rng.random()
        if p <= limit:
            return k
        k += 1


TRACES: dict[str, tuple[Trace, int]] = {
    "steady": (lambda t: 20.0, 1800),
    "burst": (lambda t: 400.0 if 60 <= t < 70 else 0.5, 1200),
    "diurnal": (lambda t: 25.0 * (1 - math.cos(2 * math.pi * t / 1800)) / 2, 3600),
    "spiky": (lambda t: 150.0 if t % 300 < 5 else 2.0, 1800),
}


@dataclass
class QueueworkerPolicy:
    """queueworker's own policy (qw_operator.policy.decide), stepped every `interval` seconds like the operator."""

    spec: dict[str, object]
    name: str = "queueworker"
    interval: float = 5.0
    _history: object = None

    def desired(self, obs: Observation) -> int:
        from qw_operator import policy as p

        if self._history is None:
            self._history = p.History()
        o = p.Observation(
            ready=obs.backlog, unacked=0, consumers=obs.consumers, publish_rate=obs.publish_rate, ack_rate=obs.ack_rate
        )
        d = p.decide(p.Policy.from_spec(self.spec), o, self._history, obs.replicas, obs.now)  # type: ignore[arg-type]
        self._history = d.history
        return d.replicas


def scalers(max_replicas: int = 20) -> list[Autoscaler]:
    defaults: dict[str, object] = {"minReplicas": 0, "maxReplicas": max_replicas}
    tuned: dict[str, object] = {
        "minReplicas": 0, "maxReplicas": max_replicas,
        "scaling": {"mode": "DrainTime", "targetDrainSeconds": 30, "scaleDownStabilizationSeconds": 60,
                    "cooldownSeconds": 60},
    }  # fmt: skip
    return [
        KedaHpaModel(max_replicas=max_replicas),
        QueueworkerPolicy(defaults, name="queueworker defaults (5 s polling)", interval=5.0),
        QueueworkerPolicy(tuned, name="queueworker DrainTime 30 s, 60 s windows (2 s polling)", interval=2.0),
    ]


def run(traces: dict[str, tuple[Trace, int]] = TRACES, max_points: int = 600) -> dict[str, object]:
    results: dict[str, object] = {}
    timelines: dict[str, object] = {}
    for trace_name, (trace, seconds) in traces.items():
        step = max(1, math.ceil(seconds / max_points))
        runs = [simulate(trace, sc, seconds, timeline_step=step) for sc in scalers()]
        rows = [r.as_dict() for r in runs]
        base = rows[0]
        for r in rows[1:]:
            r["p95_wait_vs_keda"] = round(float(r["p95_wait"]) / max(float(base["p95_wait"]), 1e-9), 3)
            r["replica_seconds_vs_keda"] = round(float(r["replica_seconds"]) / float(base["replica_seconds"]), 3)
        results[trace_name] = rows
        timelines[trace_name] = {
            "trace_seconds": seconds,
            "runs": [{"name": r.name, **r.timeline.as_dict()} for r in runs if r.timeline is not None],
        }
    return {"benchmark": "policy-replay", "service_rate_per_replica": 5.0, "start_delay_s": 3.0, "traces": results,
            "timelines": timelines}  # fmt: skip


if __name__ == "__main__":
    import json

    print(json.dumps(run(), indent=1))
