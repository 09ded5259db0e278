"""The guide's shop end to end (examples/shop): 500 orders through its own HTTP service, its three task kinds on
real worker processes (`python -m qw_workers` with QW_APP=shop.tasks), one confirmation worker SIGKILLed mid-run.

Real RabbitMQ, real PostgreSQL (queueworker's store and the shop's tables), the real SMTP server. What a shop
relies on: every order emailed once (mails counted at the SMTP server per order id; the one repeat SMTP allows is
bounded and checked below), its stock taken once, its sale recorded once, every task succeeded once, although the
killed worker's tasks ran again.
"""

from __future__ import annotations

import collections
import random
import signal
import threading
import time
import urllib.parse
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
import psycopg
import pytest
from qw_core.store import open_store

from tests.support.shop import mails_per_order, shop_env, shop_service
from tests.support.smtp import smtp_server
from tests.support.util import free_port
from tests.support.wait import wait_for
from tests.support.workers import running_worker, worker_env

pytestmark = pytest.mark.integration
ORDERS = 500
INITIAL = {"A": 100_000, "B": 100_000, "C": 100_000}  # examples/shop/db.py's CATALOGUE
PRICES = {"A": 1250, "B": 499, "C": 2000}


def order(i: int) -> dict[str, Any]:
    rnd = random.Random(i)
    skus = rnd.sample(sorted(PRICES), rnd.randint(1, 3))
    return {"email": f"customer{i}@example.com", "items": [{"sku": s, "qty": rnd.randint(1, 3)} for s in skus]}


def shop_rows(pg_url: str) -> dict[str, Any]:
    with psycopg.connect(pg_url) as conn:
        return {
            "stock": dict(conn.execute("SELECT sku, qty FROM shop_stock").fetchall()),
            "reserved": dict(conn.execute("SELECT order_id, units FROM shop_reservations").fetchall()),
            "sales": dict(conn.execute("SELECT order_id, total_cents FROM shop_sales").fetchall()),
            "confirmed": {r[0] for r in conn.execute("SELECT order_id FROM shop_confirmations").fetchall()},
        }


def all_done(pg_url: str) -> dict[str, Any] | None:
    rows = shop_rows(pg_url)
    return rows if all(len(rows[k]) == ORDERS for k in ("reserved", "sales", "confirmed")) else None


