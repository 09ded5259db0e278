"""A status event's body (qw_core.events.encode): every field a subscriber reads, never where the upload lies, and
any text a task may carry, a lone surrogate from a worker's error message included."""

from __future__ import annotations

import json

import pytest
from qw_core.events import decode, encode
from qw_core.store import TaskRecord


@pytest.mark.parametrize("error", [None, "caf\u00e9 \U0001f600", "bad \udc80 bytes", 'quote " and \\ slash'])
def test_an_event_carries_the_record_but_its_upload_key(error):
    rec = TaskRecord(
        "t1", "acme", "image", "failed", 2, error, "uploads/acme/secret.png", "results/t1.webp", 1,
        1_700_000_000.0, 1_700_000_000.123456, '{"n": 1}', None, 7,
    )  # fmt: skip
    body = encode(rec)
    assert "source_key" not in json.loads(body) and b"secret" not in body
    assert decode(body) == TaskRecord(**{**rec.__dict__, "source_key": None})
