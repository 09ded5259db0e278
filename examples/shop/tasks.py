"""The guide's shop: its background tasks, defined with the queueworker SDK (see README.md, "Your own tasks").

A task can run twice (a worker killed after the work, before its ack): each effect is a row keyed by the order id
in the shop's own tables, written with the work (shop/db.py, shop/mail.py), so a second run changes nothing.
"""

from pydantic import BaseModel, Field
from queueworker import task

from . import db, mail


class Item(BaseModel):
    sku: str
    qty: int = Field(ge=1)


@task(kind="inventory", retries=5, backoff=(1, 60))
def reserve_stock(order_id: str, items: list[Item]) -> dict:
    """Reserve stock for an order's items, once; the return value is the task's result."""
    return {"order_id": order_id, "reserved": db.reserve(order_id, [(i.sku, i.qty) for i in items])}


@task(kind="confirmation", retries=5, backoff=(1, 60))
def send_confirmation(order_id: str) -> dict:
    """Email the customer the order's confirmation, once."""
    return {"order_id": order_id, "sent": mail.send_confirmation(order_id)}


@task(kind="analytics", retries=5, backoff=(1, 60))
def record_sale(order_id: str, total_cents: int) -> dict:
    """Record the sale for the shop's analytics, once."""
    return {"order_id": order_id, "recorded": db.record_sale(order_id, total_cents)}
