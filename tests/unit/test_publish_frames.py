"""The API publisher marshals a task's publish itself (qw_api.publisher.PublishFrames): the bytes must be exactly
what pika sends for the same publish, or the broker would read another message (or close the connection)."""

from __future__ import annotations

import pika
import pika.frame
import pytest
from qw_api.publisher import PublishFrames
from qw_core.topology import H_ATTEMPT


def pikas(channel: int, exchange: str, routing_key: str, body: bytes, message_id: str) -> bytes:
    props = pika.BasicProperties(
        message_id=message_id, content_type="application/json", delivery_mode=2, headers={H_ATTEMPT: 0}
    )
    method = pika.spec.Basic.Publish(exchange=exchange, routing_key=routing_key, mandatory=True)
    frames = [pika.frame.Method(channel, method).marshal(), pika.frame.Header(channel, len(body), props).marshal()]
    if body:
        frames.append(pika.frame.Body(channel, body).marshal())
    return b"".join(frames)


@pytest.mark.parametrize(
    ("channel", "exchange", "routing_key", "body", "message_id"),
    [
        (1, "qw.tasks", "email", b'{"v":1}', "5fdfa38e69ba4213b46186362262a13e"),
        (7, "qw.delay", "delay.0.1.0.0.email", b"x" * 4000, "a"),
        (1, "", "queue-\u00e9", b"", "id-\u00fc"),  # the default exchange, non-ASCII names, an empty body
        (65535, "qw.tasks", "k" * 255, b"\x00\xce" * 100, "m" * 255),
    ],
)
def test_the_frames_are_pikas_own(channel, exchange, routing_key, body, message_id):
    frames = PublishFrames(channel, body_max=131072 - 8)
    assert frames.marshal(exchange, routing_key, body, message_id) == pikas(
        channel, exchange, routing_key, body, message_id
    )
    # the second publish to the same exchange and key (its method frame cached) is right too
    assert frames.marshal(exchange, routing_key, body[::-1], message_id) == pikas(
        channel, exchange, routing_key, body[::-1], message_id
    )


def test_a_message_of_another_shape_is_left_to_pika():
    frames = PublishFrames(1, body_max=100)
    assert frames.marshal("qw.tasks", "email", b"x" * 101, "id") is None  # more than one body frame
    assert frames.marshal("qw.tasks", "email", b"x", "i" * 256) is None  # pika refuses it, with its own error
