"""The delay ladder's arithmetic and the delay options' validation (qw_core.delays, the SDK's send options)."""

from __future__ import annotations

import math
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest
from queueworker import BoundTask, Client, set_default_client, task
from qw_core import delays as ladder
from qw_core.registry import Registry
from qw_workers.policy import jittered

NOW = datetime(2030, 1, 1, tzinfo=UTC)


def spelled(key: str) -> tuple[int, str]:
    """A routing key read back: (the delay in units, the kind)."""
    *bits, kind = key.split(".")
    assert len(bits) == ladder.LEVELS and set(bits) <= {"0", "1"}
    return int("".join(bits), 2), kind


@pytest.mark.parametrize(
    ("delay_ms", "units"),
    [(0, 0), (-5_000, 0), (1, 1), (100, 1), (101, 2), (3_000, 30), (86_400_000, 864_000), (10**12, 2**20 - 1)],
)
def test_a_delay_is_spelled_in_whole_units_rounded_up_and_capped_at_the_ladder(delay_ms, units):
    assert spelled(ladder.routing_key(delay_ms, "inventory")) == (units, "inventory")


def test_the_rungs_a_message_waits_in_add_up_to_its_delay_and_the_ladder_covers_a_day():
    key = ladder.routing_key(3_000, "k")
    waits = [ladder.rung_ttl_ms(level) for level in range(ladder.LEVELS) if f"{key}".split(".")[-2 - level] == "1"]
    assert sum(waits) == 3_000
    assert sum(ladder.rung_ttl_ms(level) for level in range(ladder.LEVELS)) >= ladder.MAX_DELAY_SECONDS * 1000


@pytest.mark.parametrize("level", [0, 7, ladder.LEVELS - 1])
@pytest.mark.parametrize("bit", ["0", "1"])
def test_a_rung_binding_matches_exactly_the_keys_with_its_bit(level, bit):
    """The topic pattern, checked the way RabbitMQ matches it: `*` one word, `#` the rest."""
    pattern = ladder.rung_pattern(level, int(bit)).split(".")
    for units in (0, 1, 5, 2**level, 2**ladder.LEVELS - 1, 123_456):
        words = ladder.routing_key(units * ladder.UNIT_MS, "k").split(".")
        matches = all(p in ("*", w) for p, w in zip(pattern[:-1], words, strict=False)) and pattern[-1] == "#"
        assert matches == (str((units >> level) & 1) == bit)


@pytest.mark.parametrize(
    ("delay", "not_before", "expected"),
    [
        (3, None, NOW + timedelta(seconds=3)),
        (0.5, None, NOW + timedelta(seconds=0.5)),
        (timedelta(hours=24), None, NOW + timedelta(days=1)),
        (None, NOW + timedelta(hours=2), NOW + timedelta(hours=2)),
        (None, NOW - timedelta(hours=2), NOW),  # in the past: now
        (None, (NOW + timedelta(hours=1)).astimezone(timezone(timedelta(hours=5))), NOW + timedelta(hours=1)),
        (None, None, None),
    ],
)
def test_when_a_task_may_run(delay, not_before, expected):
    assert ladder.resolve_not_before(delay, not_before, NOW) == expected


@pytest.mark.parametrize(
    ("delay", "not_before", "message"),
    [
        (0, None, "more than 0"),
        (-1, None, "more than 0"),
        (86_401, None, "at most 86400"),
        (math.nan, None, "more than 0"),
        (timedelta(days=2), None, "at most 86400"),
        (None, NOW + timedelta(days=1, seconds=1), "at most a day"),
        (None, datetime(2030, 1, 1, 12), "timezone-aware"),
        (3, NOW, "not both"),
    ],
)
def test_a_bad_delay_is_a_clear_value_error(delay, not_before, message):
    with pytest.raises(ValueError, match=message):
        ladder.resolve_not_before(delay, not_before, NOW)


def test_a_client_refuses_a_bad_delay_before_it_connects_or_writes_anything(tmp_path):
    c = Client("amqp://guest:guest@127.0.0.1:1/", database_url=f"sqlite:///{tmp_path}/qw.db", registry=Registry())
    with pytest.raises(ValueError, match="at most 86400"):
        c.enqueue("inventory", {"sku": "A"}, delay=90_000)
    with pytest.raises(ValueError, match="not both"):
        c.submit("inventory", {}, delay=1, not_before=datetime.now(UTC))
    assert c._store is None and c._publisher is None  # nothing opened


class RecordingClient(Client):
    def __init__(self) -> None:
        super().__init__("amqp://127.0.0.1:1/", registry=Registry())
        self.calls: list[tuple[str, dict[str, Any], dict[str, Any]]] = []

    def submit(self, kind: str, args: dict[str, Any], **options: Any) -> str:  # type: ignore[override]
        self.calls.append((kind, args, options))
        return "id"


def test_options_forward_to_submit_as_keyword_arguments_after_validating_the_payload():
    @task(kind="bound", registry=Registry())
    def bound(n: int) -> int:
        return n

    recorder = RecordingClient()
    previous = set_default_client(recorder)
    try:
        later = bound.options(delay=30)
        assert isinstance(later, BoundTask) and later.send_options == {"delay": 30}
        assert later.send(n=1) == "id" and bound.send(n=2) == "id"
        with pytest.raises(ValueError, match="n"):
            later.send(n="not a number")
    finally:
        set_default_client(previous)
    assert recorder.calls == [("bound", {"n": 1}, {"delay": 30}), ("bound", {"n": 2}, {})]


@pytest.mark.parametrize(("draw", "expected"), [(0.0, 800), (0.5, 1000), (1.0, 1200), (0.75, 1100)])
def test_jitter_spreads_a_delay_uniformly_within_its_fraction(draw, expected):
    assert jittered(1000, 0.2, lambda: draw) == expected


def test_no_jitter_is_the_delay_and_a_delay_never_reaches_zero():
    assert jittered(1000, 0.0, lambda: 0.9) == 1000 and jittered(1, 1.0, lambda: 0.0) == 1


def test_a_task_refuses_a_jitter_outside_0_to_1():
    with pytest.raises(ValueError, match="jitter"):
        task(kind="j", jitter=1.5, registry=Registry())
