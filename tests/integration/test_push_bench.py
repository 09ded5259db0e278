"""The push benchmark's short version (bench/bench_push.py): behaviour only, never its figures. 200 subscribers of
one `python -m qw_api`, each following its own task; a writer changes 40 of the tasks as a worker would."""

from __future__ import annotations

import pytest

from bench.bench_push import run_one

pytestmark = pytest.mark.integration


def test_every_subscriber_gets_its_change_pushed_and_the_store_is_not_read_meanwhile(amqp_url):
    out = run_one(amqp_url, 200, push=True, changes=40, rate=40)
    assert (out["received"], out["changes"], out["unexpected_frames"]) == (40, 40, 0), out
    assert out["store_tx_per_s"] == 0.0, out  # pushed: no stream reads the store while nothing resyncs


def test_the_polling_fallback_delivers_the_same_changes_by_reading_the_store(amqp_url):
    out = run_one(amqp_url, 200, push=False, changes=40, rate=40)
    assert (out["received"], out["unexpected_frames"]) == (40, 0), out
    assert out["store_tx_per_s"] > 0, out  # what push saves: every open stream reads the store
