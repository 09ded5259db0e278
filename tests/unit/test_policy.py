"""The scaling policy, table by table: pure inputs -> replicas and reason; no clock, no I/O."""

from __future__ import annotations

import math

import pytest
from qw_operator.policy import Decision, History, Observation, Policy, decide

P = Policy(
    min_replicas=0,
    max_replicas=10,
    messages_per_replica=10,
    count_unacked=True,
    activation_threshold=0,
    cooldown_seconds=60,
    scale_down_stabilization_seconds=30,
    tolerance=0.1,
)
NOW = 1_000_000.0


def obs(ready: int = 0, unacked: int = 0, consumers: int = 0, pub: float = 0.0, ack: float = 0.0) -> Observation:
    return Observation(ready=ready, unacked=unacked, consumers=consumers, publish_rate=pub, ack_rate=ack)


def run(policy: Policy, o: Observation | None, current: int, history: History | None = None) -> Decision:
    return decide(policy, o, history or History(last_active=NOW), current, NOW)


@pytest.mark.parametrize(
    ("name", "policy", "o", "current", "expected", "reason"),
    [
        ("queue length", P, obs(ready=45), 1, 5, "ScaleUp"),
        ("unacked counted", P, obs(ready=20, unacked=20), 1, 4, "ScaleUp"),
        (
            "unacked ignored",
            Policy(**{**P.__dict__, "count_unacked": False}),
            obs(ready=20, unacked=20),
            1,
            2,
            "ScaleUp",
        ),
        ("clamped to max", P, obs(ready=500), 2, 10, "clamped"),
        ("clamped to min", Policy(**{**P.__dict__, "min_replicas": 3}), obs(ready=5), 3, 3, "Steady"),
        ("within tolerance", P, obs(ready=105), 10, 10, "within tolerance"),
        ("just outside tolerance", P, obs(ready=89), 10, 10, "stabilized"),  # down, but the window holds it
        ("activation: one message wakes it", P, obs(ready=1), 0, 1, "ScaleUp"),
        (
            "activation threshold not met",
            Policy(**{**P.__dict__, "activation_threshold": 5}),
            obs(ready=4),
            0,
            0,
            "Inactive",
        ),
        (
            "activation threshold met",
            Policy(**{**P.__dict__, "activation_threshold": 5}),
            obs(ready=5),
            0,
            1,
            "ScaleUp",
        ),
        ("empty and zero stays zero", P, obs(), 0, 0, "Steady"),
        ("step up limited", Policy(**{**P.__dict__, "max_step_up": 2}), obs(ready=100), 1, 3, "step limited"),
    ],
)
def test_table(name: str, policy: Policy, o: Observation, current: int, expected: int, reason: str) -> None:
    d = run(policy, o, current)
    assert d.replicas == expected, (name, d)
    assert reason in d.reason, (name, d.reason)


def test_limited_flag_when_max_clamps_or_step_limits() -> None:
    assert run(P, obs(ready=500), 2).limited
    assert run(Policy(**{**P.__dict__, "max_step_up": 1}), obs(ready=50), 1).limited
    assert not run(P, obs(ready=50), 1).limited


def test_scale_down_waits_for_the_stabilization_window_then_follows_the_max_in_it() -> None:
    # Given 8 replicas recommended at t=0, then the queue shrinks to what needs 2 replicas
    h = decide(P, obs(ready=80), History(), 8, 0.0).history
    d = decide(P, obs(ready=20), h, 8, 10.0)
    assert d.replicas == 8 and "stabilized" in d.reason
    d = decide(P, obs(ready=50), d.history, 8, 20.0)  # a bump to 5 inside the window
    assert d.replicas == 8
    # When the 8 leaves the window (30 s after t=10), the max in it is the 5 recorded at t=20
    d = decide(P, obs(ready=20), d.history, 8, 41.0)
    assert d.replicas == 5
    # The 5 stayed the recommendation until t=41, so it rules the window until t=71
    d = decide(P, obs(ready=20), d.history, 5, 70.0)
    assert d.replicas == 5
    d = decide(P, obs(ready=20), d.history, 5, 72.0)
    assert d.replicas == 2 and d.reason.startswith("ScaleDown")


