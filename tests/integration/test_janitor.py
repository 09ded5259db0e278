"""The janitor (qw_workers/janitor.py) on the real stores (SQLite and PostgreSQL) and a real directory: what it
removes agrees with the pure decisions of qw_core.retention, batches stay bounded, two janitors never collide, and
its throughput is measured (printed; quoted in RELIABILITY.md)."""

from __future__ import annotations

import subprocess
import sys
import threading
import time

import pytest
from qw_core.retention import RetentionPolicy, is_expired, is_stuck_pending, upload_removable
from qw_core.storage import LocalStorage
from qw_core.store import open_store
from qw_workers.janitor import Janitor

from tests.support.workers import ROOT

pytestmark = pytest.mark.integration
DAY = 86_400.0
POLICY = RetentionPolicy(retention_seconds=7 * DAY, pending_timeout_seconds=600)


@pytest.fixture
def storage(tmp_path):
    return LocalStorage(tmp_path / "storage")


def _age(store, task_id: str, seconds_ago: float, now: float) -> None:
    """Test-only: backdate a row's last write (the janitor's clock is `now`)."""
    store._execute("UPDATE tasks SET updated_at=? WHERE task_id=?", (now - seconds_ago, task_id))


def _image_task(store, storage, task_id: str, status: str, with_result: bool = True) -> tuple[str, str | None]:
    """A task in `status`, holding its source upload (and, once succeeded, a result file)."""
    src = f"uploads/acme/{task_id}.png"
    storage.write(src, b"source")
    store.create_pending(task_id, "acme", "image", src)
    result = None
    if status != "pending":
        store.confirm_queued(task_id)
    if status in ("processing", "succeeded", "failed", "dead"):
        store.start_attempt(task_id, 1)
    if status == "succeeded":
        result = f"results/acme/{task_id}.webp" if with_result else None
        if result:
            storage.write(result, b"result")
        store.succeed(task_id, result_key=result)
    elif status in ("failed", "dead"):
        store.finish_failed(task_id, status, "boom", 1)  # type: ignore[arg-type]
    return src, result


# (status, seconds since its last write): each side of every cutoff.
ROWS = {
    "old-ok": ("succeeded", 8 * DAY),
    "old-failed": ("failed", 8 * DAY),
    "old-dead": ("dead", 7 * DAY + 5),
    "new-ok": ("succeeded", 6 * DAY),
    "new-failed": ("failed", 60),
    "old-queued": ("queued", 30 * DAY),
    "old-processing": ("processing", 30 * DAY),
    "stuck": ("pending", 601 + 5),
    "fresh-pending": ("pending", 30),
}


def test_a_pass_removes_exactly_what_the_pure_decisions_say(store, storage):
    now = time.time()
    files = {}
    for task_id, (status, ago) in ROWS.items():
        files[task_id] = _image_task(store, storage, task_id, status)
        _age(store, task_id, ago, now)
    store.claim_effect("old-ok", "email", 60, now=now - 8 * DAY)
    store.claim_effect("new-ok", "email", 60, now=now - 6 * DAY)
    store.claim_effect("withdrawn", "email", 60, now=now - 8 * DAY)  # its row is gone (a lost confirm)

    report = Janitor(store, storage, POLICY, batch_size=2).run_pass(now=now)

    cut = POLICY.cutoffs(now)
    for task_id, (status, ago) in ROWS.items():
        rec = store.get(task_id)
        src, result = files[task_id]
        if is_expired(status, now - ago, cut):
            assert rec is None, task_id
            assert not storage.exists(src) and (result is None or not storage.exists(result)), task_id
            continue
        assert rec is not None, task_id
        if is_stuck_pending(status, now - ago, cut):
            assert rec.status == "failed" and rec.error == POLICY.stuck_error()
            status = "failed"  # Then its upload goes in the same pass
        assert (rec.source_key is None) is upload_removable(status, src), task_id
        assert storage.exists(src) is (not upload_removable(status, src)), task_id
        if result:
            assert storage.exists(result) and rec.result_key == result  # a result lives out its retention
    assert store.claim_effect("old-ok", "email", 60) == "claimed"  # its row went with the task
    assert store.claim_effect("new-ok", "email", 60) == "stale"  # kept: its task is kept
    assert store.claim_effect("withdrawn", "email", 60) == "claimed"  # the orphan went too
    assert (report.failed_pending, report.tasks_removed, report.effects_removed) == (1, 3, 1)
    assert report.uploads_removed == 6  # every ended task's source (`stuck` included) before any row expires
    assert report.files_removed == 1  # then old-ok's result, with its row
    assert report.batches > 4  # batch_size=2: the steps went round more than once


