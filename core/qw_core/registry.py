"""The task kinds a process knows: each kind's payload schema and retry policy, by kind name.

`define_task` is the one way a kind is defined: the SDK's `@task` (package `queueworker`) and the built-in image and
email kinds (qw_workers.builtins) both go through it into a `Registry`; the worker (`--app MODULE`), the API
(`QW_APP`) and the producer (`Client`) read it. It lives in qw_core, not in the worker package, because the API
needs the schemas and policies too and must not depend on the worker runtime. Everything here is pure: building a
payload model from a signature, validating, computing a backoff ladder; no I/O, no settings read at import.
"""

from __future__ import annotations

import importlib
import inspect
import re
import typing
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from pydantic import BaseModel, ConfigDict, ValidationError, create_model

from qw_core.errors import QueueworkerError
from qw_core.messages import KIND_PATTERN, KINDS, RESERVED_KINDS

MAX_BACKOFF_STEPS = 8  # distinct delays of one kind (routes through the delay ladder; a short, readable policy)


class InvalidPayload(QueueworkerError, ValueError):
    """A payload does not match its kind's schema. Never retried: the same payload fails the same way."""

    def __init__(self, kind: str, errors: Sequence[Mapping[str, Any]]) -> None:
        self.kind = kind
        self.errors = [dict(e) for e in errors]
        super().__init__(f"invalid payload for kind {kind!r}: {describe_errors(self.errors)}")


def describe_errors(errors: Sequence[Mapping[str, Any]]) -> str:
    """pydantic's errors in one line, each naming its field: `items.0.sku: Field required; ...`."""
    parts = []
    for e in errors[:5]:
        where = ".".join(str(p) for p in e.get("loc", ())) or "(payload)"
        parts.append(f"{where}: {e.get('msg', 'invalid')}")
    more = f" (+{len(errors) - 5} more)" if len(errors) > 5 else ""
    return "; ".join(parts) + more


@dataclass(frozen=True)
class RetryPolicy:
    """How a kind retries. None means "the service's setting" (QW_MAX_ATTEMPTS, QW_RETRY_DELAYS), resolved at startup.

    `max_attempts` counts the first try; `delays_ms` is the wait before each retry (the last one repeats), each
    times a random factor in [1 - jitter, 1 + jitter] (QW_RETRY_JITTER); only exceptions that are instances of
    `retry_on` are retried, any other one fails the task at once.
    """

    max_attempts: int | None = None
    delays_ms: tuple[int, ...] | None = None
    retry_on: tuple[type[BaseException], ...] = (Exception,)
    jitter: float | None = None

    def resolve(self, max_attempts: int, delays_ms: Sequence[int], jitter: float = 0.0) -> RetryPolicy:
        return RetryPolicy(
            self.max_attempts if self.max_attempts is not None else max_attempts,
            self.delays_ms if self.delays_ms is not None else tuple(delays_ms),
            self.retry_on,
            self.jitter if self.jitter is not None else jitter,
        )


def backoff_ladder(min_seconds: float, max_seconds: float, steps: int = MAX_BACKOFF_STEPS) -> tuple[int, ...]:
    """Doubling delays in ms from `min_seconds` up to `max_seconds` (included), at most `steps` of them.

    The last delay repeats for every later retry.
    """
    if min_seconds <= 0 or max_seconds < min_seconds:
        raise ValueError("backoff needs 0 < min <= max seconds")
    lo, hi = round(min_seconds * 1000), round(max_seconds * 1000)
    ladder = [lo]
    while ladder[-1] < hi and len(ladder) < steps:
        ladder.append(min(ladder[-1] * 2, hi))
    if ladder[-1] != hi:
        ladder[-1] = hi
    return tuple(ladder)


