#!/usr/bin/env python3
"""The hub's fan-out alone, in this process, no broker, no sockets: one change to N subscribers of one tenant
(a tenant-wide stream each, as the upload page's WebSocket is), each taking its item and its SSE frame.

    per subscriber: each stream builds the task view and encodes the frame itself (before Change.frame)
    once:           the change is encoded once, every stream sends the same bytes (qw_api.routes.events)

Rounds alternate the two, so both see the same machine load. Prints one JSON object: ms per change, median over
--rounds, and the ratio.

    python bench/bench_fanout.py --subscribers 1000 10000 --rounds 7
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import time
from collections.abc import Callable
from typing import Any

from qw_api.push import Change, Hub, Subscription
from qw_api.routes.events import pushed_frame, status_frame
from qw_core.store import TaskRecord


class _Conn:
    """What a frame of a record without a result link reads of its connection: nothing but the scope."""

    scope: dict[str, Any] = {"scheme": "http", "headers": []}


def _rec(seq: int) -> TaskRecord:
    return TaskRecord("t1", "bench", "email", "processing", 1, None, None, None, 0, 1.0, 2.0, seq=seq)


def _per_subscriber(item: Change, conn: Any) -> bytes:
    return status_frame(item.rec, conn).encode()


def _once(item: Change, conn: Any) -> bytes:
    return pushed_frame(item, conn, False)


def _one_change(hub: Hub, subs: list[Subscription], seq: int, frame: Callable[[Change, Any], bytes]) -> float:
    began = time.perf_counter()
    hub.receive(_rec(seq))
    conn = _Conn()
    for sub in subs:
        item = sub.queue.get_nowait()
        assert isinstance(item, Change)
        frame(item, conn)
    return (time.perf_counter() - began) * 1000


async def measure(n: int, rounds: int) -> dict[str, Any]:
    ways = {"per_subscriber": _per_subscriber, "once": _once}
    hubs = {name: Hub() for name in ways}
    subs = {name: [hubs[name].subscribe(Subscription("bench")) for _ in range(n)] for name in ways}
    ms: dict[str, list[float]] = {name: [] for name in ways}
    for seq in range(1, rounds + 1):
        for name, frame in ways.items():
            ms[name].append(_one_change(hubs[name], subs[name], seq, frame))
    med = {name: round(statistics.median(v), 2) for name, v in ms.items()}
    return {
        "subscribers": n,
        "ms_per_change": med,
        "once_over_per_subscriber": round(med["once"] / med["per_subscriber"], 3),
        "load_average_1m": round(os.getloadavg()[0], 1),
    }


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--subscribers", type=int, nargs="+", default=[1000, 10000])
    p.add_argument("--rounds", type=int, default=7)
    a = p.parse_args()
    results = [asyncio.run(measure(n, a.rounds)) for n in a.subscribers]
    print(json.dumps({"results": results}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