def test_the_upload_of_a_stuck_pending_row_goes_once_it_is_failed(store, storage):
    now = time.time()
    src, _ = _image_task(store, storage, "stuck", "pending")
    _age(store, "stuck", 700, now)
    report = Janitor(store, storage, POLICY, batch_size=10).run_pass(now=now)
    assert (report.failed_pending, report.uploads_removed) == (1, 1)
    assert not storage.exists(src) and store.get("stuck").source_key is None


def test_a_pass_removes_expired_idempotency_keys_and_keeps_live_ones(store, storage):
    from qw_core.idempotency import make_key

    now = time.time()
    for i, window in enumerate((10.0, 10.0, 10.0, DAY)):  # three expired at `now + 60`, one not
        store.claim_key(f"t{i}", "acme", "email", make_key(f"k{i}", "email", {}, now, window), now=now)
        store.confirm_queued(f"t{i}")
    report = Janitor(store, storage, POLICY, batch_size=2).run_pass(now=now + 60)
    assert report.keys_removed == 3
    assert store.claim_key("t9", "acme", "email", make_key("k3", "email", {}, now, DAY)).outcome == "existing"
    assert store.claim_key("t9", "acme", "email", make_key("k0", "email", {}, now, DAY)).outcome == "new"


def test_a_late_confirm_never_revives_a_row_the_janitor_failed(store, storage):
    now = time.time()
    _image_task(store, storage, "stuck", "pending")
    _age(store, "stuck", 700, now)
    Janitor(store, storage, POLICY, batch_size=10).run_pass(now=now)
    assert not store.confirm_queued("stuck") and not store.start_attempt("stuck", 1)
    assert store.get("stuck").status == "failed"


def _ended_rows(store, storage, n: int, now: float) -> None:
    """n succeeded tasks that ended 8 days before `now`, each with a result file (sources already released)."""
    rows = [(f"t{i:06d}", "acme", "image", None) for i in range(n)]
    store.create_pending_many(rows, now=now - 8 * DAY)
    store._execute(
        "UPDATE tasks SET status='succeeded', result_key='results/acme/' || task_id || '.webp', updated_at=?",
        (now - 8 * DAY,),
    )
    for task_id, *_ in rows:
        storage.write(f"results/acme/{task_id}.webp", b"r" * 64)


def test_two_janitors_at_once_split_the_work_and_never_fail(database_url, storage):
    now, n = time.time(), 2_000
    stores = [open_store(database_url) for _ in range(2)]
    _ended_rows(stores[0], storage, n, now)
    reports, errors = [], []

    def run(s):
        try:
            reports.append(Janitor(s, storage, POLICY, batch_size=100).run_pass(now=now))
        except Exception as exc:  # pragma: no cover - what the test would report
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(s,)) for s in stores]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert errors == []
    assert sum(r.tasks_removed for r in reports) == n  # each row removed by exactly one of them
    assert sum(r.files_removed for r in reports) == n
    assert stores[0].counts() == {} and not any((storage.root / "results").rglob("*.webp"))
    for s in stores:
        s.close()


def test_throughput_rows_and_files_per_second(store, storage, database_url):
    now, n = time.time(), 5_000
    _ended_rows(store, storage, n, now)
    report = Janitor(store, storage, POLICY, batch_size=500).run_pass(now=now)
    assert (report.tasks_removed, report.files_removed) == (n, n) and store.counts() == {}
    backend = database_url.split(":", 1)[0]
    print(
        f"\njanitor throughput ({backend}, batch 500): {n} rows + {n} files in {report.seconds:.2f} s = "
        f"{n / report.seconds:,.0f} rows/s and files/s"
    )


def test_the_janitor_command_runs_one_pass_and_exits(database_url, storage, tmp_path):
    store = open_store(database_url)
    now = time.time()
    _image_task(store, storage, "stuck", "pending")
    _age(store, "stuck", 700, now)
    env = {
        "QW_DATABASE_URL": database_url,
        "QW_STORAGE_DIR": str(storage.root),
        "QW_LOG_FORMAT": "text",
        "PATH": "/usr/bin:/bin",
    }
    proc = subprocess.run(
        [sys.executable, "-m", "qw_workers", "janitor", "--once"],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    assert "failed_pending=1" in proc.stderr + proc.stdout
    assert store.get("stuck").status == "failed"
    store.close()
