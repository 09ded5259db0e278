"""The task status store: SQLite by default, PostgreSQL when QW_DATABASE_URL says so.

Synchronous and thread-safe (a connection per thread for SQLite, a pool for PostgreSQL); the API
calls it from a thread pool, workers call it directly. Every state change is one conditional UPDATE,
so a late or duplicate writer cannot move a finished task backwards.
"""

from __future__ import annotations

import logging
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from qw_core.errors import QueueworkerError
from qw_core.idempotency import IdempotencyKey, KeyClaim

# scheduled: accepted with a delay, waiting for its not_before (queued once its first attempt could run).
Status = Literal["pending", "scheduled", "queued", "processing", "succeeded", "failed", "dead", "cancelled"]
TERMINAL: frozenset[str] = frozenset({"succeeded", "failed", "dead", "cancelled"})
CANCELLED_ERROR = "cancelled by the client before it started"
EffectClaim = Literal["claimed", "done", "busy", "stale"]

SCHEMA = (
    """CREATE TABLE IF NOT EXISTS tasks (
        task_id TEXT PRIMARY KEY,
        tenant TEXT NOT NULL,
        kind TEXT NOT NULL,
        status TEXT NOT NULL,
        attempts INTEGER NOT NULL DEFAULT 0,
        error TEXT,
        source_key TEXT,
        result_key TEXT,
        completions INTEGER NOT NULL DEFAULT 0,
        created_at DOUBLE PRECISION NOT NULL,
        updated_at DOUBLE PRECISION NOT NULL
    )""",
    "CREATE INDEX IF NOT EXISTS tasks_tenant_status ON tasks (tenant, status)",
    # The janitor's reads (qw_core.retention): ended/pending rows by age, rows still holding an upload.
    "CREATE INDEX IF NOT EXISTS tasks_status_updated ON tasks (status, updated_at)",
    "CREATE INDEX IF NOT EXISTS tasks_with_source ON tasks (updated_at) WHERE source_key IS NOT NULL",
    """CREATE TABLE IF NOT EXISTS side_effects (
        task_id TEXT NOT NULL,
        effect TEXT NOT NULL,
        state TEXT NOT NULL,
        updated_at DOUBLE PRECISION NOT NULL,
        PRIMARY KEY (task_id, effect)
    )""",
    "CREATE INDEX IF NOT EXISTS side_effects_updated ON side_effects (updated_at)",
    # Rate windows shared by every worker (`take_token`): how much of `name` (e.g. "email") a tenant used in the
    # window that began at `window_start` (epoch seconds). The janitor removes old windows.
    """CREATE TABLE IF NOT EXISTS rate_windows (
        tenant TEXT NOT NULL,
        name TEXT NOT NULL,
        window_start BIGINT NOT NULL,
        used INTEGER NOT NULL,
        PRIMARY KEY (tenant, name, window_start)
    )""",
    # Idempotency keys (qw_core.idempotency): the primary key is what makes concurrent requests with one key
    # produce one task. Kept apart from `tasks`: a key expires (QW_IDEMPOTENCY_SECONDS) long before its task does.
    """CREATE TABLE IF NOT EXISTS idempotency_keys (
        tenant TEXT NOT NULL,
        idem_key TEXT NOT NULL,
        fingerprint TEXT NOT NULL,
        task_id TEXT NOT NULL,
        created_at DOUBLE PRECISION NOT NULL,
        expires_at DOUBLE PRECISION NOT NULL,
        PRIMARY KEY (tenant, idem_key)
    )""",
    "CREATE INDEX IF NOT EXISTS idempotency_keys_task ON idempotency_keys (task_id)",
    "CREATE INDEX IF NOT EXISTS idempotency_keys_expires ON idempotency_keys (expires_at)",
)

_BASE_COLUMNS = (
    "task_id, tenant, kind, status, attempts, error, source_key, result_key, completions, created_at, updated_at"
)
log = logging.getLogger(__name__)
# Told of every status change after its commit (qw_core.events publishes them); must not block or raise.
ChangeListener = Callable[[Sequence["TaskRecord"]], None]

