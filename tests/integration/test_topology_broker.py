"""The declared topology on a real RabbitMQ: delayed messages come back after their delay, dead letters are kept."""

import time

import pika
import pytest
from qw_core import delays as ladder
from qw_core.topology import (
    TASKS_EXCHANGE,
    build_topology,
    dead_queue_name,
    declare_with_pika,
    queue_name,
)

from tests.support.wait import wait_for

pytestmark = [pytest.mark.integration, pytest.mark.broker_matrix]  # on RabbitMQ 3.10 and 4.x


@pytest.fixture
def channel(amqp_url):
    conn = pika.BlockingConnection(pika.URLParameters(amqp_url))
    ch = conn.channel()
    ch.confirm_delivery()
    declare_with_pika(ch, build_topology(["email"], delivery_limit=2))
    yield ch
    conn.close()


def _get(ch, queue, timeout=10.0):
    """The next message on `queue` (method, properties, body), waiting up to `timeout` seconds for one."""

    def get():
        got = ch.basic_get(queue, auto_ack=False)
        return got if got[0] else None

    return wait_for(f"a message on {queue}", get, timeout, 0.05)


def test_declaring_twice_is_harmless(amqp_url, channel):
    declare_with_pika(channel, build_topology(["email"], delivery_limit=2))


@pytest.mark.parametrize("delay_ms", [0, 300, 1_500])
def test_the_delay_ladder_sends_the_message_to_its_kind_after_its_delay(channel, delay_ms):
    start = time.monotonic()
    channel.basic_publish(
        ladder.ENTRY_EXCHANGE,
        ladder.routing_key(delay_ms, "email"),
        b"again",
        pika.BasicProperties(delivery_mode=2),
        mandatory=True,
    )
    method, props, body = _get(channel, queue_name("email"))
    waited = time.monotonic() - start
    assert body == b"again"
    assert delay_ms / 1000 - 0.05 <= waited <= delay_ms / 1000 + 1.0
    assert len(props.headers.get("x-death", []) if props.headers else []) == bin(ladder.units(delay_ms)).count("1")
    channel.basic_ack(method.delivery_tag)


def test_delivery_limit_dead_letters_a_message_that_keeps_crashing_consumers(channel):
    channel.basic_publish(TASKS_EXCHANGE, "email", b"poison", pika.BasicProperties(delivery_mode=2), mandatory=True)
    for _ in range(3):  # limit 2: the third return dead-letters it
        method, _, _ = _get(channel, queue_name("email"))
        channel.basic_nack(method.delivery_tag, requeue=True)
    method, props, body = _get(channel, dead_queue_name("email"))
    assert body == b"poison"
    assert props.headers["x-death"][0]["reason"] == "delivery_limit"
    channel.basic_ack(method.delivery_tag)


def test_unroutable_publish_is_returned_not_silently_confirmed(channel):
    with pytest.raises(pika.exceptions.UnroutableError):
        channel.basic_publish(TASKS_EXCHANGE, "no-such-kind", b"x", mandatory=True)


def test_full_queue_nacks_the_publish(broker, vhost, channel):
    """A max-length policy with reject-publish makes the broker nack: the publisher must see an error."""
    import urllib.parse

    broker.api(
        f"/api/policies/{urllib.parse.quote(vhost, safe='')}/cap",
        "PUT",
        {"pattern": "^qw\\.email$", "definition": {"max-length": 1}, "apply-to": "queues"},
    )
    accepted = 0
    with pytest.raises(pika.exceptions.NackError):
        for _ in range(50):  # policies apply asynchronously; quorum queues reject once over the limit
            channel.basic_publish(TASKS_EXCHANGE, "email", b"x", mandatory=True)
            accepted += 1
            time.sleep(0.05)
    assert accepted <= 3
