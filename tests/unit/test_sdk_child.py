"""A sync body with a time limit runs in its worker slot's child process (qw_workers.child): no broker, no store.

These start real child processes (`python -m qw_workers.child`) on this machine; the body is in
tests/support/sdk_limited.py, which the child imports as a worker would.
"""

from __future__ import annotations

import os
import time

import pytest
from qw_core.registry import default_registry
from qw_workers.child import TERM_GRACE, ChildProcess
from qw_workers.errors import PermanentError, RetryableError, TaskProcessDied, TimeLimitExceeded
from qw_workers.policy import decide_failure, describe

from tests.support import sdk_limited  # noqa: F401 - registers `crunch`


@pytest.fixture
def child():
    c = ChildProcess(default_registry.get("crunch"))
    yield c
    c.stop()


def gone(pid: int) -> bool:
    """No such process (a zombie still has its pid: reaped means gone)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return False


def test_the_body_runs_in_one_child_reused_between_tasks(child):
    first, second = child.run({"n": 1}, 1000), child.run({"n": 2}, 1000)
    assert first.startswith('{"n":1,"pid":') and second.startswith('{"n":2,"pid":')
    assert first[-8:] == second[-8:] and str(os.getpid()) not in first  # the same pid, not ours


def test_an_overrun_is_stopped_and_the_child_reaped_and_replaced(child):
    child.run({"n": 1}, 1000)
    old, started = child.pid, time.monotonic()
    with pytest.raises(TimeLimitExceeded, match="time limit of 1s"):
        child.run({"n": 2, "sleep": 30}, 1000)
    assert time.monotonic() - started < 1.0 + TERM_GRACE + 1.0  # the limit, the kill's grace; not the 30 s body
    assert child.pid is None and gone(old)
    assert child.run({"n": 3}, 1000).startswith('{"n":3,') and child.pid != old


def test_a_child_that_exits_fails_the_attempt_retryably_and_is_replaced(child):
    with pytest.raises(TaskProcessDied, match="exited with code 7") as caught:
        child.run({"n": 1, "exit_code": 7}, 1000)
    assert decide_failure(caught.value, 1, 2, [200]).action == "retry"
    assert child.run({"n": 2}, 1000).startswith('{"n":2,')


def test_a_child_killed_while_idle_is_replaced_before_the_next_task(child):
    child.run({"n": 1}, 1000)
    os.kill(child.pid, 9)
    child.proc.wait(5)  # it died before the next task came (a death during the task is TaskProcessDied)
    assert child.run({"n": 2}, 1000).startswith('{"n":2,')


@pytest.mark.parametrize(
    ("fail", "kind", "text", "action"),
    [
        ("flaky", RetryableError, "Flaky: flaky 1", "retry"),  # in the kind's retry_on
        ("value", PermanentError, "ValueError: bad 1", "failed"),  # not in retry_on: fails at once
        ("permanent", PermanentError, "PermanentError: never 1", "failed"),
    ],
)
def test_an_exception_crosses_by_name_and_message_and_keeps_its_verdict(child, fail, kind, text, action):
    with pytest.raises(kind) as caught:
        child.run({"n": 1, "fail": fail}, 1000)
    assert describe(caught.value) == text
    assert decide_failure(caught.value, 1, 2, [200], retry_on=(sdk_limited.Flaky,)).action == action
    assert any("Traceback" in note for note in caught.value.__notes__)  # the child's traceback, for the log


def test_the_result_limit_applies_in_the_child(child):
    with pytest.raises(PermanentError, match="at most 5 are kept"):
        child.run({"n": 1}, 5)
