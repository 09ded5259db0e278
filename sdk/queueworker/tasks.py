"""`@task`: a plain function becomes a task kind, registered with its payload schema and retry policy.

The decorated object still calls the function directly (`reserve_stock(...)` runs it here, e.g. in a unit test);
`.send(...)` queues it instead. Everything the worker and the API need is in the registry entry, made by
qw_core.registry.define_task (the one decorator every kind, built-in ones included, is defined with): it
reads no settings and opens no connection, so importing a task module is cheap and side-effect free.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any, Generic, ParamSpec, TypeVar, overload

from qw_core.registry import Registry, TaskSpec, define_task

from queueworker.client import Client, default_client

P = ParamSpec("P")
R = TypeVar("R")


class Task(Generic[P, R]):
    """A registered task kind. Call it to run the body here; `send` to queue it for a worker."""

    def __init__(self, spec: TaskSpec) -> None:
        self.spec = spec
        self.kind = spec.kind
        self._signature = inspect.signature(spec.fn)
        self.__doc__ = spec.fn.__doc__
        self.__name__ = getattr(spec.fn, "__name__", spec.kind)
        self.__wrapped__ = spec.fn

    def __call__(self, *args: P.args, **kwargs: P.kwargs) -> R:
        result: R = self.spec.fn(*args, **kwargs)
        return result

    def send(self, *args: P.args, **kwargs: P.kwargs) -> str:
        """Queue this task with these arguments; returns its task id once the broker confirmed it.

        Arguments are validated here first (InvalidPayload names the bad field), then published through the
        process's shared client (`default_client()`, configured by QW_* variables). Raises a PublishError subclass
        or StoreUnavailable when the task could not be queued.
        """
        return self._submit(args, kwargs, {})

    async def send_async(self, *args: P.args, **kwargs: P.kwargs) -> str:
        """`send` for asyncio code: published on the event loop's own connection of the shared client; the status
        row writes run in a thread, so the event loop never waits on them."""
        return await self._submit_async(args, kwargs, {})

    def _submit(self, args: tuple[Any, ...], kwargs: dict[str, Any], send_options: dict[str, Any]) -> str:
        validated = self.spec.to_args(self._arguments(args, kwargs))
        return default_client().submit(self.kind, validated, **send_options)

    async def _submit_async(self, args: tuple[Any, ...], kwargs: dict[str, Any], send_options: dict[str, Any]) -> str:
        validated = self.spec.to_args(self._arguments(args, kwargs))
        return await default_client().submit_async(self.kind, validated, **send_options)

    def options(self, **send_options: Any) -> BoundTask[P, R]:
        """This task with options for `send`: `task.options(idempotency_key="order-17", delay=30).send(...)`. The
        options are `Client.submit`'s keyword arguments (an unknown one is a TypeError here); the arguments of `send`
        are always the task's own, so a parameter named like an option is never mistaken for one."""
        unknown = set(send_options) - send_option_names()
        if unknown:
            raise TypeError(
                f"{self.kind}.options(): unknown option(s) {', '.join(sorted(unknown))}; "
                f"the options are {', '.join(sorted(send_option_names()))}"
            )
        return BoundTask(self, send_options)

    def json_schema(self) -> dict[str, Any]:
        """The JSON Schema of this kind's payload (what POST /v1/tasks/{kind} and GET /v1/kinds show)."""
        return self.spec.json_schema()

    def _arguments(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> dict[str, Any]:
        try:
            bound = self._signature.bind(*args, **kwargs)
        except TypeError as exc:
            raise TypeError(f"{self.kind}.send(): {exc}") from None
        return dict(bound.arguments)

    def __repr__(self) -> str:
        return f"<Task {self.kind!r} {self.spec.fn.__module__}.{self.spec.fn.__qualname__}>"


class BoundTask(Generic[P, R]):
    """A task with send options (`Task.options`): `send`/`send_async` queue it with them, through the process's
    shared client like `Task.send`."""

    def __init__(self, task: Task[P, R], send_options: dict[str, Any]) -> None:
        self.task = task
        self.send_options = dict(send_options)

    def send(self, *args: P.args, **kwargs: P.kwargs) -> str:
        return self.task._submit(args, kwargs, self.send_options)

    async def send_async(self, *args: P.args, **kwargs: P.kwargs) -> str:
        return await self.task._submit_async(args, kwargs, self.send_options)

    def __repr__(self) -> str:
        return f"<BoundTask {self.task.kind!r} {self.send_options!r}>"


def send_option_names() -> frozenset[str]:
    """`Client.submit`'s keyword-only parameters: what `Task.options` accepts, stated once (by the signature)."""
    params = inspect.signature(Client.submit).parameters.values()
    return frozenset(p.name for p in params if p.kind is inspect.Parameter.KEYWORD_ONLY)


@overload
def task(kind: Callable[P, R]) -> Task[P, R]: ...


@overload
def task(
    kind: str | None = None,
    *,
    retries: int | None = None,
    time_limit: float | None = None,
    retry_on: tuple[type[BaseException], ...] = (Exception,),
    backoff: tuple[float, float] | None = None,
    jitter: float | None = None,
    registry: Registry | None = None,
) -> Callable[[Callable[P, R]], Task[P, R]]: ...


def task(
    kind: str | Callable[..., Any] | None = None,
    *,
    retries: int | None = None,
    time_limit: float | None = None,
    retry_on: tuple[type[BaseException], ...] = (Exception,),
    backoff: tuple[float, float] | None = None,
    jitter: float | None = None,
    registry: Registry | None = None,
) -> Any:
    """Define a task kind from a function (sync or `async def`); use as `@task` or `@task(kind=..., ...)`.

    - `kind`: the kind's name (queue `qw.<kind>`, route `POST /v1/tasks/<kind>`); default: the function's name.
    - `retries`: retries after the first attempt (default: QW_MAX_ATTEMPTS - 1 of the worker).
    - `retry_on`: exception types that are retried; any other exception fails the task at once (dead letter,
      reason `permanent`). A payload that does not match the signature is never retried (`invalid-payload`).
    - `backoff`: `(min_seconds, max_seconds)`: retry delays doubling from min to max (default: QW_RETRY_DELAYS).
    - `jitter`: each retry delay is multiplied by a random factor in [1 - jitter, 1 + jitter], 0..1 (default:
      QW_RETRY_JITTER, 0.2).
    - `time_limit`: seconds the body may run: an `async def` body is then cancelled, a plain one (which runs in
      a child process of its worker slot) killed; the attempt fails with TimeLimitExceeded (retried per retry_on).
    """
    if callable(kind):
        return task()(kind)
    register = define_task(
        kind,
        retries=retries,
        time_limit=time_limit,
        retry_on=retry_on,
        backoff=backoff,
        jitter=jitter,
        registry=registry,
    )

    def define(fn: Callable[P, R]) -> Task[P, R]:
        return Task(register(fn))

    return define
