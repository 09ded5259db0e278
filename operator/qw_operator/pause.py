"""Follow kopf's peering pause: the scheduler must stop ticking while another operator leads.

kopf pauses its own watches, handlers and daemons when a peer of higher priority appears, and tells nothing else.
The scheduler ticks outside kopf's handlers, so it watches the same toggle kopf's peering turns: the one kopf
hands to `process_peering_event` for each peering object. This reaches into kopf's private module (the only
place that toggle is visible; pinned by the kopf version in pyproject.toml, and covered by the e2e test where two
operators share one peering object: a paused operator writes nothing).
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Callable
from typing import Any

from kopf._core.engines import peering as _peering

_watched: dict[int, Any] = {}  # id(toggle) -> toggle
_listeners: list[Callable[[bool], None]] = []
_tasks: set[asyncio.Task[None]] = set()


def _paused() -> bool:
    return any(t.is_on() for t in _watched.values())


def _notify() -> None:
    paused = _paused()
    for listener in _listeners:
        listener(paused)


async def _follow(toggle: Any) -> None:
    """Every change of the toggle, including one made before this task first ran."""
    last: bool | None = None
    while True:
        state = toggle.is_on()
        if state != last:
            _notify()
            last = state
        await toggle.wait_for(not state)


def follow_peering(listener: Callable[[bool], None]) -> None:
    """Call `listener(paused)` whenever kopf's peering pauses or resumes this operator (standalone: never)."""
    _listeners.append(listener)
    if getattr(_peering.process_peering_event, "_qw_followed", False):
        return
    original = _peering.process_peering_event

    @functools.wraps(original)
    async def process_peering_event(*args: Any, conflicts_found: Any = None, **kwargs: Any) -> None:
        if conflicts_found is not None and id(conflicts_found) not in _watched:
            _watched[id(conflicts_found)] = conflicts_found
            _tasks.add(asyncio.create_task(_follow(conflicts_found), name="follow kopf peering"))
        await original(*args, conflicts_found=conflicts_found, **kwargs)

    process_peering_event._qw_followed = True  # type: ignore[attr-defined]
    _peering.process_peering_event = process_peering_event
