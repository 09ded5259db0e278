"""The shop's own database (not queueworker's): orders, stock, and one row per order for each task's effect.

A task may run twice: a worker killed after the work but before its ack gets the message redelivered. Each effect
is therefore a row keyed by the order id (primary key), written in the same transaction as the work itself, so a
second run finds the row and changes nothing. SQLite by default (`SHOP_DATABASE_URL`, one machine), PostgreSQL
(`postgresql://...`) where the app and its workers run on several.
"""

from __future__ import annotations

import sqlite3
import threading
import time
from collections import Counter
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict
from queueworker import PermanentError

# The catalogue: sku -> (price in cents, units in stock when the shop's tables are created).
CATALOGUE = {"A": (1250, 100_000), "B": (499, 100_000), "C": (2000, 100_000)}

SCHEMA = (
    """CREATE TABLE IF NOT EXISTS shop_orders (
        order_id TEXT PRIMARY KEY, email TEXT NOT NULL, items TEXT NOT NULL, total_cents INTEGER NOT NULL,
        queued INTEGER NOT NULL DEFAULT 0, created_at DOUBLE PRECISION NOT NULL)""",
    "CREATE TABLE IF NOT EXISTS shop_stock (sku TEXT PRIMARY KEY, qty INTEGER NOT NULL CHECK (qty >= 0))",
    # One row per order and effect: the primary key is what makes a second run a no-op.
    "CREATE TABLE IF NOT EXISTS shop_reservations (order_id TEXT PRIMARY KEY, units INTEGER NOT NULL)",
    """CREATE TABLE IF NOT EXISTS shop_sales (
        order_id TEXT PRIMARY KEY, total_cents INTEGER NOT NULL, recorded_at DOUBLE PRECISION NOT NULL)""",
    "CREATE TABLE IF NOT EXISTS shop_confirmations (order_id TEXT PRIMARY KEY, sent_at DOUBLE PRECISION NOT NULL)",
)


class ShopSettings(BaseSettings):
    """The shop's settings. Mail goes to the SMTP server queueworker's own email workers use (QW_SMTP_*)."""

    model_config = SettingsConfigDict(extra="ignore", populate_by_name=True)

    database_url: str = Field("sqlite:///.run/shop.db", validation_alias="SHOP_DATABASE_URL")
    mail_from: str = Field("shop@example.com", validation_alias="SHOP_MAIL_FROM")
    smtp_host: str = Field("127.0.0.1", validation_alias="QW_SMTP_HOST")
    smtp_port: int = Field(25, validation_alias="QW_SMTP_PORT")
    smtp_timeout: float = Field(15.0, validation_alias="QW_SMTP_TIMEOUT")


class Database:
    """A connection per thread (SQLite) or a pool (PostgreSQL); `transaction()` commits or rolls back."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.postgres = url.startswith(("postgresql://", "postgres://"))
        self._local = threading.local()
        if self.postgres:
            from psycopg_pool import ConnectionPool

            self._pool = ConnectionPool(url, min_size=1, max_size=8, open=True)
        else:
            self.path = url.removeprefix("sqlite:///")
            Path(self.path).parent.mkdir(parents=True, exist_ok=True)
        with self.transaction() as tx:
            if self.postgres:  # processes starting at once would race on CREATE TABLE IF NOT EXISTS
                tx.execute("SELECT pg_advisory_xact_lock(7041)")
            for statement in SCHEMA:
                tx.execute(statement)
            for sku, (_price, units) in CATALOGUE.items():
                tx.execute("INSERT INTO shop_stock (sku, qty) VALUES (?, ?) ON CONFLICT (sku) DO NOTHING", (sku, units))

    @contextmanager
    def transaction(self) -> Iterator[Tx]:
        if self.postgres:
            with self._pool.connection() as conn:  # commits on a clean exit, rolls back on an exception
                yield Tx(conn, "%s")
            return
        conn = getattr(self._local, "conn", None)
        if conn is None:
            conn = self._local.conn = sqlite3.connect(self.path, timeout=30, isolation_level=None)
            conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("BEGIN IMMEDIATE")  # take the write lock now: no deadlock upgrading a read later
        try:
            yield Tx(conn, "?")
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        conn.execute("COMMIT")

    def close(self) -> None:
        if self.postgres:
            self._pool.close()


class Tx:
    """One transaction; SQL is written with `?` placeholders for both databases."""

    def __init__(self, conn: Any, placeholder: str) -> None:
        self.conn, self.placeholder = conn, placeholder

    def execute(self, sql: str, params: tuple[Any, ...] = ()) -> Any:
        return self.conn.execute(sql.replace("?", self.placeholder), params)

    def one(self, sql: str, params: tuple[Any, ...] = ()) -> Any:
        return self.execute(sql, params).fetchone()


_db: Database | None = None
_db_lock = threading.Lock()


def database() -> Database:
    """The process's database, opened on first use (importing the task module stays cheap)."""
    global _db
    with _db_lock:
        if _db is None:
            _db = Database(ShopSettings().database_url)
        return _db


def reserve(order_id: str, items: Iterable[tuple[str, int]]) -> int:
    """Take the (sku, qty) items out of stock once per order; returns the units reserved (also on a second run)."""
    wanted: Counter[str] = Counter()
    for sku, qty in items:
        wanted[sku] += qty
    with database().transaction() as tx:
        units = wanted.total()
        claimed = tx.execute(
            "INSERT INTO shop_reservations (order_id, units) VALUES (?, ?) ON CONFLICT (order_id) DO NOTHING",
            (order_id, units),
        ).rowcount
        if not claimed:  # an earlier run reserved them
            return int(tx.one("SELECT units FROM shop_reservations WHERE order_id = ?", (order_id,))[0])
        for sku, qty in sorted(wanted.items()):  # one order of locks for every order: no deadlocks between them
            taken = tx.execute("UPDATE shop_stock SET qty = qty - ? WHERE sku = ? AND qty >= ?", (qty, sku, qty))
            if not taken.rowcount:  # rolls back the whole reservation; retrying would not help
                raise PermanentError(f"order {order_id}: not enough stock of {sku!r} for {qty}")
        return units


def record_sale(order_id: str, total_cents: int) -> bool:
    """Record the sale once per order; False when an earlier run did."""
    with database().transaction() as tx:
        sql = "INSERT INTO shop_sales (order_id, total_cents, recorded_at) VALUES (?, ?, ?) ON CONFLICT DO NOTHING"
        return bool(tx.execute(sql, (order_id, total_cents, time.time())).rowcount)
