"""The API's message size limit: a setting defaulting to RabbitMQ 4.x's max_message_size, checked by the publisher
before anything touches the broker (the broker answers an oversize body by closing the shared channel)."""

import pytest
from pydantic import ValidationError
from qw_api.publisher import MessageTooLarge, Publisher, PublishUnavailable
from qw_core.messages import KINDS
from qw_core.settings import ApiSettings
from qw_core.topology import TASKS_EXCHANGE, build_topology

MIB = 1024 * 1024


def test_the_limit_defaults_to_rabbitmq_4s_16_mib_and_reads_qw_max_message_bytes(monkeypatch):
    monkeypatch.delenv("QW_MAX_MESSAGE_BYTES", raising=False)
    assert ApiSettings().max_message_bytes == 16 * MIB
    monkeypatch.setenv("QW_MAX_MESSAGE_BYTES", str(128 * MIB))  # a 3.10 broker's default
    assert ApiSettings().max_message_bytes == 128 * MIB


@pytest.mark.parametrize("value", ["0", "-1", str(512 * MIB + 1), "16MiB"])
def test_the_limit_must_be_positive_and_within_rabbitmqs_512_mib_maximum(monkeypatch, value):
    monkeypatch.setenv("QW_MAX_MESSAGE_BYTES", value)
    with pytest.raises(ValidationError, match="max_message_bytes"):
        ApiSettings()


def test_rabbitmqs_hard_maximum_itself_is_allowed(monkeypatch):
    monkeypatch.setenv("QW_MAX_MESSAGE_BYTES", str(512 * MIB))
    assert ApiSettings().max_message_bytes == 512 * MIB


async def test_the_publisher_refuses_a_body_over_the_limit_before_looking_at_the_broker():
    # A publisher that never connected: a body at the limit goes on to the connection check, one byte more does not.
    publisher = Publisher("amqp://127.0.0.1:1/", build_topology(KINDS, 5), max_message_bytes=100)
    with pytest.raises(PublishUnavailable):
        await publisher.publish(TASKS_EXCHANGE, "email", b"x" * 100, "id-1")
    with pytest.raises(MessageTooLarge) as refused:
        await publisher.publish(TASKS_EXCHANGE, "email", b"x" * 101, "id-2")
    assert (refused.value.size, refused.value.limit) == (101, 100)
    assert str(refused.value) == "the message would be 101 bytes; the broker accepts at most 100 bytes per message"
    assert not isinstance(refused.value, PublishUnavailable), "a 413, never a 503 to retry"
