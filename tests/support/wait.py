"""The one polling helper of the test suites: wait for a condition, then return what the probe saw.

Wait for every condition a test asserts afterwards: a probe that stops at one field and an assert on another
field the source reports on its own schedule is a flake (see issue 13). Return a tuple, a dict or a record from
the probe when the test needs several facts at once, and assert on the returned value.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import NoReturn, TypeVar

import pytest

T = TypeVar("T")


def _timed_out(what: str, timeout: float, last: object, state: Callable[[], object] | None) -> NoReturn:
    seen = f"last seen {last!r}"
    if state is not None:
        seen += f"; state {state()!r}"
    pytest.fail(f"timed out after {timeout}s waiting for {what}; {seen}")


def wait_for(
    what: str,
    probe: Callable[[], T],
    timeout: float = 10.0,
    interval: float = 0.1,
    state: Callable[[], object] | None = None,
) -> T:
    """Call `probe` every `interval` seconds until it returns something truthy, and return that value.

    After `timeout` seconds the test fails with a message naming `what`, the probe's last value and, when
    `state` is given, what `state()` returns then (context a bare True/False cannot carry: a log tail, a status).
    """
    deadline = time.monotonic() + timeout
    last: object = None
    while True:
        last = value = probe()
        if value:
            return value
        if time.monotonic() >= deadline:
            _timed_out(what, timeout, last, state)
        time.sleep(interval)


async def wait_for_async(
    what: str,
    probe: Callable[[], Awaitable[T]],
    timeout: float = 10.0,  # noqa: ASYNC109 - the same contract as wait_for
    interval: float = 0.1,
    state: Callable[[], object] | None = None,
) -> T:
    """`wait_for` for a coroutine probe, in an async test: the same contract, awaiting `probe()` each time."""
    deadline = time.monotonic() + timeout
    last: object = None
    while True:
        last = value = await probe()
        if value:
            return value
        if time.monotonic() >= deadline:
            _timed_out(what, timeout, last, state)
        await asyncio.sleep(interval)
