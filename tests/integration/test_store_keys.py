"""Idempotency keys and cancellation in the status store, on real SQLite and real PostgreSQL (`database_url`).

What a user relies on: one key makes one task however many requests race for it, and a cancel and a worker's
claim of the same task never both win.
"""

import threading
import time

import pytest
from qw_core.idempotency import make_key

pytestmark = pytest.mark.integration
DAY = 24 * 3600.0


def key(k="order-17", payload=None, now=None, window=DAY, kind="inventory"):
    return make_key(k, kind, payload or {"order_id": "o-1"}, time.time() if now is None else now, window)


def test_a_key_names_its_first_task_once_queued(store):
    assert store.claim_key("t1", "acme", "inventory", key()).outcome == "new"
    assert store.get("t1").status == "pending"
    assert store.claim_key("t2", "acme", "inventory", key()).outcome == "busy"  # the first is still publishing
    store.confirm_queued("t1")
    claim = store.claim_key("t2", "acme", "inventory", key())
    assert (claim.outcome, claim.task_id) == ("existing", "t1")
    assert store.get("t2") is None and store.counts() == {"queued": 1}


def test_keys_are_per_tenant_and_a_different_request_is_a_mismatch(store):
    store.claim_key("t1", "acme", "inventory", key())
    store.confirm_queued("t1")
    assert store.claim_key("t2", "globex", "inventory", key()).outcome == "new"
    assert store.claim_key("t3", "acme", "inventory", key(payload={"order_id": "o-2"})).outcome == "mismatch"
    assert store.claim_key("t4", "acme", "summarise", key(kind="summarise")).outcome == "mismatch"
    assert store.get("t3") is None and store.get("t4") is None


def test_concurrent_requests_with_one_key_make_one_task(store):
    results = []
    barrier = threading.Barrier(8)

    def claim(i):
        barrier.wait()
        results.append(store.claim_key(f"t{i}", "acme", "inventory", key()).outcome)

    threads = [threading.Thread(target=claim, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(results) == ["busy"] * 7 + ["new"]
    assert store.counts() == {"pending": 1}


def test_a_withdrawn_task_releases_its_key(store):
    store.claim_key("t1", "acme", "inventory", key())
    assert store.discard_pending("t1")  # its publish failed
    assert store.claim_key("t2", "acme", "inventory", key()).outcome == "new"


def test_an_expired_key_or_one_whose_task_is_gone_makes_a_new_task(store):
    store.claim_key("t1", "acme", "inventory", key(now=1000.0, window=60))
    store.confirm_queued("t1")
    assert store.claim_key("t2", "acme", "inventory", key(now=1059.0, window=60), now=1059.0).outcome == "existing"
    # Expired: taken over, even for another payload (the old request is forgotten)
    other = key(payload={"order_id": "o-9"}, now=1061.0, window=60)
    assert store.claim_key("t3", "acme", "inventory", other, now=1061.0).outcome == "new"
    store.confirm_queued("t3")
    store.start_attempt("t3", 1)
    store.succeed("t3")
    store.purge_ended(before=time.time() + 1, limit=10, remove=lambda keys: None)  # task gone, key removed with it
    assert store.claim_key("t4", "acme", "inventory", other, now=1062.0).outcome == "new"


def test_the_janitor_removes_expired_keys_and_releases_those_of_stuck_rows(store):
    store.claim_key("t1", "acme", "inventory", key("a", now=1000.0, window=60))
    store.confirm_queued("t1")
    store.claim_key("t2", "acme", "inventory", key("b", now=time.time(), window=DAY))
    store.confirm_queued("t2")
    assert store.purge_expired_keys(now=1061.0, limit=10) == 1
    assert store.purge_expired_keys(now=1061.0, limit=10) == 0
    assert store.claim_key("t3", "acme", "inventory", key("b")).outcome == "existing"  # the live one stays
    store.claim_key("t4", "acme", "inventory", key("c"), now=1000.0)  # the API died before publishing
    assert store.fail_stuck_pending(before=2000.0, error="never queued", limit=10) == 1
    assert store.claim_key("t5", "acme", "inventory", key("c")).outcome == "new"


def test_cancel_only_a_queued_task_of_the_tenant(store):
    store.create_pending("t1", "acme", "inventory")
    assert store.cancel("t1", "acme").status == "pending"  # not visible yet: nothing changes
    store.confirm_queued("t1")
    assert store.cancel("t1", "globex") is None
    rec = store.cancel("t1", "acme")
    assert (rec.status, rec.error) == ("cancelled", "cancelled by the client before it started")
    assert not store.start_attempt("t1", 1)  # a worker that receives it later
    assert not store.succeed("t1") and not store.finish_failed("t1", "dead", "late", 1)
    assert store.get("t1").status == "cancelled"


def test_a_task_waiting_for_its_retry_can_be_cancelled_a_running_one_cannot(store):
    store.create_pending("t1", "acme", "flaky")
    store.confirm_queued("t1")
    store.start_attempt("t1", 1)
    assert store.cancel("t1", "acme").status == "processing"
    store.schedule_retry("t1", 1, "Flaky: attempt 1 fails")
    assert store.cancel("t1", "acme").status == "cancelled"
    assert not store.start_attempt("t1", 2)


def test_a_cancel_and_a_workers_claim_never_both_win(store):
    for i in range(20):
        task_id = f"t{i}"
        store.create_pending(task_id, "acme", "inventory")
        store.confirm_queued(task_id)
        barrier = threading.Barrier(2)
        won: dict[str, object] = {}

        def claim(task_id=task_id, barrier=barrier, won=won):
            barrier.wait()
            won["worker"] = store.start_attempt(task_id, 1)

        def cancel(task_id=task_id, barrier=barrier, won=won):
            barrier.wait()
            won["cancel"] = store.cancel(task_id, "acme").status == "cancelled"

        threads = [threading.Thread(target=claim), threading.Thread(target=cancel)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert won["worker"] != won["cancel"], won
        assert store.get(task_id).status == ("processing" if won["worker"] else "cancelled")
