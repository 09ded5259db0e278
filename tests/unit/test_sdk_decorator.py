"""`@task` (queueworker.tasks) and the worker-side handler of an SDK kind (qw_workers.sdk), without a broker."""

from __future__ import annotations

import asyncio
import logging
from datetime import date

import pytest
from pydantic import BaseModel
from queueworker import Task, task
from qw_core.messages import TaskMessage, UserTask, utcnow
from qw_core.registry import InvalidPayload, Registry, RetryPolicy
from qw_core.settings import WorkerSettings
from qw_core.storage import LocalStorage
from qw_core.store import SqliteStore
from qw_workers.context import Output, TaskContext
from qw_workers.errors import PermanentError
from qw_workers.handlers import TimeLimitExceeded, encode_result, make_handler


class Item(BaseModel):
    sku: str


@pytest.fixture
def reg() -> Registry:
    return Registry()


def test_the_decorated_function_still_runs_here_and_is_registered(reg):
    @task(kind="inventory", retries=4, backoff=(1, 4), time_limit=30, registry=reg)
    def reserve_stock(order_id: str, items: list[Item]) -> dict:
        """Reserve it."""
        return {"order_id": order_id, "n": len(items)}

    assert isinstance(reserve_stock, Task) and reserve_stock.kind == "inventory"
    assert reserve_stock("o", [Item(sku="a")]) == {"order_id": "o", "n": 1}
    assert reserve_stock.__doc__ == "Reserve it." and reserve_stock.__name__ == "reserve_stock"
    spec = reg.get("inventory")
    assert spec is reserve_stock.spec and spec.time_limit == 30 and not spec.is_async
    assert spec.policy == RetryPolicy(max_attempts=5, delays_ms=(1000, 2000, 4000), retry_on=(Exception,))


def test_bare_decorator_names_the_kind_after_the_function_and_keeps_settings_defaults(reg, monkeypatch):
    monkeypatch.setattr("qw_core.registry.default_registry", reg)
    monkeypatch.setattr("qw_core.registry.default_registry", reg)

    @task
    async def record_sale(order_id: str) -> None:
        return None

    assert record_sale.kind == "record_sale" and reg.get("record_sale").is_async
    assert reg.get("record_sale").policy == RetryPolicy()  # QW_MAX_ATTEMPTS / QW_RETRY_DELAYS of the worker


@pytest.mark.parametrize(
    ("kwargs", "error"),
    [
        ({"retries": -1}, ValueError),
        ({"time_limit": 0}, ValueError),
        ({"retry_on": ()}, TypeError),
        ({"retry_on": (ValueError, "x")}, TypeError),
        ({"backoff": (5, 1)}, ValueError),
    ],
)
def test_bad_options_fail_when_the_task_is_defined(reg, kwargs, error):
    with pytest.raises(error):
        task(kind="k", registry=reg, **kwargs)


def test_send_arguments_bind_like_a_call(reg):
    @task(kind="k", registry=reg)
    def f(a: int, b: str = "x") -> None:
        return None

    assert f._arguments((1,), {"b": "y"}) == {"a": 1, "b": "y"}
    with pytest.raises(TypeError, match=r"k\.send\(\)"):
        f._arguments((1, 2, 3), {})


def _context(tmp_path, max_result_bytes: int = 1000) -> TaskContext:
    settings = WorkerSettings(max_result_bytes=max_result_bytes)
    log = logging.LoggerAdapter(logging.getLogger("t"), {})
    return TaskContext(settings, SqliteStore(":memory:"), LocalStorage(tmp_path), 1, log, "t1", "a")


def _message(kind: str, **args) -> TaskMessage:
    return TaskMessage(task_id="t1", tenant="a", created_at=utcnow(), payload=UserTask(kind=kind, args=args))


def test_the_handler_validates_runs_and_returns_json(reg, tmp_path):
    seen = []

    @task(kind="k", registry=reg)
    def f(items: list[Item], day: date) -> dict:
        seen.append(items)
        return {"day": day, "n": len(items)}

    out = make_handler(reg.get("k"))(_message("k", items=[{"sku": "a"}], day="2026-12-01"), _context(tmp_path))
    assert out == Output(result='{"day":"2026-12-01","n":1}') and seen == [[Item(sku="a")]]


def test_an_invalid_payload_is_refused_before_the_body_runs(reg, tmp_path):
    ran = []

    @task(kind="k", registry=reg)
    def f(items: list[Item]) -> None:
        ran.append(1)

    with pytest.raises(InvalidPayload, match="items.0.sku: Field required"):
        make_handler(reg.get("k"))(_message("k", items=[{}]), _context(tmp_path))
    assert ran == []


def test_async_bodies_run_on_one_loop_per_thread_and_their_time_limit_cancels_them(reg, tmp_path):
    @task(kind="k", time_limit=0.2, registry=reg)
    async def f(sleep: float) -> int:
        await asyncio.sleep(sleep)
        return id(asyncio.get_running_loop())

    handle, ctx = make_handler(reg.get("k")), _context(tmp_path)
    first, second = handle(_message("k", sleep=0), ctx), handle(_message("k", sleep=0), ctx)
    assert first == second  # the same loop, kept between tasks
    with pytest.raises(TimeLimitExceeded, match="time limit of 0.2s"):
        handle(_message("k", sleep=5), ctx)


@pytest.mark.parametrize(
    ("value", "expected"),
    [(None, None), (3, "3"), ([1, "a"], '[1,"a"]'), (Item(sku="a"), '{"sku":"a"}'), ([float("nan")], "[null]")],
)
def test_results_are_json(value, expected):
    assert encode_result(value, 100) == expected


def test_a_result_that_is_not_json_or_too_large_fails_permanently():
    with pytest.raises(PermanentError, match="not JSON-serialisable"):
        encode_result(object(), 100)
    with pytest.raises(PermanentError, match="at most 10 are kept"):
        encode_result("x" * 20, 10)


def test_every_producer_error_is_a_queueworker_error():
    import queueworker as qw

    for name in ("BrokerUnavailable", "PublishRefused", "Unroutable", "MessageTooLarge", "PublishError"):
        assert issubclass(getattr(qw, name), qw.PublishError) and issubclass(getattr(qw, name), qw.QueueworkerError)
    assert issubclass(qw.InvalidPayload, (qw.QueueworkerError, ValueError)) and issubclass(
        qw.InvalidPayload, ValueError
    )
    assert issubclass(qw.StoreUnavailable, qw.QueueworkerError)
