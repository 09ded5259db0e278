from pydantic import BaseModel, Field
from queueworker import task


class Item(BaseModel):
    sku: str
    qty: int = Field(ge=1)


@task(kind="inventory", retries=5, backoff=(1, 60), retry_on=(ConnectionError, TimeoutError))
def reserve_stock(order_id: str, items: list[Item]) -> dict:
    """Reserve stock for an order's items; the return value is the task's result."""
    return {"order_id": order_id, "reserved": sum(item.qty for item in items)}
