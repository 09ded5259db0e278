import pytest
from qw_core.topology import (
    DEAD_EXCHANGE,
    RETRY_EXCHANGE,
    TASKS_EXCHANGE,
    build_topology,
    dead_queue_name,
    queue_name,
    retry_delay_ms,
    retry_queue_name,
)


@pytest.mark.parametrize(("attempt", "expected"), [(1, 1000), (2, 5000), (3, 30000), (4, 30000), (10, 30000)])
def test_backoff_uses_the_table_and_repeats_the_last_delay(attempt, expected):
    assert retry_delay_ms(attempt, [1000, 5000, 30000]) == expected


def test_attempt_zero_is_a_programming_error():
    with pytest.raises(ValueError):
        retry_delay_ms(0, [1000])


def test_work_queue_dead_letters_at_least_once_to_its_dlq():
    topo = build_topology(["image"], [1000], delivery_limit=7)
    args = topo.queue(queue_name("image")).arguments
    assert args["x-queue-type"] == "quorum"
    assert args["x-delivery-limit"] == 7
    assert args["x-dead-letter-exchange"] == DEAD_EXCHANGE
    assert args["x-dead-letter-strategy"] == "at-least-once"
    assert args["x-overflow"] == "reject-publish"  # required by at-least-once
    assert (DEAD_EXCHANGE, "image") in topo.queue(dead_queue_name("image")).bindings


def test_delay_queue_returns_messages_to_the_work_queue_after_its_ttl():
    topo = build_topology(["email"], [1000, 5000, 1000], delivery_limit=5)
    q = topo.queue(retry_queue_name("email", 5000))
    assert q.arguments["x-message-ttl"] == 5000
    assert q.arguments["x-dead-letter-exchange"] == TASKS_EXCHANGE
    assert q.arguments["x-dead-letter-routing-key"] == "email"
    assert q.bindings == ((RETRY_EXCHANGE, "email.5000"),)
    assert len([x for x in topo.queues if ".retry." in x.name]) == 2  # duplicates collapse


def test_exchanges_are_declared_before_the_queues_that_name_them():
    topo = build_topology(["image", "email"], [1000], 5)
    names = [e.name for e in topo.exchanges]
    assert names.index(DEAD_EXCHANGE) == 0