def test_500_orders_each_emailed_reserved_and_recorded_once_with_a_worker_killed(broker, vhost, amqp_url,
                                                                                 pg_url, tmp_path):  # fmt: skip
    # A relay that takes 10 ms per mail: confirmations queue up behind the orders, so the kill finds work in hand.
    with smtp_server(delay=0.01) as (smtp_port, smtp):
        env = shop_env(worker_env(amqp_url, pg_url, tmp_path / "storage", QW_SMTP_PORT=smtp_port,
                                  QW_TENANT="shop", QW_RETRY_DELAYS="[200, 400]"), pg_url)  # fmt: skip
        logs = tmp_path / "logs"
        with shop_service(env, tmp_path / "shop.log") as shop, running_worker("inventory", env, logs), \
                running_worker("analytics", {**env, "QW_METRICS_PORT": free_port()}, logs), \
                running_worker("confirmation", {**env, "QW_METRICS_PORT": free_port()}, logs) as victim, \
                running_worker("confirmation", {**env, "QW_METRICS_PORT": free_port()}, logs):  # fmt: skip
            answers: list[httpx.Response] = []
            started = time.monotonic()

            def place_all() -> None:
                with httpx.Client(base_url=shop, timeout=30) as http, ThreadPoolExecutor(8) as pool:
                    answers.extend(pool.map(lambda i: http.post("/orders", json=order(i)), range(ORDERS)))

            placing = threading.Thread(target=place_all)
            placing.start()
            wait_for("100 confirmations sent", lambda: len(smtp.accepted) >= 100, 60, 0.02)
            victim.signal(signal.SIGKILL)  # mid-run: tasks in hand and prefetched go back to the queue
            killed_time, killed_at = time.time(), len(smtp.accepted)
            with running_worker("confirmation", {**env, "QW_METRICS_PORT": free_port()}, logs):  # its replacement
                placing.join(90)
                assert [a.status_code for a in answers] == [201] * ORDERS, [a.text for a in answers[:3]]
                ids = [a.json()["order_id"] for a in answers]
                rows = wait_for("every order's three effects", lambda: all_done(pg_url), 90, 0.5,
                                state=lambda: len(smtp.accepted))  # fmt: skip
                store = open_store(pg_url)
                ended = lambda: (c := store.counts("shop")).get("succeeded") == 3 * ORDERS and c  # noqa: E731
                counts = wait_for("every task to end", ended, 30, 0.3, state=lambda: store.counts("shop"))
            elapsed = time.monotonic() - started

    mails = mails_per_order(smtp)
    assert set(mails) == set(ids), set(ids) - set(mails)  # every order emailed
    # Once each, but for the one window examples/shop/mail.py (and its README) names: the dead worker had sent the
    # whole mail and the server accepted it, but the worker died before its claim's COMMIT (while the relay took its
    # 10 ms to answer). The victim runs one task at a time, so at most one order, twice: its first copy's data reached
    # the server before the kill, the second after; both carry the order's Message-ID.
    repeated = {o: n for o, n in mails.items() if n > 1}
    assert len(repeated) <= 1 and set(repeated.values()) <= {2}, mails.most_common(3)
    for order_id in repeated:
        sent = zip(smtp.received_at, smtp.messages(), strict=True)
        copies = [(at, m) for at, m in sent if m["X-Shop-Order-Id"] == order_id]
        (first, a), (second, b) = copies
        assert first <= killed_time < second and a["Message-ID"] == b["Message-ID"], (first, killed_time, second)
    wanted: collections.Counter[str] = collections.Counter()
    for i in range(ORDERS):
        for item in order(i)["items"]:
            wanted[item["sku"]] += item["qty"]
    assert rows["stock"] == {sku: INITIAL[sku] - wanted[sku] for sku in INITIAL}  # stock taken once per order
    assert rows["reserved"] == {a.json()["order_id"]: sum(i["qty"] for i in order(n)["items"])
                                for n, a in enumerate(answers)}  # fmt: skip
    assert rows["sales"] == {a.json()["order_id"]: a.json()["total_cents"] for a in answers}
    assert counts == {"succeeded": 3 * ORDERS}, counts
    records = [store.get(t) for a in answers for t in a.json()["tasks"].values()]
    assert all(r is not None and r.completions == 1 for r in records)
    # The kill mattered: the broker redelivered the confirmations the dead worker held.
    stats = broker.api(f"/api/queues/{urllib.parse.quote(vhost, safe='')}/qw.confirmation")["message_stats"]
    store.close()
    print(
        f"shop: {ORDERS} orders in {elapsed:.1f}s, killed after {killed_at} mails, redelivered {stats['redeliver']}, "
        f"sent twice in the data-to-COMMIT window: {len(repeated)}"
    )
    assert stats["redeliver"] >= 1, stats


def test_a_bad_order_is_refused_saying_why_and_a_retried_order_is_the_same_order(amqp_url, tmp_path):
    env = shop_env(worker_env(amqp_url, f"sqlite:///{tmp_path}/qw.db", tmp_path / "storage", QW_TENANT="shop"),
                   f"sqlite:///{tmp_path}/shop.db")  # fmt: skip
    with shop_service(env, tmp_path / "shop.log") as shop, httpx.Client(base_url=shop, timeout=30) as http:
        unknown = http.post("/orders", json={"email": "a@example.com", "items": [{"sku": "Z", "qty": 1}]})
        no_items = http.post("/orders", json={"email": "a@example.com", "items": []})
        bad_mail = http.post("/orders", json={"email": "nobody", "items": [{"sku": "A", "qty": 1}]})
        assert (unknown.status_code, no_items.status_code, bad_mail.status_code) == (422, 422, 422)
        assert "unknown sku Z; the catalogue has A, B, C" in unknown.text
        assert http.get("/stock").json() == INITIAL
        body = {"order_id": "o-7", **order(7)}
        first, again = http.post("/orders", json=body), http.post("/orders", json=body)
        assert (first.status_code, again.status_code) == (201, 200) and again.json()["tasks"] == {}
        other = http.post("/orders", json={**body, "email": "someone-else@example.com"})
        assert other.status_code == 409 and "o-7 exists with other contents" in other.text
    store = open_store(env["QW_DATABASE_URL"])
    assert store.counts("shop") == {"queued": 3}  # no workers ran: the retry queued nothing more
    store.close()