def test_scale_up_is_immediate_even_inside_a_window() -> None:
    h = decide(P, obs(ready=20), History(), 2, 0.0).history
    assert decide(P, obs(ready=90), h, 2, 1.0).replicas == 9


def test_step_down_limit() -> None:
    p = Policy(**{**P.__dict__, "max_step_down": 2, "scale_down_stabilization_seconds": 0})
    d = decide(p, obs(ready=10), History(last_active=0.0), 8, 100.0)
    assert d.replicas == 6 and d.limited


def test_cooldown_keeps_one_replica_then_goes_to_zero_bypassing_the_window() -> None:
    h = History(last_active=0.0)
    d = decide(P, obs(), h, 3, 30.0)  # idle for 30 s < 60 s cooldown: recommend 1, window holds 3
    assert d.replicas == 3
    d = decide(P, obs(), d.history, 3, 59.0)
    assert d.replicas == 1 or d.replicas == 3
    d = decide(P, obs(), d.history, 3, 60.0)
    assert d.replicas == 0 and "Cooldown" in d.reason


def test_an_unknown_publish_rate_never_scales_to_zero() -> None:
    """An empty queue whose rate no source has yet (the first Prometheus counter sample on 4.x) may be drained as
    fast as it fills: the cooldown keeps one replica instead of reading the missing rate as 0."""
    unknown = Observation(ready=0, unacked=0, consumers=3, publish_rate=None, ack_rate=None)
    d = decide(P, unknown, History(last_active=0.0), 1, 1000.0)
    assert d.replicas == 1 and "unknown" in d.reason
    d = decide(P, obs(consumers=1), d.history, 1, 1001.0)  # the rate arrives: 0 -> idle long enough -> zero
    assert d.replicas == 0


def test_unknown_rates_still_scale_up_from_depth() -> None:
    d = decide(P, Observation(ready=45, unacked=0, publish_rate=None, ack_rate=None), History(), 1, NOW)
    assert d.replicas == 5


def test_unacked_work_in_flight_counts_as_activity() -> None:
    d = decide(P, obs(unacked=1), History(last_active=0.0), 1, 1000.0)
    assert d.replicas == 1 and d.history.last_active == 1000.0


def test_min_replicas_above_zero_never_reaches_zero() -> None:
    p = Policy(**{**P.__dict__, "min_replicas": 2, "scale_down_stabilization_seconds": 0})
    assert decide(p, obs(), History(last_active=0.0), 5, 1000.0).replicas == 2


def test_metrics_failure_holds_replicas_and_never_scales_to_zero() -> None:
    d = run(P, None, 4)
    assert d.replicas == 4 and "MetricsUnavailable" in d.reason and d.history.consecutive_failures == 1
    d = decide(P, None, d.history, 4, NOW + 5)
    assert d.replicas == 4 and d.history.consecutive_failures == 2


def test_fallback_after_threshold_and_reset_on_success() -> None:
    p = Policy(**{**P.__dict__, "fallback_failure_threshold": 3, "fallback_replicas": 2})
    h = History()
    for expected in (5, 5, 2, 2):
        d = decide(p, None, h, 5, NOW)
        assert d.replicas == expected
        h = d.history
    assert d.fallback and "Fallback" in d.reason
    d = decide(p, obs(ready=30), h, 2, NOW)
    assert d.replicas == 3 and d.history.consecutive_failures == 0


def test_history_stays_small_under_a_steady_recommendation() -> None:
    h = History()
    for t in range(0, 3600, 5):
        h = decide(P, obs(ready=50), h, 5, float(t)).history
    assert len(h.recommendations) == 1


