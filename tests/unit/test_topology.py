import pytest
from qw_core import delays as ladder
from qw_core.settings import CommonSettings
from qw_core.topology import (
    DEAD_EXCHANGE,
    NOTIFICATIONS_QUEUE,
    TASKS_EXCHANGE,
    QueueLimits,
    build_topology,
    dead_queue_name,
    inequivalent_arg,
    queue_name,
    retry_delay_ms,
)


@pytest.mark.parametrize(("attempt", "expected"), [(1, 1000), (2, 5000), (3, 30000), (4, 30000), (10, 30000)])
def test_backoff_uses_the_table_and_repeats_the_last_delay(attempt, expected):
    assert retry_delay_ms(attempt, [1000, 5000, 30000]) == expected


def test_attempt_zero_is_a_programming_error():
    with pytest.raises(ValueError):
        retry_delay_ms(0, [1000])


def test_work_queue_dead_letters_at_least_once_to_its_dlq():
    topo = build_topology(["image"], delivery_limit=7)
    args = topo.queue(queue_name("image")).arguments
    assert args["x-queue-type"] == "quorum"
    assert args["x-delivery-limit"] == 7
    assert args["x-dead-letter-exchange"] == DEAD_EXCHANGE
    assert args["x-dead-letter-strategy"] == "at-least-once"
    assert args["x-overflow"] == "reject-publish"  # required by at-least-once
    assert (DEAD_EXCHANGE, "image") in topo.queue(dead_queue_name("image")).bindings


def test_each_rung_holds_its_bit_for_its_ttl_then_passes_the_message_down_keeping_its_routing_key():
    topo = build_topology(["email"], delivery_limit=5)
    q = topo.queue(ladder.rung_name(3))
    assert q.name == "qw.delay.800" and q.arguments["x-message-ttl"] == 800
    assert q.arguments["x-dead-letter-exchange"] == ladder.rung_name(2)
    assert "x-dead-letter-routing-key" not in q.arguments  # the route is the routing key
    assert q.arguments["x-dead-letter-strategy"] == "at-least-once"
    assert q.bindings == ((ladder.rung_name(3), "*." * (ladder.LEVELS - 4) + "1.#"),)
    # A 0 bit skips the rung at once (exchange to exchange); the last rung hands over to the kinds' queues.
    assert (ladder.rung_name(2), ladder.rung_name(3), "*." * (ladder.LEVELS - 4) + "0.#") in topo.exchange_bindings
    assert topo.queue(ladder.rung_name(0)).arguments["x-dead-letter-exchange"] == ladder.DUE_EXCHANGE
    assert (ladder.DUE_EXCHANGE, "#.email") in topo.queue(queue_name("email")).bindings
    assert (TASKS_EXCHANGE, "email") in topo.queue(queue_name("email")).bindings


def test_the_ladder_is_shared_by_every_kind_and_nothing_depends_on_retry_policies():
    one, two = build_topology(["email"], 5), build_topology(["image", "email", "inventory"], 5)
    rungs = [q for q in one.queues if q.name.startswith("qw.delay.")]
    assert len(rungs) == ladder.LEVELS and rungs == [q for q in two.queues if q.name.startswith("qw.delay.")]
    assert one.exchange_bindings == two.exchange_bindings
    assert not [q for q in two.queues if ".retry." in q.name]


def test_exchanges_are_declared_before_the_queues_that_name_them():
    topo = build_topology(["image", "email"], 5)
    names = [e.name for e in topo.exchanges]
    assert names.index(DEAD_EXCHANGE) == 0
    named = {q.arguments.get("x-dead-letter-exchange") for q in topo.queues} - {None}
    bound = {source for _, source, _ in topo.exchange_bindings} | {d for d, _, _ in topo.exchange_bindings}
    assert named | bound <= set(names)


# Bounded queues (issue 15): every queue has a length and a byte limit; which overflow depends on who reads it.
LIMITS = QueueLimits(
    work_max_length=11,
    work_max_bytes=12,
    dead_max_length=21,
    dead_max_bytes=22,
    dead_ttl_ms=23,
    log_max_length=31,
    log_max_bytes=32,
    log_ttl_ms=33,
)


@pytest.mark.parametrize(
    ("queue", "expected"),
    [
        (queue_name("email"), {"x-max-length": 11, "x-max-length-bytes": 12, "x-overflow": "reject-publish"}),
        (
            ladder.rung_name(0),
            {"x-max-length": 11, "x-max-length-bytes": 12, "x-overflow": "reject-publish", "x-message-ttl": 100},
        ),
        (
            dead_queue_name("email"),
            {"x-max-length": 21, "x-max-length-bytes": 22, "x-overflow": "drop-head", "x-message-ttl": 23},
        ),
        (
            NOTIFICATIONS_QUEUE,
            {"x-max-length": 31, "x-max-length-bytes": 32, "x-overflow": "drop-head", "x-message-ttl": 33},
        ),
    ],
)
def test_every_queue_is_bounded_by_its_limits(queue, expected):
    args = build_topology(["email"], 5, limits=LIMITS).queue(queue).arguments
    assert {k: args.get(k) for k in expected} == expected


def test_without_limits_every_queue_still_has_the_default_bounds():
    for q in build_topology(["image", "email"], 5).queues:
        assert q.arguments["x-max-length"] > 0, q.name
        assert q.arguments["x-max-length-bytes"] > 0, q.name


def test_queues_nobody_consumes_keep_the_newest_for_a_while_and_never_refuse():
    topo = build_topology(["image"], 5)
    for name in (dead_queue_name("image"), NOTIFICATIONS_QUEUE):
        args = topo.queue(name).arguments
        assert args["x-overflow"] == "drop-head"
        assert args["x-message-ttl"] > 0
        assert "x-dead-letter-exchange" not in args  # expired or dropped: gone, not moved on


def test_settings_give_the_limits_in_their_units():
    limits = CommonSettings(
        dead_letter_ttl_seconds=60, notifications_log_ttl_seconds=2, queue_max_length=7
    ).queue_limits()
    assert (limits.dead_ttl_ms, limits.log_ttl_ms, limits.work_max_length) == (60_000, 2_000, 7)
    assert CommonSettings().queue_limits() == QueueLimits()  # the defaults are the same wherever they come from


@pytest.mark.parametrize(
    ("text", "arg"),
    [
        (
            "(406, \"PRECONDITION_FAILED - inequivalent arg 'x-max-length' for queue 'qw.email' in vhost '/': "
            "received the value '100000' of type 'signedint' but current is none\")",
            "x-max-length",
        ),
        ("(406, \"PRECONDITION_FAILED - inequivalent arg 'x-queue-type' for queue 'q'\")", "x-queue-type"),
        ("(404, \"NOT_FOUND - no queue 'q' in vhost '/'\")", None),
    ],
)
def test_the_argument_a_refused_declaration_names(text, arg):
    assert inequivalent_arg(Exception(text)) == arg
