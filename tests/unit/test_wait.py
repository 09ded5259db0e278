"""The suites' polling helper: returns what the probe saw, and a timeout names what was awaited and what was seen."""

from __future__ import annotations

import itertools

import pytest

from tests.support.wait import wait_for, wait_for_async


def test_returns_the_first_truthy_value_of_the_probe() -> None:
    values = iter([None, 0, {"ready": 3}])
    assert wait_for("a ready count", lambda: next(values), 1, 0.001) == {"ready": 3}


def test_timeout_names_what_it_waited_for_the_last_value_and_the_state() -> None:
    counter = itertools.count()
    with pytest.raises(pytest.fail.Exception) as failed:
        wait_for("ten", lambda: next(counter) >= 10**9 or [], 0.05, 0.01, state=lambda: "the log tail")
    message = str(failed.value)
    assert "waiting for ten" in message and "last seen []" in message and "the log tail" in message


async def test_the_async_flavour_awaits_the_probe() -> None:
    values = iter([False, "done"])

    async def probe() -> object:
        return next(values)

    assert await wait_for_async("done", probe, 1, 0.001) == "done"