# Added to existing tables by `migrate`, later: `result` (a task's JSON return value, SDK kinds), `not_before`
# (epoch seconds before which it must not run: a delayed task, or a retry waiting in the delay ladder) and `seq`
# (bumped by every status UPDATE, in the same statement: the order of a task's changes as the store made them,
# which pushed events carry so a subscriber can put them in order and resume; qw_core.events).
_ADDED_COLUMNS = {"result": "TEXT", "not_before": "DOUBLE PRECISION", "seq": "INTEGER NOT NULL DEFAULT 0"}
_COLUMNS = f"{_BASE_COLUMNS}, result, not_before, seq"
_RETURNING = f" RETURNING {_COLUMNS}"
_INSERT_PENDING = (
    f"INSERT INTO tasks ({_BASE_COLUMNS}, not_before) VALUES (?, ?, ?, 'pending', 0, NULL, ?, NULL, 0, ?, ?, ?)"
)
_CONFIRM_QUEUED = (
    "UPDATE tasks SET status=CASE WHEN not_before IS NULL THEN 'queued' ELSE 'scheduled' END, updated_at=?, "
    "seq=seq+1 WHERE task_id=? AND status='pending'"
)
_INSERT_KEY = (
    "INSERT INTO idempotency_keys (tenant, idem_key, fingerprint, task_id, created_at, expires_at) "
    "VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (tenant, idem_key) DO NOTHING"
)
_NOT_ENDED = f"status NOT IN ({', '.join(repr(s) for s in sorted(TERMINAL))})"


@dataclass(frozen=True)
class TaskRecord:
    task_id: str
    tenant: str
    kind: str
    status: Status
    attempts: int
    error: str | None
    source_key: str | None
    result_key: str | None
    completions: int
    created_at: float
    updated_at: float
    result: str | None = None  # JSON text
    not_before: float | None = None  # epoch seconds
    seq: int = 0  # the task's change count (0: created, pending); every status change adds one


RemoveFiles = Callable[[list[str]], None]
PendingRow = tuple[str, str, str, str | None] | tuple[str, str, str, str | None, float | None]
_ENDED = f"status IN ({', '.join(repr(s) for s in sorted(TERMINAL))})"


def _marks(n: int) -> str:
    return ", ".join("?" * n)


class StoreUnavailable(QueueworkerError):
    """The database cannot be reached; callers answer 503 or retry later."""


