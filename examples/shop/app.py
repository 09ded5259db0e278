"""The shop's orders service: the user's own FastAPI app, which hands its slow work to queueworker.

`POST /orders` saves the order in the shop's database, then queues its three tasks with the SDK's Client and
answers at once; workers email the confirmation, reserve the stock and record the sale. Run it with
`uvicorn --factory shop.app:create_app` (examples/shop/README.md).

The order is committed before its tasks are queued, so a worker always finds it. If queueing fails midway (the
broker is down), the answer is 503 and the order stays saved, marked not queued: posting it again with its
`order_id` queues all three, which is safe because every task does its work once per order.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Annotated, Any

from fastapi import Depends, FastAPI, HTTPException, Request, Response
from pydantic import BaseModel, EmailStr, Field, field_validator
from queueworker import Client, QueueworkerError

from . import db
from .tasks import Item, record_sale, reserve_stock, send_confirmation


class OrderIn(BaseModel):
    email: EmailStr
    items: list[Item] = Field(min_length=1, max_length=50)
    # Optional: a client that may retry (a 503, a lost answer) names its order, so a retry is the same order.
    order_id: str | None = Field(None, pattern=r"^[A-Za-z0-9_-]{1,64}$")

    @field_validator("items")
    @classmethod
    def _known_skus(cls, items: list[Item]) -> list[Item]:
        unknown = sorted({i.sku for i in items} - set(db.CATALOGUE))
        if unknown:
            raise ValueError(f"unknown sku {', '.join(unknown)}; the catalogue has {', '.join(db.CATALOGUE)}")
        return items


def get_client(request: Request) -> Client:
    return request.app.state.client  # type: ignore[no-any-return]


ClientDep = Annotated[Client, Depends(get_client)]


def create_app() -> FastAPI:
    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        db.database()  # create the shop's tables now, not on the first order
        app.state.client = Client()  # QW_RABBITMQ_URL, QW_DATABASE_URL, QW_TENANT
        yield
        app.state.client.close()

    app = FastAPI(title="shop", lifespan=lifespan)

    @app.post("/orders", status_code=201)
    def create_order(order: OrderIn, client: ClientDep, response: Response) -> dict[str, Any]:
        order_id = order.order_id or uuid.uuid4().hex
        items = [i.model_dump() for i in order.items]
        total = sum(db.CATALOGUE[i.sku][0] * i.qty for i in order.items)
        with db.database().transaction() as tx:
            sql = "INSERT INTO shop_orders (order_id, email, items, total_cents, created_at) VALUES (?, ?, ?, ?, ?)"
            inserted = tx.execute(sql + " ON CONFLICT (order_id) DO NOTHING",
                                  (order_id, order.email, json.dumps(items), total, time.time())).rowcount  # fmt: skip
            saved = None if inserted else tx.one("SELECT email, items, queued FROM shop_orders WHERE order_id = ?",
                                                 (order_id,))  # fmt: skip
        if saved is not None:
            if (saved[0], json.loads(saved[1])) != (order.email, items):
                raise HTTPException(409, f"order {order_id} exists with other contents; use a new order_id")
            if saved[2]:  # a retry of an order whose tasks were queued: nothing more to do
                response.status_code = 200
                return {"order_id": order_id, "status": "confirmed", "total_cents": total, "tasks": {}}
        try:
            tasks = {
                t.kind: client.enqueue(t.kind, payload)
                for t, payload in (
                    (send_confirmation, {"order_id": order_id}),
                    (reserve_stock, {"order_id": order_id, "items": items}),
                    (record_sale, {"order_id": order_id, "total_cents": total}),
                )
            }
        except QueueworkerError as exc:
            detail = f"order {order_id} is saved but its tasks could not all be queued ({exc}); post it again with "
            detail += f'"order_id": "{order_id}"'
            raise HTTPException(503, detail, headers={"Retry-After": "5"}) from exc
        with db.database().transaction() as tx:
            tx.execute("UPDATE shop_orders SET queued = 1 WHERE order_id = ?", (order_id,))
        return {"order_id": order_id, "status": "confirmed", "total_cents": total, "tasks": tasks}

    @app.get("/orders/{order_id}")
    def get_order(order_id: str) -> dict[str, Any]:
        """The order and what its tasks did so far (each effect's row in the shop's tables)."""
        with db.database().transaction() as tx:
            row = tx.one("SELECT email, items, total_cents FROM shop_orders WHERE order_id = ?", (order_id,))
            if row is None:
                raise HTTPException(404, f"no order {order_id}")
            emailed = tx.one("SELECT 1 FROM shop_confirmations WHERE order_id = ?", (order_id,)) is not None
            reserved = tx.one("SELECT units FROM shop_reservations WHERE order_id = ?", (order_id,))
            recorded = tx.one("SELECT 1 FROM shop_sales WHERE order_id = ?", (order_id,)) is not None
        return {
            "order_id": order_id,
            "email": row[0],
            "items": json.loads(row[1]),
            "total_cents": row[2],
            "confirmation_sent": emailed,
            "units_reserved": reserved[0] if reserved else 0,
            "sale_recorded": recorded,
        }

    @app.get("/stock")
    def stock() -> dict[str, int]:
        with db.database().transaction() as tx:
            return {sku: qty for sku, qty in tx.execute("SELECT sku, qty FROM shop_stock ORDER BY sku").fetchall()}

    return app