class TestDrainTime:
    p = Policy(**{**P.__dict__, "mode": "DrainTime", "target_drain_seconds": 10, "max_replicas": 50})

    def test_falls_back_to_queue_length_until_an_ack_rate_is_known(self) -> None:
        d = run(self.p, obs(ready=40, pub=5.0), 0)
        assert d.replicas == 4 and "no ack rate" in d.reason

    def test_replicas_to_drain_the_backlog_in_time_while_keeping_up_with_arrivals(self) -> None:
        # 2 replicas ack 10/s together -> 5/s each; arrivals 20/s, backlog 300 -> (20 + 30) / 5 = 10
        d = run(self.p, obs(ready=300, consumers=2, pub=20.0, ack=10.0), 2)
        assert d.replicas == 10, d.reason
        assert d.history.per_replica_ack_rate == pytest.approx(5.0)

    def test_rate_is_remembered_when_the_fleet_is_idle(self) -> None:
        h = History(last_active=NOW, per_replica_ack_rate=4.0)
        d = decide(self.p, obs(ready=0, pub=8.0), h, 2, NOW)
        assert d.replicas == 2 and d.history.per_replica_ack_rate == 4.0

    def test_half_started_fleet_does_not_skew_the_rate(self) -> None:
        h = History(last_active=NOW, per_replica_ack_rate=5.0)
        d = decide(self.p, obs(ready=100, consumers=1, ack=5.0), h, 4, NOW)
        assert d.history.per_replica_ack_rate == 5.0


def test_policy_from_spec_reads_the_crd_fields() -> None:
    spec = {
        "minReplicas": 1,
        "maxReplicas": 7,
        "scaling": {
            "mode": "DrainTime",
            "targetDrainSeconds": 30,
            "messagesPerReplica": 5,
            "countUnacked": False,
            "activationThreshold": 3,
            "cooldownSeconds": 9,
            "scaleDownStabilizationSeconds": 4,
            "maxStepUp": 2,
            "maxStepDown": 1,
            "tolerance": 0.2,
        },
        "fallback": {"failureThreshold": 3, "replicas": 2},
    }
    p = Policy.from_spec(spec)
    assert (p.min_replicas, p.max_replicas, p.mode, p.target_drain_seconds) == (1, 7, "DrainTime", 30.0)
    assert (p.messages_per_replica, p.count_unacked, p.activation_threshold) == (5, False, 3)
    assert (p.cooldown_seconds, p.scale_down_stabilization_seconds, p.max_step_up, p.max_step_down) == (9, 4, 2, 1)
    assert (p.tolerance, p.fallback_failure_threshold, p.fallback_replicas) == (0.2, 3, 2)
    assert Policy.from_spec({"maxReplicas": 3}).fallback_replicas is None


def simulate(policy: Policy, arrivals: list[float], service_rate: float, interval: int = 5) -> list[int]:
    """Queue + workers in 1 s steps; decide() every `interval` s. Returns replicas after each decision."""
    backlog, replicas, h, out = 0.0, policy.min_replicas, History(), []
    for t, lam in enumerate(arrivals):
        backlog += lam
        done = min(backlog, replicas * service_rate)
        backlog -= done
        if t % interval == 0:
            unacked = min(backlog, replicas * 2)
            o = Observation(
                ready=int(backlog - unacked),
                unacked=int(unacked),
                consumers=replicas,
                publish_rate=lam,
                ack_rate=done,
            )
            d = decide(policy, o, h, replicas, float(t))
            replicas, h = d.replicas, d.history
            out.append(replicas)
    return out


def direction_changes(series: list[int]) -> int:
    steps = [b - a for a, b in zip(series, series[1:], strict=False) if b != a]
    return sum(1 for a, b in zip(steps, steps[1:], strict=False) if (a > 0) != (b > 0))