def payload_model(fn: Callable[..., Any], kind: str) -> type[BaseModel]:
    """A pydantic model of `fn`'s keyword arguments, from its type hints: what a payload of this kind must be.

    Unknown fields are refused (a typo must not be silently dropped); parameters without a hint accept any JSON.
    Only named parameters can be sent as JSON, so *args, **kwargs and positional-only parameters are refused here,
    when the task is defined, rather than when the first message arrives.
    """
    hints = typing.get_type_hints(fn, include_extras=True)
    fields: dict[str, Any] = {}
    for name, p in inspect.signature(fn).parameters.items():
        if p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD, p.POSITIONAL_ONLY):
            raise TypeError(f"task {kind!r}: parameter {name!r} must be a plain named parameter (sent as JSON)")
        default = ... if p.default is inspect.Parameter.empty else p.default
        fields[name] = (hints.get(name, Any), default)
    title = "".join(part.capitalize() for part in re.split(r"[_-]", kind)) + "Payload"
    model: type[BaseModel] = create_model(title, __config__=ConfigDict(extra="forbid"), **fields)
    return model


@dataclass(frozen=True)
class TaskSpec:
    """One kind: its function, payload model and policy. `time_limit` (seconds) bounds the body's run.

    `builtin`: a kind of queueworker's own (image, email). Its payload model is the envelope's own payload type
    (qw_core.messages: what messages already in queues carry), and its body is called `fn(payload, ctx)` with the
    worker's TaskContext (storage, the store, the task's id and tenant), returning what a worker Handler returns. A
    user kind's body is called with the payload's fields as keyword arguments and returns a JSON value.
    """

    kind: str
    fn: Callable[..., Any]
    model: type[BaseModel]
    policy: RetryPolicy = field(default_factory=RetryPolicy)
    time_limit: float | None = None
    builtin: bool = False

    @property
    def is_async(self) -> bool:
        return inspect.iscoroutinefunction(self.fn)

    def validate(self, payload: Mapping[str, Any]) -> BaseModel:
        """The payload as the model, or InvalidPayload naming each bad field."""
        try:
            return self.model.model_validate(payload)
        except ValidationError as exc:
            raise InvalidPayload(self.kind, exc.errors(include_url=False, include_input=False)) from None

    def to_args(self, payload: Mapping[str, Any]) -> dict[str, Any]:
        """Validated JSON-ready arguments: what goes on the wire (the worker validates them again)."""
        return self.validate(payload).model_dump(mode="json")

    def json_schema(self) -> dict[str, Any]:
        return self.model.model_json_schema()


def check_kind_name(kind: str, builtin: bool = False) -> None:
    """A user kind must not take a reserved name; a built-in kind must be one the message envelope carries (its
    payload type is on the wire: qw_core.messages.KINDS)."""
    if not re.fullmatch(KIND_PATTERN, kind):
        raise ValueError(f"task kind {kind!r} must match {KIND_PATTERN} (it names queues and routing keys)")
    if builtin and kind not in KINDS:
        raise ValueError(f"task kind {kind!r} is not a built-in kind ({', '.join(KINDS)})")
    if not builtin and kind in RESERVED_KINDS:
        raise ValueError(f"task kind {kind!r} is reserved by queueworker; choose another name")


class Registry:
    """Kinds by name. A kind is defined once: a second definition of the same name is an error, not an override."""

    def __init__(self, specs: Iterable[TaskSpec] = ()) -> None:
        self._specs: dict[str, TaskSpec] = {}
        for spec in specs:
            self.add(spec)

    def add(self, spec: TaskSpec) -> None:
        check_kind_name(spec.kind, spec.builtin)
        known = self._specs.get(spec.kind)
        if known is not None and known.fn is not spec.fn:
            raise ValueError(f"task kind {spec.kind!r} is already defined by {_where(known.fn)}")
        self._specs[spec.kind] = spec

    def get(self, kind: str) -> TaskSpec | None:
        return self._specs.get(kind)

    def __contains__(self, kind: object) -> bool:
        return kind in self._specs

    def __iter__(self) -> Iterator[TaskSpec]:
        return iter(sorted(self._specs.values(), key=lambda s: s.kind))

    def kinds(self) -> tuple[str, ...]:
        return tuple(sorted(self._specs))


