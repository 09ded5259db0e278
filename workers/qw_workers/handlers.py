"""Every task kind as a worker `Handler`, made from its registry entry: the one way a worker runs a kind.

`make_handler(spec)` is all the worker's entry point builds a kind's handler with, built-in (image, email) or
defined with `queueworker.task`; the settle machine (qw_workers.settle) does the rest the same for all. What a
handler adds:

- a built-in kind (`spec.builtin`): its payload is the envelope's own model (ImageTask, EmailTask), validated when
  the message was decoded; the body gets it and the TaskContext, `fn(payload, ctx)`, and returns a result's storage
  key, an Output or None;
- a user kind: the payload is validated against the kind's schema *before* the body runs; a payload that does not
  validate raises InvalidPayload, which the policy turns into an immediate dead letter (reason `invalid-payload`),
  never a retry: the same bytes would fail the same way every time;
- an `async def` body runs on an event loop owned by the worker thread (one per thread, kept between tasks, so
  clients a body caches on its loop stay usable); its `time_limit` cancels it, and the overrun fails the attempt
  with TimeLimitExceeded (retried per `retry_on`);
- a sync body with a `time_limit` runs in the worker slot's child process (qw_workers.child), which is killed on
  overrun (TimeLimitExceeded) and replaced; a sync body without one runs right here on the worker thread, at no
  cost: a thread cannot be stopped from outside, a process can;
- a user body's return value must be JSON (pydantic's serialiser: models, dates, ... are fine; NaN and infinities
  become null, as in pydantic's JSON) and at most QW_MAX_RESULT_BYTES; otherwise the task fails permanently, since
  running it again returns the same value.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from typing import Any

from pydantic_core import PydanticSerializationError, to_json
from qw_core.messages import TaskMessage, UserTask
from qw_core.registry import TaskSpec

from qw_workers.child import run_in_child
from qw_workers.context import Handler, Output, TaskContext
from qw_workers.errors import PermanentError, TimeLimitExceeded

_loops = threading.local()
log = logging.getLogger("qw_workers.handlers")

__all__ = ["TimeLimitExceeded", "encode_result", "make_handler"]


def make_handler(spec: TaskSpec) -> Handler:
    """The Handler that runs `spec`'s function for one task message of its kind."""
    if spec.builtin:
        return _builtin_handler(spec)
    in_child = spec.time_limit is not None and not spec.is_async

    def handle(task: TaskMessage, ctx: TaskContext) -> Output:
        payload = task.payload
        assert isinstance(payload, UserTask) and payload.kind == spec.kind  # settle checks the kind first
        args = dict(spec.validate(payload.args))  # raises InvalidPayload before any user code runs
        limit = ctx.settings.max_result_bytes
        if in_child:
            return Output(result=run_in_child(spec, payload.args, limit))
        value = _run_async(spec, args) if spec.is_async else spec.fn(**args)
        return Output(result=encode_result(value, limit))

    return handle


def _builtin_handler(spec: TaskSpec) -> Handler:
    def handle(task: TaskMessage, ctx: TaskContext) -> str | Output | None:
        payload = task.payload
        assert isinstance(payload, spec.model)  # the envelope decodes a built-in kind's payload as its model
        output: str | Output | None = spec.fn(payload, ctx)
        return output

    return handle


def encode_result(value: Any, limit: int) -> str | None:
    """The result as JSON text (None stays None), refused with PermanentError if not JSON or over `limit` bytes."""
    if value is None:
        return None
    try:
        data = to_json(value, inf_nan_mode="null")  # strict JSON: clients (and the API's responses) refuse NaN
    except PydanticSerializationError as exc:
        raise PermanentError(f"the task's return value is not JSON-serialisable: {exc}") from None
    if len(data) > limit:
        raise PermanentError(
            f"the task's return value is {len(data)} bytes of JSON; at most {limit} are kept (QW_MAX_RESULT_BYTES)"
        )
    return data.decode()


def _run_async(spec: TaskSpec, args: dict[str, Any]) -> Any:
    runner: asyncio.Runner | None = getattr(_loops, "runner", None)
    if runner is None:
        runner = _loops.runner = asyncio.Runner()
    return runner.run(_limited(spec, args))


async def _limited(spec: TaskSpec, args: dict[str, Any]) -> Any:
    if spec.time_limit is None:
        return await spec.fn(**args)
    try:
        return await asyncio.wait_for(spec.fn(**args), spec.time_limit)
    except TimeoutError:
        raise TimeLimitExceeded(f"the task ran longer than its time limit of {spec.time_limit:g}s") from None
