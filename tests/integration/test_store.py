"""The status store against real SQLite and real PostgreSQL (the `database_url` fixture runs each test on both)."""

import threading

import pytest

pytestmark = pytest.mark.integration


def test_pending_task_is_hidden_then_queued_after_confirm(store):
    store.create_pending("t1", "acme", "image", "uploads/acme/x.png")
    assert store.get("t1").status == "pending"
    assert store.confirm_queued("t1")
    rec = store.get("t1", tenant="acme")
    assert (rec.status, rec.kind, rec.source_key) == ("queued", "image", "uploads/acme/x.png")


def test_the_apis_group_commit_writes_new_rows_and_queued_marks_in_one_go(store):
    # Given two tasks published earlier (pending) and a worker already running one of them
    store.create_pending("old-1", "acme", "email")
    store.create_pending("old-2", "acme", "email", not_before=2e9)
    store.create_pending("busy", "acme", "email")
    store.start_attempt("busy", 1)
    # When one batch brings new rows and the broker's confirms of the earlier ones
    store.write_api_rows([("new-1", "acme", "email", None, None), ("new-2", "acme", "image", "u/x.png")],
                         ["old-1", "old-2", "busy"])  # fmt: skip
    # Then the new rows are pending (invisible), the confirmed ones queued or scheduled, the running one untouched
    status = {t: store.get(t).status for t in ("new-1", "new-2", "old-1", "old-2", "busy")}
    assert status == {"new-1": "pending", "new-2": "pending", "old-1": "queued", "old-2": "scheduled",
                      "busy": "processing"}  # fmt: skip
    assert store.get("new-2").source_key == "u/x.png"


def test_other_tenant_cannot_read_a_task(store):
    store.create_pending("t1", "acme", "email")
    assert store.get("t1", tenant="globex") is None


def test_failed_publish_leaves_no_row(store):
    store.create_pending("t1", "acme", "email")
    assert store.discard_pending("t1")
    assert store.get("t1") is None


def test_worker_may_start_before_the_api_confirms(store):
    store.create_pending("t1", "acme", "email")
    assert store.start_attempt("t1", 1)
    assert not store.confirm_queued("t1")  # never moves processing back to queued
    assert not store.discard_pending("t1")
    assert store.get("t1").status == "processing"


def test_finished_task_is_never_moved_backwards(store):
    store.create_pending("t1", "acme", "email")
    store.start_attempt("t1", 1)
    assert store.succeed("t1", "results/x.png")
    assert not store.start_attempt("t1", 2)
    assert not store.schedule_retry("t1", 2, "late")
    assert not store.finish_failed("t1", "dead", "late", 2)
    assert not store.succeed("t1")
    rec = store.get("t1")
    assert (rec.status, rec.completions, rec.result_key) == ("succeeded", 1, "results/x.png")


def test_retry_then_dead_records_attempts_and_reason(store):
    store.create_pending("t1", "acme", "email")
    store.start_attempt("t1", 1)
    store.schedule_retry("t1", 1, "smtp 451")
    assert store.get("t1").status == "queued"
    store.start_attempt("t1", 2)
    store.finish_failed("t1", "dead", "gave up after 2 attempts: smtp 451", 2)
    rec = store.get("t1")
    assert (rec.status, rec.attempts, rec.error) == ("dead", 2, "gave up after 2 attempts: smtp 451")
    assert store.counts("acme") == {"dead": 1}


def test_side_effect_claimed_once_even_under_concurrency(store):
    results = []
    barrier = threading.Barrier(8)

    def claim():
        barrier.wait()
        results.append(store.claim_effect("t1", "email", lease_seconds=60))

    threads = [threading.Thread(target=claim) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(results) == ["busy"] * 7 + ["claimed"]
    store.finish_effect("t1", "email")
    assert store.claim_effect("t1", "email", lease_seconds=60) == "done"


def test_a_stale_claim_is_in_doubt_and_taken_over_only_when_asked(store):
    assert store.claim_effect("t1", "email", lease_seconds=30, now=1000.0) == "claimed"
    assert store.claim_effect("t1", "email", lease_seconds=30, now=1010.0) == "busy"  # its owner may be at it
    # Past the lease, nobody recorded the outcome: the effect may have happened
    assert store.claim_effect("t1", "email", lease_seconds=30, now=1031.0) == "stale"
    assert store.claim_effect("t1", "email", lease_seconds=30, now=1031.0, take_over=True) == "claimed"
    assert store.claim_effect("t1", "email", lease_seconds=30, now=1040.0) == "busy"  # the new claim is fresh


def test_released_claim_can_be_claimed_again(store):
    store.claim_effect("t1", "email", lease_seconds=60)
    store.release_effect("t1", "email")
    assert store.claim_effect("t1", "email", lease_seconds=60) == "claimed"