class TaskStore:
    """SQL shared by both backends; subclasses supply connections and the placeholder style."""

    placeholder = "?"
    on_change: ChangeListener | None = None
    transactions = 0  # per instance once counted (`_tx` of each backend): what a scrape of the API reports
    # Appended to the janitor's SELECTs: PostgreSQL replicas take disjoint batches instead of waiting on each other.
    skip_locked = ""

    def _sql(self, sql: str) -> str:
        return sql if self.placeholder == "?" else sql.replace("?", self.placeholder)

    @contextmanager
    def _tx(self, write: bool = True) -> Iterator[Any]:  # pragma: no cover - abstract
        raise NotImplementedError
        yield

    def _execute(self, sql: str, params: Sequence[Any] = ()) -> int:
        with self._tx() as cur:
            cur.execute(self._sql(sql), tuple(params))
            return int(cur.rowcount)

    def _change(self, sql: str, params: Sequence[Any] = ()) -> list[TaskRecord]:
        """A status UPDATE (which bumps `seq`): the rows as it left them, told to `on_change` after the commit."""
        with self._tx() as cur:
            cur.execute(self._sql(sql + _RETURNING), tuple(params))
            changed = [TaskRecord(*r) for r in cur.fetchall()]
        self._changed(changed)
        return changed

    def _changed(self, records: Sequence[TaskRecord]) -> None:
        listener = self.on_change
        if listener is None or not records:
            return
        try:
            listener(records)
        except Exception:  # best effort: the store is the truth, a subscriber re-reads it
            log.exception("status change listener failed")

    def _fetchone(self, sql: str, params: Sequence[Any] = ()) -> tuple[Any, ...] | None:
        with self._tx(write=False) as cur:
            cur.execute(self._sql(sql), tuple(params))
            row = cur.fetchone()
            return tuple(row) if row is not None else None

    def _fetchall(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        with self._tx(write=False) as cur:
            cur.execute(self._sql(sql), tuple(params))
            return [tuple(r) for r in cur.fetchall()]

    def migrate(self) -> None:
        with self._tx() as cur:
            for stmt in SCHEMA:
                cur.execute(stmt)
            cur.execute("SELECT * FROM tasks WHERE 1=0")
            have = {str(d[0]) for d in cur.description}
            for column, sql_type in _ADDED_COLUMNS.items():
                if column not in have:
                    cur.execute(f"ALTER TABLE tasks ADD COLUMN {self._if_not_exists}{column} {sql_type}")

    # Both backends: a second process migrating at the same time must not fail (PostgreSQL's IF NOT EXISTS; SQLite
    # writers are serialised by BEGIN IMMEDIATE, so its check above already saw the other's column).
    _if_not_exists = ""

    def ping(self) -> bool:
        try:
            return self._fetchone("SELECT 1") == (1,)
        except Exception:
            return False

    def close(self) -> None:
        pass

    # --- the API's side ----------------------------------------------------------------------

    def create_pending(
        self,
        task_id: str,
        tenant: str,
        kind: str,
        source_key: str | None = None,
        now: float | None = None,
        not_before: float | None = None,
    ) -> None:
        """A task the broker has not confirmed yet: invisible to clients until `confirm_queued` (which makes a task
        with a `not_before` 'scheduled', any other 'queued')."""
        now = time.time() if now is None else now
        self._execute(_INSERT_PENDING, (task_id, tenant, kind, source_key, now, now, not_before))

    def create_pending_many(self, rows: Sequence[PendingRow], now: float | None = None) -> None:
        """Many `create_pending` in one transaction: (task_id, tenant, kind, source_key[, not_before]) each."""
        now = time.time() if now is None else now
        with self._tx() as cur:
            cur.executemany(
                self._sql(_INSERT_PENDING), [(*r[:4], now, now, r[4] if len(r) > 4 else None) for r in rows]
            )

    def confirm_queued_many(self, task_ids: Sequence[str]) -> None:
        """`confirm_queued` of each of `task_ids`, in one transaction."""
        self.write_api_rows((), task_ids)

    def write_api_rows(self, pending: Sequence[PendingRow], queued: Sequence[str], now: float | None = None) -> None:
        """The API's group commit: `create_pending_many(pending)` and `confirm_queued` of each of `queued` (tasks
        the broker confirmed), in one transaction. With a listener, the queued marks are one UPDATE whose changed
        rows come back (RETURNING) and are told to `on_change` after the commit, to be pushed."""
        now = time.time() if now is None else now
        changed: list[TaskRecord] = []
        with self._tx() as cur:
            if pending:
                cur.executemany(
                    self._sql(_INSERT_PENDING), [(*r[:4], now, now, r[4] if len(r) > 4 else None) for r in pending]
                )
            if queued and self.on_change is not None:
                sql = _CONFIRM_QUEUED.replace("task_id=?", f"task_id IN ({_marks(len(queued))})") + _RETURNING
                cur.execute(self._sql(sql), (now, *queued))
                changed = [TaskRecord(*r) for r in cur.fetchall()]
            elif queued:
                cur.executemany(self._sql(_CONFIRM_QUEUED), [(now, t) for t in queued])
        self._changed(changed)

    def confirm_queued(self, task_id: str) -> bool:
        """After the broker's confirm. A worker may already have moved it on; then nothing changes."""
        return bool(self._change(_CONFIRM_QUEUED, (time.time(), task_id)))

    def discard_pending(self, task_id: str) -> bool:
        """The publish failed: remove the row so nothing claims the task is queued, and release its idempotency key
        (the client's retry with that key must make a new task, not name this dead one)."""
        with self._tx() as cur:
            cur.execute(self._sql("DELETE FROM tasks WHERE task_id=? AND status='pending'"), (task_id,))
            if cur.rowcount != 1:
                return False
            cur.execute(self._sql("DELETE FROM idempotency_keys WHERE task_id=?"), (task_id,))
            return True

    def claim_key(
        self,
        task_id: str,
        tenant: str,
        kind: str,
        key: IdempotencyKey,
        source_key: str | None = None,
        now: float | None = None,
        not_before: float | None = None,
    ) -> KeyClaim:
        """`create_pending` under an idempotency key, in one transaction: `new` (key bound, row written) only if no
        live key of the tenant names another task. A key that expired, or whose task is gone, is taken over by a
        conditional UPDATE, so two requests cannot both take it over either."""
        now = time.time() if now is None else now
        with self._tx() as cur:
            cur.execute(self._sql(_INSERT_KEY), (tenant, key.key, key.fingerprint, task_id, now, key.expires_at))
            if cur.rowcount != 1:
                cur.execute(
                    self._sql(
                        "SELECT k.fingerprint, k.task_id, k.expires_at, t.status FROM idempotency_keys k "
                        "LEFT JOIN tasks t ON t.task_id = k.task_id WHERE k.tenant=? AND k.idem_key=?"
                    ),
                    (tenant, key.key),
                )
                row = cur.fetchone()
                if row is None:  # released since our insert (its publish failed): try again
                    return KeyClaim("busy", "")
                fingerprint, bound, expires_at, status = row
                if float(expires_at) > now and status is not None:
                    if fingerprint != key.fingerprint:
                        return KeyClaim("mismatch", str(bound))
                    return KeyClaim("busy" if status == "pending" else "existing", str(bound))
                cur.execute(
                    self._sql(
                        "UPDATE idempotency_keys SET fingerprint=?, task_id=?, created_at=?, expires_at=? "
                        "WHERE tenant=? AND idem_key=? AND task_id=?"
                    ),
                    (key.fingerprint, task_id, now, key.expires_at, tenant, key.key, bound),
                )
                if cur.rowcount != 1:  # another request took it over first
                    return KeyClaim("busy", str(bound))
            cur.execute(self._sql(_INSERT_PENDING), (task_id, tenant, kind, source_key, now, now, not_before))
        return KeyClaim("new", task_id)

    def cancel(self, task_id: str, tenant: str) -> TaskRecord | None:
        """Cancel the task if it has not started: status `queued` (never run, or waiting for a retry) or `scheduled`
        (delayed) becomes
        `cancelled`, in one conditional UPDATE, so a worker's claim (`start_attempt`) and a cancel cannot both win.
        Returns the task as it is afterwards (None: unknown to this tenant); its status says who won."""
        self._change(
            "UPDATE tasks SET status='cancelled', error=?, updated_at=?, seq=seq+1 "
            "WHERE task_id=? AND tenant=? AND status IN ('queued', 'scheduled')",
            (CANCELLED_ERROR, time.time(), task_id, tenant),
        )
        return self.get(task_id, tenant)

    def get(self, task_id: str, tenant: str | None = None) -> TaskRecord | None:
        if tenant is None:
            row = self._fetchone(f"SELECT {_COLUMNS} FROM tasks WHERE task_id=?", (task_id,))
        else:
            row = self._fetchone(f"SELECT {_COLUMNS} FROM tasks WHERE task_id=? AND tenant=?", (task_id, tenant))
        return TaskRecord(*row) if row else None

    def counts(self, tenant: str | None = None) -> dict[str, int]:
        if tenant is None:
            rows = self._fetchall("SELECT status, COUNT(*) FROM tasks GROUP BY status")
        else:
            rows = self._fetchall("SELECT status, COUNT(*) FROM tasks WHERE tenant=? GROUP BY status", (tenant,))
        return {str(s): int(n) for s, n in rows}

    # --- the workers' side -------------------------------------------------------------------

    def _advance(self, assignments: str, params: Sequence[Any], task_id: str) -> bool:
        """One conditional UPDATE that never touches a task that already ended. False: it had (or is unknown)."""
        sql = f"UPDATE tasks SET {assignments}, updated_at=?, seq=seq+1 WHERE task_id=? AND {_NOT_ENDED}"
        return bool(self._change(sql, (*params, time.time(), task_id)))

    def start_attempt(self, task_id: str, attempt: int) -> bool:
        """Mark processing unless the task already ended or this delivery is stale. False: a duplicate.

        Stale: a later attempt already began, or this attempt already scheduled its retry (status 'queued' with
        this attempt): the retry copy carries the task and this is the original, redelivered after a lost ack.
        The same attempt while 'processing' is let through: its worker died or handed it back mid-attempt.
        """
        sql = (
            f"UPDATE tasks SET status='processing', attempts=?, updated_at=?, seq=seq+1 WHERE task_id=? "
            f"AND {_NOT_ENDED} AND (attempts < ? OR (attempts = ? AND status = 'processing'))"
        )
        return bool(self._change(sql, (attempt, time.time(), task_id, attempt, attempt)))

    def succeed(self, task_id: str, result_key: str | None = None, result: str | None = None) -> bool:
        """`result_key`: a file in storage (images); `result`: the JSON text of an SDK task's return value."""
        return self._advance(
            "status='succeeded', result_key=?, result=?, error=NULL, completions=completions+1",
            (result_key, result),
            task_id,
        )

    def schedule_retry(self, task_id: str, attempt: int, error: str, not_before: float | None = None) -> bool:
        """Queued again after a failed attempt; `not_before`: when the retry is due (epoch seconds)."""
        return self._advance(
            "status='queued', attempts=?, error=?, not_before=?", (attempt, error[:2000], not_before), task_id
        )

    def finish_failed(self, task_id: str, status: Literal["failed", "dead"], error: str, attempt: int) -> bool:
        return self._advance("status=?, error=?, attempts=?", (status, error[:2000], attempt), task_id)

    def claim_effect(
        self, task_id: str, effect: str, lease_seconds: float, now: float | None = None, take_over: bool = False
    ) -> EffectClaim:
        """Guard a side effect (sending an email) against duplicate deliveries.

        'claimed': go ahead. 'done': it already happened, skip. 'busy': another worker holds a fresh
        claim (retry later). A claim older than the lease was left by an attempt that began the effect and never
        recorded its outcome (it died, or the store was down when it finished): the effect may have happened.
        'stale': so it is not done again (at most once), unless `take_over` (at least once: it is claimed).
        """
        now = time.time() if now is None else now
        inserted = self._execute(
            "INSERT INTO side_effects (task_id, effect, state, updated_at) VALUES (?, ?, 'started', ?) "
            "ON CONFLICT (task_id, effect) DO NOTHING",
            (task_id, effect, now),
        )
        if inserted == 1:
            return "claimed"
        if take_over:
            taken = self._execute(
                "UPDATE side_effects SET updated_at=? "
                "WHERE task_id=? AND effect=? AND state='started' AND updated_at<?",
                (now, task_id, effect, now - lease_seconds),
            )
            if taken == 1:
                return "claimed"
        row = self._fetchone(
            "SELECT state, updated_at FROM side_effects WHERE task_id=? AND effect=?", (task_id, effect)
        )
        if row and row[0] == "done":
            return "done"
        return "stale" if row and float(row[1]) < now - lease_seconds else "busy"

    def finish_effect(self, task_id: str, effect: str) -> None:
        self._execute(
            "UPDATE side_effects SET state='done', updated_at=? WHERE task_id=? AND effect=?",
            (time.time(), task_id, effect),
        )

    def release_effect(self, task_id: str, effect: str) -> None:
        """The effect certainly did not happen (e.g. SMTP refused the connection): let a retry claim it."""
        self._execute("DELETE FROM side_effects WHERE task_id=? AND effect=? AND state='started'", (task_id, effect))

    def take_token(self, tenant: str, name: str, limit: int, window: int = 60, now: float | None = None) -> float:
        """Use one of the tenant's `limit` tokens of `name` in the current `window` (seconds), shared by every
        process on this store. 0.0: taken. Otherwise the seconds until the window ends (nothing was used).

        One atomic upsert: concurrent workers never overshoot the limit. A fixed window lets up to twice the limit
        through across a window boundary (the price of one row per tenant per window)."""
        now = time.time() if now is None else now
        start = int(now // window * window)
        taken = self._execute(
            "INSERT INTO rate_windows (tenant, name, window_start, used) VALUES (?, ?, ?, 1) "
            "ON CONFLICT (tenant, name, window_start) DO UPDATE SET used = rate_windows.used + 1 "
            "WHERE rate_windows.used < ?",
            (tenant, name, start, limit),
        )
        return 0.0 if taken == 1 else max(start + window - now, 0.001)

    def purge_rate_windows(self, before: float) -> int:
        """Windows that began before `before` (the janitor; a window is only ever read while it is current)."""
        return self._execute("DELETE FROM rate_windows WHERE window_start < ?", (int(before),))

    # --- the janitor's side (qw_workers/janitor.py; decisions in qw_core.retention) ------------------------

    def _locked_ids(self, cur: Any, where: str, params: Sequence[Any], limit: int, columns: str = "task_id") -> list:
        cur.execute(
            self._sql(f"SELECT {columns} FROM tasks WHERE {where} ORDER BY updated_at LIMIT ?{self.skip_locked}"),
            (*params, limit),
        )
        return [tuple(r) for r in cur.fetchall()]

    def fail_stuck_pending(self, before: float, error: str, limit: int, now: float | None = None) -> int:
        """Rows `pending` since before `before` (never published) end `failed` with `error`; at most `limit`."""
        now = time.time() if now is None else now
        changed: list[TaskRecord] = []
        with self._tx() as cur:
            ids = [r[0] for r in self._locked_ids(cur, "status='pending' AND updated_at<?", (before,), limit)]
            if ids:
                cur.execute(
                    self._sql(
                        "UPDATE tasks SET status='failed', error=?, updated_at=?, seq=seq+1 "
                        f"WHERE status='pending' AND task_id IN ({_marks(len(ids))}){_RETURNING}"
                    ),
                    (error[:2000], now, *ids),
                )
                changed = [TaskRecord(*r) for r in cur.fetchall()]
                # Never queued: their keys must not keep answering with a task that never ran.
                cur.execute(self._sql(f"DELETE FROM idempotency_keys WHERE task_id IN ({_marks(len(ids))})"), ids)
        self._changed(changed)
        return len(ids)

    def release_ended_uploads(self, limit: int, remove: RemoveFiles) -> int:
        """Remove the source uploads of ended tasks (files first, then the key), at most `limit`."""
        with self._tx() as cur:
            rows = self._locked_ids(cur, f"source_key IS NOT NULL AND {_ENDED}", (), limit, "task_id, source_key")
            if rows:
                remove([str(key) for _, key in rows])
                ids = [r[0] for r in rows]
                cur.execute(self._sql(f"UPDATE tasks SET source_key=NULL WHERE task_id IN ({_marks(len(ids))})"), ids)
            return len(rows)

    def purge_ended(self, before: float, limit: int, remove: RemoveFiles) -> tuple[int, int]:
        """Delete tasks that ended before `before`, their side-effect rows and their files: (rows, files).

        Files go first inside the transaction: a crash between leaves rows whose files are gone (removed again,
        harmlessly, next pass), never files no row points at."""
        with self._tx() as cur:
            rows = self._locked_ids(
                cur, f"{_ENDED} AND updated_at<?", (before,), limit, "task_id, source_key, result_key"
            )
            if not rows:
                return 0, 0
            keys = [str(k) for r in rows for k in r[1:] if k]
            remove(keys)
            ids = [r[0] for r in rows]
            cur.execute(self._sql(f"DELETE FROM side_effects WHERE task_id IN ({_marks(len(ids))})"), ids)
            cur.execute(self._sql(f"DELETE FROM idempotency_keys WHERE task_id IN ({_marks(len(ids))})"), ids)
            cur.execute(self._sql(f"DELETE FROM tasks WHERE task_id IN ({_marks(len(ids))})"), ids)
            return len(ids), len(keys)

    def purge_orphan_effects(self, before: float, limit: int) -> int:
        """Side-effect rows older than `before` whose task row is gone (e.g. withdrawn after a lost confirm)."""
        with self._tx() as cur:
            cur.execute(
                self._sql(
                    "SELECT task_id, effect FROM side_effects s WHERE updated_at<? AND NOT EXISTS "
                    f"(SELECT 1 FROM tasks t WHERE t.task_id = s.task_id) LIMIT ?{self.skip_locked}"
                ),
                (before, limit),
            )
            rows = [tuple(r) for r in cur.fetchall()]
            if rows:
                cur.executemany(self._sql("DELETE FROM side_effects WHERE task_id=? AND effect=?"), rows)
            return len(rows)

    def purge_expired_keys(self, now: float, limit: int) -> int:
        """Idempotency keys past their window (QW_IDEMPOTENCY_SECONDS after first use), at most `limit`."""
        with self._tx() as cur:
            sql = f"SELECT tenant, idem_key FROM idempotency_keys WHERE expires_at<? LIMIT ?{self.skip_locked}"
            cur.execute(self._sql(sql), (now, limit))
            rows = [tuple(r) for r in cur.fetchall()]
            if rows:
                cur.executemany(
                    self._sql("DELETE FROM idempotency_keys WHERE tenant=? AND idem_key=? AND expires_at<?"),
                    [(*r, now) for r in rows],
                )
            return len(rows)


class SqliteStore(TaskStore):
    def __init__(self, path: str) -> None:
        self.path = path
        if path != ":memory:":
            Path(path).parent.mkdir(parents=True, exist_ok=True)
        self._local = threading.local()
        self.migrate()

    def _conn(self) -> sqlite3.Connection:
        conn = getattr(self._local, "conn", None)
        if conn is None:
            conn = sqlite3.connect(self.path, timeout=30, isolation_level=None)
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=NORMAL")
            conn.execute("PRAGMA busy_timeout=30000")
            self._local.conn = conn
        return conn

    @contextmanager
    def _tx(self, write: bool = True) -> Iterator[Any]:
        self.transactions += 1
        conn = self._conn()
        try:
            cur = conn.cursor()
            if not write:  # autocommit read: WAL readers never wait for writers
                yield cur
                return
            cur.execute("BEGIN IMMEDIATE")
            try:
                yield cur
            except BaseException:
                conn.rollback()
                raise
            conn.commit()
        except sqlite3.OperationalError as exc:
            raise StoreUnavailable(str(exc)) from exc


class PostgresStore(TaskStore):
    placeholder = "%s"
    skip_locked = " FOR UPDATE SKIP LOCKED"
    _if_not_exists = "IF NOT EXISTS "

    def __init__(self, url: str, min_size: int = 1, max_size: int = 10) -> None:
        from psycopg_pool import ConnectionPool

        self.pool = ConnectionPool(url, min_size=min_size, max_size=max_size, open=True, timeout=10)
        self.migrate()

    @contextmanager
    def _tx(self, write: bool = True) -> Iterator[Any]:
        import psycopg

        self.transactions += 1
        try:
            with self.pool.connection() as conn, conn.transaction(), conn.cursor() as cur:
                yield cur
        except (psycopg.OperationalError, TimeoutError) as exc:
            raise StoreUnavailable(str(exc)) from exc
        except Exception as exc:  # psycopg_pool.PoolTimeout subclasses its own error type
            if type(exc).__name__ == "PoolTimeout":
                raise StoreUnavailable(str(exc)) from exc
            raise

    def close(self) -> None:
        self.pool.close()


def open_store(database_url: str) -> TaskStore:
    """`sqlite:///relative.db`, `sqlite:////abs/path.db`, `sqlite://:memory:` or `postgresql://...`."""
    if database_url.startswith(("postgresql://", "postgres://")):
        return PostgresStore(database_url)
    if database_url.startswith("sqlite://"):
        rest = database_url[len("sqlite://") :]
        path = rest[1:] if rest.startswith("/") else rest
        return SqliteStore(path or ":memory:")
    raise ValueError(f"unsupported QW_DATABASE_URL scheme: {database_url.split(':', 1)[0]!r}")
