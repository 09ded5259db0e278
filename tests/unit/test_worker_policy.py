"""Pure decisions of the worker runtime: attempt numbers, retry-or-dead, reconnect backoff, metrics names."""

from __future__ import annotations

import logging

import pytest
from prometheus_client import CollectorRegistry
from qw_core.topology import H_ATTEMPT
from qw_workers.errors import PermanentError, RetryableError
from qw_workers.metrics import WorkerMetrics
from qw_workers.middleware import Delivery, LoggingMiddleware, MetricsMiddleware, Result
from qw_workers.policy import Decision, attempt_of, decide_failure, describe, reconnect_delay

DELAYS = [200, 400]


@pytest.mark.parametrize(
    ("headers", "attempt"),
    [(None, 1), ({}, 1), ({H_ATTEMPT: 0}, 1), ({H_ATTEMPT: 2}, 3), ({H_ATTEMPT: "x"}, 1), ({H_ATTEMPT: -5}, 1)],
)
def test_attempt_of_header(headers, attempt):
    assert attempt_of(headers) == attempt


@pytest.mark.parametrize(
    ("error", "attempt", "expected"),
    [
        (RetryableError("451"), 1, Decision("retry", delay_ms=200)),
        (RetryableError("451"), 2, Decision("retry", delay_ms=400)),
        (RuntimeError("anything else"), 2, Decision("retry", delay_ms=400)),
        (RetryableError("451"), 3, Decision("dead", reason="exhausted")),
        (RetryableError("451"), 9, Decision("dead", reason="exhausted")),
        (PermanentError("550"), 1, Decision("failed", reason="permanent")),
        (PermanentError("550"), 3, Decision("failed", reason="permanent")),
    ],
)
def test_decide_failure(error, attempt, expected):
    assert decide_failure(error, attempt, max_attempts=3, delays=DELAYS) == expected


def test_last_delay_repeats_with_many_attempts():
    assert decide_failure(RetryableError(), 7, max_attempts=10, delays=DELAYS).delay_ms == 400


@pytest.mark.parametrize(
    ("failures", "lo", "hi"), [(0, 0, 0), (1, 0.25, 0.5), (2, 0.5, 1.0), (4, 2.0, 4.0), (50, 15, 30)]
)
def test_reconnect_delay_is_capped_exponential_with_jitter(failures, lo, hi):
    assert reconnect_delay(failures, rand=lambda: 0.0) == pytest.approx(lo)
    assert reconnect_delay(failures, rand=lambda: 1.0) == pytest.approx(hi)


def test_describe_is_one_line_and_bounded():
    text = describe(ValueError("a\r\nb" + "x" * 1000))
    assert "\n" not in text and "\r" not in text and text.startswith("ValueError: a  b") and len(text) <= 500


def test_metrics_names_units_and_labels():
    reg = CollectorRegistry()
    mw = MetricsMiddleware(WorkerMetrics("email", reg))
    d = Delivery("email", 1, 1, b"", "t1", {}, False)
    for outcome, reason in [("succeeded", None), ("retried", None), ("dead", "exhausted")]:
        mw.before_process(d)
        mw.after_process(d, Result(outcome, "t1", 1, 0.25, reason))
    mw.on_connection(True)
    get = reg.get_sample_value
    assert get("queueworker_worker_tasks_processed_total", {"kind": "email", "outcome": "succeeded"}) == 1
    assert get("queueworker_worker_tasks_processed_total", {"kind": "email", "outcome": "duplicate"}) == 0
    assert get("queueworker_worker_retries_total", {"kind": "email"}) == 1
    assert get("queueworker_worker_dead_letters_total", {"kind": "email", "reason": "exhausted"}) == 1
    assert get("queueworker_worker_task_duration_seconds_count", {"kind": "email"}) == 3
    assert get("queueworker_worker_tasks_in_progress", {"kind": "email"}) == 0
    assert get("queueworker_worker_last_success_timestamp_seconds", {"kind": "email"}) > 0
    assert get("queueworker_worker_broker_connected", {"kind": "email"}) == 1
    for metric in reg.collect():
        for sample in metric.samples:
            assert "task_id" not in sample.labels and "tenant" not in sample.labels


@pytest.mark.parametrize(
    ("result", "line"),
    [
        (Result("succeeded", "t1", 1, 0.25), "task t1 succeeded (email, attempt 1, 0.250s)"),
        (
            Result("failed", "t1", 2, 0.5, "permanent", "PermanentError: 550 no such user"),
            "task t1 failed (email, attempt 2, 0.500s): permanent: PermanentError: 550 no such user",
        ),
        (
            Result("retried", "t1", 1, 0.1, None, "RetryableError: 451"),
            "task t1 retried (email, attempt 1, 0.100s): RetryableError: 451",
        ),
        (
            Result("failed", None, 1, 0.0, "undecodable", "ValueError: x"),
            "task m1 failed (email, attempt 1, 0.000s): undecodable: ValueError: x",
        ),
    ],
)
def test_task_log_line_names_the_task_and_says_why_in_plain_text(result, line, caplog):
    """The text log format shows only the message (no extra fields): the message itself must say which task, why."""
    caplog.set_level(logging.INFO, logger="test.tasks")
    LoggingMiddleware(logging.getLogger("test.tasks")).after_process(
        Delivery("email", 1, 1, b"", "m1", {}, False), result
    )
    (record,) = caplog.records
    assert record.getMessage() == line
    fields = (record.task_id, getattr(record, "reason", None), getattr(record, "error", None))  # type: ignore[attr-defined]
    assert fields == (result.task_id or "m1", result.reason, result.error)


def test_store_outage_metrics_count_each_failure_and_show_the_store_down_until_a_success():
    reg = CollectorRegistry()
    metrics = WorkerMetrics("image", reg)
    get = reg.get_sample_value
    assert get("queueworker_worker_store_unavailable_total", {"kind": "image"}) == 0
    assert get("queueworker_worker_store_up", {"kind": "image"}) == 1
    assert get("queueworker_worker_tasks_processed_total", {"kind": "image", "outcome": "requeued"}) == 0
    metrics.store_event(False)
    metrics.store_event(False)
    assert get("queueworker_worker_store_unavailable_total", {"kind": "image"}) == 2
    assert get("queueworker_worker_store_up", {"kind": "image"}) == 0
    metrics.store_event(True)
    assert get("queueworker_worker_store_up", {"kind": "image"}) == 1
