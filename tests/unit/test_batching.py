import asyncio
import threading

import pytest
from qw_api.batching import WriteBatcher


async def test_concurrent_writes_share_transactions_and_all_complete():
    batches = []
    gate = threading.Event()

    def write_many(items):
        gate.wait(1)  # the first batch is slow: the rest pile up behind it
        batches.append(list(items))

    b = WriteBatcher(write_many)
    first = asyncio.create_task(b.write(0))
    await asyncio.sleep(0.01)
    rest = [asyncio.create_task(b.write(i)) for i in range(1, 101)]
    await asyncio.sleep(0.01)
    gate.set()
    await asyncio.gather(first, *rest)
    assert sorted(i for batch in batches for i in batch) == list(range(101))
    assert len(batches) == 2  # one lone write, then everything that queued meanwhile


async def test_a_failed_batch_fails_every_writer_in_it_and_the_next_batch_still_runs():
    calls = []

    def write_many(items):
        calls.append(list(items))
        if len(calls) == 1:
            raise RuntimeError("database gone")

    b = WriteBatcher(write_many)
    with pytest.raises(RuntimeError, match="database gone"):
        await b.write("a")
    await b.write("b")
    assert calls == [["a"], ["b"]]