@pytest.mark.parametrize("mode", ["QueueLength", "DrainTime"])
def test_steady_load_does_not_flap(mode: str) -> None:
    # Given arrivals ramping up to a steady 47 msg/s (+-10 % noise) and workers that each serve 5 msg/s
    p = Policy(
        min_replicas=0,
        max_replicas=30,
        mode=mode,  # type: ignore[arg-type]
        messages_per_replica=5,
        target_drain_seconds=20,
        cooldown_seconds=60,
        scale_down_stabilization_seconds=60,
    )
    arrivals = [47 * min(1.0, t / 300) * (1 + 0.1 * math.sin(t / 3.7)) for t in range(1800)]
    series = simulate(p, arrivals, service_rate=5.0)
    steady = series[len(series) // 3 :]
    # Then after the ramp-up the replica count settles: no up-down oscillation, few changes at all
    assert direction_changes(steady) == 0, steady
    assert len(set(steady)) <= 2, steady
    assert min(steady) * 5 >= 47  # and it keeps up with the arrivals


def test_burst_then_silence_scales_up_then_down_to_zero() -> None:
    p = Policy(max_replicas=20, messages_per_replica=10, cooldown_seconds=30, scale_down_stabilization_seconds=30)
    arrivals = [50.0] * 120 + [0.0] * 300
    series = simulate(p, arrivals, service_rate=5.0)
    assert max(series) >= 8
    assert series[-1] == 0
    assert direction_changes(series) <= 1  # up, then down: once


def test_keep_up_guard_stops_a_scale_down_below_the_arrival_rate() -> None:
    # Given a drained queue but 40 msg/s arriving and 5 acks/s per replica measured
    p = Policy(**{**P.__dict__, "scale_down_stabilization_seconds": 0})
    h = History(last_active=NOW, per_replica_ack_rate=5.0)
    d = decide(p, obs(ready=0, pub=40.0), h, 10, NOW)
    # Then it keeps the 8 replicas the arrivals need, not the 1 the empty queue suggests
    assert d.replicas == 8 and "keep-up guard" in d.reason


# --- deferrals (a rate limit: qw_workers.errors.Deferred) -------------------------------------------------------


def test_a_deferral_is_never_dead_and_waits_at_least_what_it_asked():
    from qw_workers.errors import Deferred
    from qw_workers.policy import decide_failure, deferrals_of

    delays = [1_000, 5_000, 30_000]
    for draw, expected in ((0.0, 7_000), (1.0, 8_400)):
        decision = decide_failure(Deferred("rate", 7), 99, 3, delays, jitter=0.2, rand=lambda d=draw: d)
        assert (decision.action, decision.delay_ms) == ("defer", expected)
    assert [deferrals_of(h) for h in (None, {}, {"x-qw-deferred": 3}, {"x-qw-deferred": "x"})] == [0, 0, 3, 0]


@pytest.mark.parametrize(
    ("age", "active"),
    [(None, True), (0.5, True), (2.0, True), (2.1, False), (14.0, False)],
)
def test_a_stale_publish_rate_is_not_activity(age: float | None, active: bool) -> None:
    """After a purge the rate is still held (management API) or averaged (counter window) for up to 15 s, but the
    publish counter stopped: a rate whose counter has not grown for over rate_stale_seconds (2 s here) is history.
    Given an empty queue, idle since t=0 but for that rate: the cooldown (60 s) counts from t=0 once it is stale."""
    o = Observation(ready=0, unacked=0, consumers=1, publish_rate=3.0, ack_rate=3.0, publish_age=age)
    d = decide(P, o, History(last_active=0.0), 1, 100.0)
    assert d.history.last_active == (100.0 if active else 0.0)
    assert d.replicas == (1 if active else 0)


def test_the_rate_goes_stale_after_two_polling_intervals_at_least_2_seconds() -> None:
    assert Policy.from_spec({"pollingInterval": 1}).rate_stale_seconds == 2.0
    assert Policy.from_spec({"pollingInterval": 5}).rate_stale_seconds == 10.0
    assert Policy.from_spec({}).rate_stale_seconds == 2.0
