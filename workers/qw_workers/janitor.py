"""`python -m qw_workers janitor [--once]`: retention (qw_core.retention) applied to the store and the storage.

Each pass runs five steps in bounded batches (QW_JANITOR_BATCH_SIZE rows per transaction): fail rows stuck in
`pending` (releasing their idempotency keys), remove the uploads of ended tasks, delete expired tasks (rows,
results, side-effect rows, keys), delete orphaned side-effect rows, delete idempotency keys past their window.
Replicas never collide: on PostgreSQL every batch is taken with `FOR UPDATE SKIP LOCKED`, so two janitors take
disjoint rows; SQLite serialises writers (BEGIN IMMEDIATE) and is single-host anyway.
"""

from __future__ import annotations

import argparse
import logging
import signal
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from qw_core.retention import RetentionPolicy, another_batch
from qw_core.settings import JanitorSettings
from qw_core.storage import Storage, StorageUnavailable, open_storage
from qw_core.store import StoreUnavailable, TaskStore

log = logging.getLogger("qw_workers.janitor")


@dataclass
class PassReport:
    failed_pending: int = 0
    uploads_removed: int = 0
    tasks_removed: int = 0
    files_removed: int = 0
    effects_removed: int = 0
    keys_removed: int = 0
    seconds: float = 0.0
    batches: int = field(default=0)

    def as_log(self) -> dict[str, float]:
        return {k: v for k, v in self.__dict__.items()}


class Janitor:
    def __init__(self, store: TaskStore, storage: Storage, policy: RetentionPolicy, batch_size: int) -> None:
        self.store = store
        self.storage = storage
        self.policy = policy
        self.batch_size = batch_size

    expiry_set = False

    def set_expiry(self) -> None:
        """Once per process: on S3, lifecycle rules as the backstop for objects no task row names any more (an API
        that died between storing an upload and recording its task): uploads and results expire a day after the
        retention time at the latest (qw_core.s3storage.expiry_days). A server without lifecycle support is said
        once; the janitor's passes still apply retention (rows, their uploads and results) on every backend."""
        if self.expiry_set:
            return
        seconds = self.policy.retention_seconds
        try:
            if self.storage.expire({"uploads": seconds, "results": seconds}):
                log.info("janitor: lifecycle rules set (uploads and results expire after %g s at most)", seconds)
        except StorageUnavailable as exc:
            if "NotImplemented" not in str(exc):
                raise  # the store is down: try again next pass
            log.warning("janitor: the object store has no lifecycle rules (%s); the passes alone apply retention", exc)
        self.expiry_set = True

    def _remove_files(self, keys: list[str]) -> None:
        """One batch's files (one request on S3). StorageUnavailable propagates: the store's batch is not
        committed, so its rows and keys are taken again by the next pass."""
        for key in self.storage.delete_many(keys):  # a key that escapes the root was never ours to write
            log.warning("janitor: refusing to remove %r", key)

    def _drain(self, step: Callable[[], int], report: PassReport) -> int:
        total = 0
        while True:
            n = step()
            report.batches += 1
            total += n
            if not another_batch(n, self.batch_size):
                return total

    def run_pass(self, now: float | None = None) -> PassReport:
        """One full pass at `now` (the clock, by default): every step until its last batch comes back short."""
        start = time.perf_counter()
        now = time.time() if now is None else now
        cut = self.policy.cutoffs(now)
        size, report = self.batch_size, PassReport()
        error = self.policy.stuck_error()
        report.failed_pending = self._drain(
            lambda: self.store.fail_stuck_pending(cut.pending_before, error, size), report
        )
        report.uploads_removed = self._drain(lambda: self.store.release_ended_uploads(size, self._remove_files), report)

        def purge() -> int:
            rows, files = self.store.purge_ended(cut.ended_before, size, self._remove_files)
            report.files_removed += files
            return rows

        report.tasks_removed = self._drain(purge, report)
        report.effects_removed = self._drain(lambda: self.store.purge_orphan_effects(cut.ended_before, size), report)
        report.keys_removed = self._drain(lambda: self.store.purge_expired_keys(now, size), report)
        self.store.purge_rate_windows(time.time() - 3600)  # a few rows per tenant and hour
        report.seconds = time.perf_counter() - start
        return report


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m qw_workers janitor", description=__doc__)
    p.add_argument("--once", action="store_true", help="one pass, then exit (a CronJob); else every interval")
    args = p.parse_args(argv)
    from qw_core.logs import configure_logging
    from qw_core.settings import load
    from qw_core.store import open_store

    settings = load(JanitorSettings)
    configure_logging(settings.log_format, settings.log_level)
    store = open_store(settings.database_url)
    policy = RetentionPolicy(settings.retention_seconds, settings.pending_timeout_seconds)
    janitor = Janitor(store, open_storage(settings), policy, settings.janitor_batch_size)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    code = 0
    while not stop.is_set():
        try:
            janitor.set_expiry()
            report = janitor.run_pass()
            log.info("janitor pass: %s", " ".join(f"{k}={v:g}" for k, v in report.as_log().items()))
            code = 0
        except (StoreUnavailable, StorageUnavailable) as exc:
            log.warning("janitor: %s; next pass in %gs", exc, settings.janitor_interval_seconds)
            code = 1
        except Exception:  # a bug or an unexpected database error: say so, keep the process (make dev) alive
            log.exception("janitor pass failed; next pass in %gs", settings.janitor_interval_seconds)
            code = 1
        if args.once:
            break
        stop.wait(settings.janitor_interval_seconds)
    store.close()
    return code
