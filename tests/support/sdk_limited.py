"""Sync task bodies with a hard time limit (they run in each worker slot's child process): what the time-limit
suites run. Workers load it with QW_APP=tests.support.sdk_limited; the test process imports it to send."""

from __future__ import annotations

import os
import time

from queueworker import PermanentError, TimeLimitExceeded, task


class Flaky(Exception):
    """Retried (in `retry_on`)."""


# An overrun is retried like any exception in `retry_on`: this kind names it beside its own.
@task(kind="crunch", retries=1, time_limit=1.0, backoff=(0.2, 0.2), retry_on=(Flaky, TimeLimitExceeded))
def crunch(n: int, sleep: float = 0.0, exit_code: int | None = None, fail: str = "") -> dict[str, int]:
    """Sleeps `sleep` s (past the 1 s limit: stopped), exits the process if asked, or raises as `fail` says; returns
    `n` and the pid that ran it (the slot's child, reused between tasks)."""
    if exit_code is not None:
        os._exit(exit_code)
    time.sleep(sleep)
    if fail == "flaky":
        raise Flaky(f"flaky {n}")
    if fail == "value":
        raise ValueError(f"bad {n}")
    if fail == "permanent":
        raise PermanentError(f"never {n}")
    return {"n": n, "pid": os.getpid()}
