"""A user's task module, as a team would write it with the SDK: what the SDK suites run on real workers.

Workers load it with `--app tests.support.sdk_tasks` (QW_APP), the API with QW_APP; the test process imports it
too, so `reserve_stock.send(...)` validates here first.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

from pydantic import BaseModel, Field
from queueworker import task


class Item(BaseModel):
    sku: str = Field(min_length=1)
    qty: int = Field(ge=1)


class Flaky(Exception):
    """The kind of error worth retrying (a timeout of some service, say)."""


@task(kind="inventory", retries=3, time_limit=30)
def reserve_stock(order_id: str, items: list[Item]) -> dict[str, object]:
    """Reserve stock for an order's items."""
    return {"order_id": order_id, "reserved": sum(i.qty for i in items), "skus": [i.sku for i in items]}


@task(kind="flaky", retries=3, retry_on=(Flaky,), backoff=(0.2, 0.4))
def flaky(counter: str, fail_times: int, error: str = "flaky") -> int:
    """Fails its first `fail_times` attempts (counted in the file `counter`) with Flaky, or ValueError if asked."""
    path = Path(counter)
    made = int(path.read_text()) if path.exists() else 0
    path.write_text(str(made + 1))
    if made < fail_times:
        raise (Flaky if error == "flaky" else ValueError)(f"attempt {made + 1} fails")
    return made + 1


@task(kind="summarise", retries=1, time_limit=1.0, backoff=(0.2, 0.2))
async def summarise(values: list[float], sleep: float = 0.0) -> dict[str, float]:
    """An async body: runs on the worker thread's event loop; cancelled after its 1 s time limit."""
    await asyncio.sleep(sleep)
    return {"total": sum(values), "count": len(values)}


@task(kind="stamped", retries=1, backoff=(2, 2), jitter=0.5)
def stamped(log: str, fail_times: int = 0) -> int:
    """Appends the time of each attempt (epoch seconds) to the file `log`; fails the first `fail_times` attempts."""
    path = Path(log)
    with path.open("a") as f:
        f.write(f"{time.time()}\n")
    made = len(path.read_text().split())
    if made <= fail_times:
        raise Flaky(f"attempt {made} fails")
    return made
