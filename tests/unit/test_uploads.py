"""The API's upload budgets (qw_api/uploads.py): bytes held at once are bounded, served in arrival order, a
request heavier than the budget runs alone, and waiting past the limit is a Busy (503) that frees its place."""

from __future__ import annotations

import asyncio

import pytest
from qw_api.uploads import Busy, ByteBudget


def run(coro):  # type: ignore[no-untyped-def]
    return asyncio.run(coro)


def test_holders_never_exceed_the_budget_and_are_served_in_arrival_order() -> None:
    async def main() -> tuple[list[int], int]:
        budget = ByteBudget(100)
        order: list[int] = []
        peak = 0

        async def one(i: int, n: int) -> None:
            nonlocal peak
            async with budget.hold(n, 5):
                order.append(i)
                peak = max(peak, budget.total - budget.free)
                await asyncio.sleep(0.01)

        # 60 + 60 do not fit together; the small third one must not overtake the second.
        await asyncio.gather(one(0, 60), one(1, 60), one(2, 10))
        return order, peak

    order, peak = run(main())
    assert order == [0, 1, 2]
    assert peak <= 100


def test_a_request_heavier_than_the_budget_runs_alone() -> None:
    async def main() -> int:
        budget = ByteBudget(100)
        async with budget.hold(10**9, 1):
            return budget.free

    assert run(main()) == 0


def test_waiting_too_long_is_busy_and_the_line_moves_on() -> None:
    async def main() -> list[str]:
        budget = ByteBudget(100)
        seen: list[str] = []
        async with budget.hold(100, 1):
            with pytest.raises(Busy):
                async with budget.hold(50, 0.05):
                    seen.append("never")
            # A second waiter queued behind the one that gave up still gets in once room is made.
            waiter = asyncio.create_task(_take(budget, 50, seen))
            await asyncio.sleep(0.02)
        await waiter
        assert budget.free == 100
        return seen

    assert run(main()) == ["got 50"]


def test_a_cancelled_waiter_leaves_the_line() -> None:
    async def main() -> list[str]:
        budget = ByteBudget(100)
        seen: list[str] = []
        async with budget.hold(100, 1):
            first = asyncio.create_task(_take(budget, 80, seen))
            second = asyncio.create_task(_take(budget, 20, seen))
            await asyncio.sleep(0.02)
            first.cancel()  # the client went away while waiting
            await asyncio.sleep(0.02)
        await second
        return seen

    assert run(main()) == ["got 20"]


async def _take(budget: ByteBudget, n: int, seen: list[str]) -> None:
    async with budget.hold(n, 2):
        seen.append(f"got {n}")
