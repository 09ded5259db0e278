"""The rabbitmq_prometheus per-object parser and counter rates: pure, table by table. The sample text is what
RabbitMQ 4.0.5 answered here (a quorum queue with 8 published, 2 delivered, one consumer)."""

from __future__ import annotations

import pytest
from qw_operator.prometheus import CounterRates, Scrape, merge_depth, parse_scrape

REAL_4_0_5 = r"""# TYPE rabbitmq_detailed_queue_messages_ready gauge
rabbitmq_detailed_queue_messages_ready{vhost="/",queue="qq"} 5
rabbitmq_detailed_queue_messages_unacked{vhost="/",queue="qq"} 2
rabbitmq_detailed_queue_messages{vhost="/",queue="qq"} 7
rabbitmq_detailed_queue_process_reductions_total{vhost="/",queue="qq"} 21206
rabbitmq_detailed_queue_consumers{vhost="/",queue="qq"} 1
rabbitmq_detailed_queue_messages_delivered_ack_total{vhost="/",queue="qq"} 2
rabbitmq_detailed_queue_messages_acked_total{vhost="/",queue="qq"} 0
rabbitmq_detailed_queue_exchange_messages_published_total{vhost="/",exchange="",queue="qq"} 8
rabbitmq_detailed_queue_exchange_messages_published_total{vhost="/",exchange="qw.retry",queue="qq"} 3
rabbitmq_detailed_queue_messages_ready{vhost="/",queue="idle"} 0
rabbitmq_detailed_queue_messages_unacked{vhost="/",queue="idle"} 0
rabbitmq_detailed_queue_consumers{vhost="/",queue="idle"} 0
rabbitmq_build_info{rabbitmq_version="4.0.5",prometheus_plugin_version="4.0.5",erlang_version="27.3.4.1"} 1
rabbitmq_identity_info{rabbitmq_node="qw4@localhost",rabbitmq_cluster="qw4@vm"} 1
"""

REAL_3_10 = r"""rabbitmq_detailed_queue_messages_ready{vhost="/",queue="qq"} 5
rabbitmq_detailed_queue_messages_unacked{vhost="/",queue="qq"} 2
rabbitmq_detailed_queue_consumers{vhost="/",queue="qq"} 1
rabbitmq_build_info{rabbitmq_version="3.10.8",prometheus_plugin_version="3.10.8"} 1
"""


def test_parses_depth_counters_version_and_node() -> None:
    s = parse_scrape(REAL_4_0_5)
    assert s.depth == {("/", "qq"): (5, 2, 1), ("/", "idle"): (0, 0, 0)}
    assert s.published == {("/", "qq"): 11.0}  # summed over the exchanges that routed to it
    assert s.acked == {("/", "qq"): 0.0}
    assert (s.version, s.node, s.has_counters) == ("4.0.5", "qw4@localhost", True)


def test_3_10_has_depth_but_no_counters() -> None:
    s = parse_scrape(REAL_3_10)
    assert s.depth == {("/", "qq"): (5, 2, 1)} and not s.has_counters


def test_4x_without_any_traffic_still_has_counters() -> None:
    assert Scrape({("/", "a"): (0, 0, 0)}, version="4.1.0").has_counters
    assert not Scrape({}, version="garbage").has_counters


def test_a_queue_two_nodes_report_keeps_the_larger_backlog() -> None:
    a = Scrape({("/", "q"): (10, 0, 1), ("/", "only-a"): (1, 0, 0)})
    b = Scrape({("/", "q"): (3, 2, 1)})
    assert merge_depth([a, b]) == {("/", "q"): (10, 0, 1), ("/", "only-a"): (1, 0, 0)}
    assert merge_depth([b, a])[("/", "q")] == (10, 0, 1)


def s4(pub: float, ack: float, key: tuple[str, str] = ("/", "q")) -> Scrape:
    return Scrape({key: (0, 0, 1)}, {key: pub}, {key: ack}, "4.0.5")


Q = ("/", "q")


@pytest.mark.parametrize(
    ("samples", "expected"),
    [
        # (time, published, acked) per tick on one node -> the rate after the last tick
        ([(0, 100, 50)], None),  # one sample: unknown, not 0
        ([(0, 100, 50), (5, 150, 90)], (10.0, 8.0)),
        ([(0, 100, 50), (5, 100, 50)], (0.0, 0.0)),  # standing counters: idle
        ([(0, 100, 50), (5, 150, 90), (10, 20, 10)], (4.0, 2.0)),  # node restarted: 0 -> 20 in 5 s
        ([(0, 0, 0), (10, 100, 0), (20, 100, 0), (30, 100, 0)], (0.0, 0.0)),  # old steps leave the 15 s window
    ],
)
def test_counter_rates(samples: list[tuple[float, float, float]], expected: tuple[float, float] | None) -> None:
    rates = CounterRates(window=15.0)
    out = None
    for t, pub, ack in samples:
        out = rates.update([("n1", s4(pub, ack))], t)[Q]
    assert out == expected


def test_a_queue_new_on_a_known_node_starts_from_zero() -> None:
    rates = CounterRates()
    rates.update([("n1", s4(5, 5, ("/", "other")))], 0.0)
    assert rates.update([("n1", s4(20, 10))], 5.0)[Q] == (4.0, 2.0)


def test_rates_sum_over_nodes_and_a_node_going_away_is_not_negative() -> None:
    rates = CounterRates()
    rates.update([("a", s4(100, 100)), ("b", s4(10, 0))], 0.0)
    assert rates.update([("a", s4(150, 120)), ("b", s4(60, 30))], 5.0)[Q] == (20.0, 10.0)
    assert rates.update([("a", s4(200, 140))], 10.0)[Q] == (10.0, 4.0)  # b is down: a's own rate, never < 0


def test_3x_scrapes_give_no_counter_rates() -> None:
    assert CounterRates().update([("n", parse_scrape(REAL_3_10))], 0.0) == {}


def test_a_queue_first_seen_under_a_new_vhost_filter_is_unknown_not_a_spike() -> None:
    rates = CounterRates()
    rates.update([("n1", s4(5, 5, ("/", "other")))], 0.0, vhost="/")
    # The filter widens: a long-lived counter shows up for the first time; it must not count as 0 -> 5000 in 5 s
    assert rates.update([("n1", s4(5000, 10, ("v2", "q")))], 5.0, vhost=None)[("v2", "q")] is None


def test_a_node_gone_for_good_is_forgotten() -> None:
    rates = CounterRates()
    rates.update([("a", s4(1, 1)), ("b", s4(1, 1))], 0.0)
    rates.update([("a", s4(2, 2))], 700.0)
    assert {sid[0] for sid in rates._series} == {"a"}


def test_the_window_rate_outlives_the_publishing_and_its_age_shows_it() -> None:
    """After the last publish the 15 s window still averages it in; published_at says when it stopped."""
    rates = CounterRates(window=15.0)
    rates.update([("n1", s4(0, 0))], 0.0)
    rates.update([("n1", s4(50, 0))], 5.0)
    out = rates.update([("n1", s4(50, 0))], 10.0)[Q]
    assert out is not None and out[0] > 0 and rates.published_at[Q] == 5.0