# The process's registry: `@task` adds to it, `load_app` fills it by importing the user's module.
default_registry = Registry()


def define_task(
    kind: str | None = None,
    *,
    retries: int | None = None,
    time_limit: float | None = None,
    retry_on: tuple[type[BaseException], ...] = (Exception,),
    backoff: tuple[float, float] | None = None,
    jitter: float | None = None,
    registry: Registry | None = None,
    payload: type[BaseModel] | None = None,
) -> Callable[[Callable[..., Any]], TaskSpec]:
    """The decorator every kind is defined with: checks the options now, then turns a function into a `TaskSpec`
    (payload model, `RetryPolicy`, time limit) registered in `registry` (default: the process's).

    The options are `queueworker.task`'s (documented there and in docs/sdk.md). `payload` is for the built-in kinds
    only: their payload model is given (the envelope's ImageTask / EmailTask) instead of built from the signature,
    and the body is called `fn(payload, ctx)` (see TaskSpec.builtin).
    """
    if retries is not None and not 0 <= retries <= 100:
        raise ValueError("retries must be between 0 and 100")
    if time_limit is not None and time_limit <= 0:
        raise ValueError("time_limit must be positive seconds")
    if jitter is not None and not 0 <= jitter <= 1:
        raise ValueError("jitter must be between 0 and 1 (a fraction of each retry delay)")
    if not retry_on or not all(isinstance(t, type) and issubclass(t, BaseException) for t in retry_on):
        raise TypeError("retry_on must be a non-empty tuple of exception classes")
    if payload is not None and time_limit is not None:
        raise ValueError("a built-in kind's body runs on the worker thread: it takes no time_limit")
    policy = RetryPolicy(
        max_attempts=None if retries is None else retries + 1,
        delays_ms=None if backoff is None else backoff_ladder(*backoff),
        retry_on=tuple(retry_on),
        jitter=jitter,
    )

    def define(fn: Callable[..., Any]) -> TaskSpec:
        name = kind or fn.__name__
        model = payload if payload is not None else payload_model(fn, name)
        spec = TaskSpec(name, fn, model, policy, time_limit, builtin=payload is not None)
        (registry if registry is not None else default_registry).add(spec)
        return spec

    return define


class AppNotFound(ImportError):
    """The task module named by QW_APP / --app is not importable from here."""


def load_app(module: str, registry: Registry = default_registry) -> Registry:
    """Import the user's task module (`shop.tasks`) so its `@task` definitions register; the kinds it defines.

    Those are the kinds whose function lives in the module or below it (`shop.tasks.mail`), or that the module
    imports by name: not whatever else this process happened to import (a test run imports many task modules).
    A module that is not on the path raises AppNotFound with what to do; an import error inside the user's module
    (a missing dependency of theirs) propagates as it is, traceback and all.
    """
    if not module:
        return Registry()
    try:
        mod = importlib.import_module(module)
    except ModuleNotFoundError as exc:
        if exc.name is None or not (module == exc.name or module.startswith(exc.name + ".")):
            raise
        raise AppNotFound(
            f"task module {module!r} (QW_APP / --app) not found: no module named {exc.name!r}; run from the "
            "directory that holds it, or add that directory to PYTHONPATH"
        ) from None
    named = {id(v) for v in vars(mod).values()}

    def defined_here(spec: TaskSpec) -> bool:
        home = getattr(spec.fn, "__module__", "") or ""
        return (
            home == module
            or home.startswith(module + ".")
            or id(spec.fn) in named
            or any(getattr(v, "spec", None) is spec for v in vars(mod).values())
        )

    return Registry(spec for spec in registry if defined_here(spec))


def _where(fn: Callable[..., Any]) -> str:
    return f"{getattr(fn, '__module__', '?')}.{getattr(fn, '__qualname__', '?')}"
