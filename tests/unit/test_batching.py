import asyncio
import threading

import pytest
from qw_api.batching import RowWriter, WriteBatcher
from qw_core.store import SqliteStore


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


async def test_row_writer_commits_new_rows_and_confirms_together_on_a_real_store(tmp_path):
    store = SqliteStore(str(tmp_path / "rows.db"))
    rows = RowWriter(store)
    batches = []
    real = store.write_api_rows
    store.write_api_rows = lambda pending, queued: batches.append((len(pending), len(queued))) or real(pending, queued)
    # Given 100 requests whose rows are committed (pending: invisible) and whose publishes are out
    await asyncio.gather(*(rows.create_pending((f"a{i}", "acme", "email", None, None)) for i in range(100)))
    assert store.counts() == {"pending": 100}
    # When their confirms come back while 100 new requests arrive
    await asyncio.gather(
        *(rows.confirm_queued(f"a{i}") for i in range(100)),
        *(rows.create_pending((f"b{i}", "acme", "email", None, 2e9)) for i in range(100)),
    )
    # Then both kinds of write went to the store together, in a few transactions
    assert store.counts() == {"queued": 100, "pending": 100}
    assert sum(p + q for p, q in batches) == 300 and len(batches) <= 4
    assert any(p and q for p, q in batches)
    rows.close()
    store.close()
