"""The retention decisions (qw_core.retention): pure, `now` passed in."""

from __future__ import annotations

import pytest
from qw_core.retention import RetentionPolicy, another_batch, is_expired, is_stuck_pending, upload_removable

DAY = 86_400.0
NOW = 1_000_000_000.0
POLICY = RetentionPolicy(retention_seconds=7 * DAY, pending_timeout_seconds=600)
CUT = POLICY.cutoffs(NOW)


def test_cutoffs_are_now_minus_each_period():
    assert (CUT.ended_before, CUT.pending_before) == (NOW - 7 * DAY, NOW - 600)


@pytest.mark.parametrize(
    ("status", "ended_ago", "expired"),
    [
        ("succeeded", 7 * DAY + 1, True),
        ("failed", 7 * DAY + 1, True),
        ("dead", 8 * DAY, True),
        ("succeeded", 7 * DAY - 1, False),  # Given a task ended just inside the period, Then it stays
        ("succeeded", 7 * DAY, False),  # exactly at the cutoff: kept (strictly older goes)
        ("queued", 30 * DAY, False),  # never a task that has not ended, however old
        ("processing", 30 * DAY, False),
        ("pending", 30 * DAY, False),  # a stuck pending row is failed first, then expires from then on
    ],
)
def test_only_ended_tasks_older_than_the_retention_expire(status, ended_ago, expired):
    assert is_expired(status, NOW - ended_ago, CUT) is expired


@pytest.mark.parametrize(
    ("status", "written_ago", "stuck"),
    [
        ("pending", 601, True),
        ("pending", 599, False),  # a publish may still be waiting for its confirm
        ("queued", 10 * DAY, False),  # published: a worker will move it on
        ("processing", 10 * DAY, False),
    ],
)
def test_a_row_is_stuck_only_when_pending_past_the_timeout(status, written_ago, stuck):
    assert is_stuck_pending(status, NOW - written_ago, CUT) is stuck


@pytest.mark.parametrize(
    ("status", "key", "removable"),
    [
        ("succeeded", "uploads/a/x.png", True),
        ("failed", "uploads/a/x.png", True),
        ("dead", "uploads/a/x.png", True),
        ("queued", "uploads/a/x.png", False),  # a retry still reads it
        ("processing", "uploads/a/x.png", False),
        ("pending", "uploads/a/x.png", False),
        ("succeeded", None, False),
    ],
)
def test_an_upload_goes_as_soon_as_its_task_ended_and_not_before(status, key, removable):
    assert upload_removable(status, key) is removable


def test_the_stuck_error_says_what_happened_and_what_to_do():
    assert POLICY.stuck_error() == (
        "never queued: the API stopped between recording the task and publishing it (still pending after 600 s); "
        "submit it again"
    )


@pytest.mark.parametrize(("removed", "more"), [(500, True), (499, False), (0, False)])
def test_a_full_batch_asks_for_another(removed, more):
    assert another_batch(removed, 500) is more
