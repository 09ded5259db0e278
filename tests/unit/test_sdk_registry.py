"""The registry of kinds, the retry policy of a kind, and the topology a kind gets: pure, no broker."""

from __future__ import annotations

import pytest
from qw_core.registry import (
    Registry,
    RetryPolicy,
    TaskSpec,
    backoff_ladder,
    load_app,
    payload_model,
)
from qw_core.topology import build_topology, dead_queue_name, queue_name
from qw_workers.errors import PermanentError, RetryableError
from qw_workers.policy import Decision, decide_failure

APP = "tests.support.sdk_tasks"


def fn(x: int) -> int:
    return x


def spec(kind: str, policy: RetryPolicy | None = None, f=fn) -> TaskSpec:
    return TaskSpec(kind, f, payload_model(f, kind), policy or RetryPolicy())


@pytest.mark.parametrize("kind", ["a", "inventory", "send_confirmation", "record-sale", "x" * 48])
def test_good_kind_names(kind):
    r = Registry()
    r.add(spec(kind))
    assert kind in r and r.kinds() == (kind,)


@pytest.mark.parametrize(
    ("kind", "why"),
    [
        ("Inventory", "must match"),
        ("a.dead", "must match"),  # would be qw.a.dead: kind a's dead-letter queue
        ("1st", "must match"),
        ("x" * 49, "must match"),
        ("", "must match"),
        ("email", "reserved"),
        ("image", "reserved"),
        ("notifications", "reserved"),
    ],
)
def test_bad_or_reserved_kind_names_are_refused(kind, why):
    with pytest.raises(ValueError, match=why):
        Registry().add(spec(kind))


def test_a_kind_is_defined_once_but_re_registering_the_same_function_is_harmless():
    def other(x: int) -> int:
        return x

    r = Registry()
    r.add(spec("k"))
    r.add(spec("k"))  # a module imported twice (as __main__ and by name)
    with pytest.raises(ValueError, match="already defined by .*fn"):
        r.add(spec("k", f=other))


def test_load_app_imports_the_module_so_its_tasks_register():
    import tests.support.sdk_tasks  # noqa: F401

    assert {"inventory", "flaky", "summarise"} <= set(load_app("tests.support.sdk_tasks").kinds())
    with pytest.raises(ImportError, match="task module 'no.such.module' .* not found: no module named 'no'; run from"):
        load_app("no.such.module")
    with pytest.raises(ImportError, match="'tests.support.nope' .* no module named 'tests.support.nope'"):
        load_app("tests.support.nope")


@pytest.mark.parametrize(
    ("lo", "hi", "ladder"),
    [
        (1, 1, (1000,)),
        (1, 8, (1000, 2000, 4000, 8000)),
        (0.5, 5, (500, 1000, 2000, 4000, 5000)),
        (1, 3600, (1000, 2000, 4000, 8000, 16000, 32000, 64000, 3600000)),  # at most 8 queues: the last jumps
    ],
)
def test_backoff_ladder(lo, hi, ladder):
    assert backoff_ladder(lo, hi) == ladder


@pytest.mark.parametrize(("lo", "hi"), [(0, 1), (2, 1), (-1, 5)])
def test_backoff_bounds_are_checked(lo, hi):
    with pytest.raises(ValueError):
        backoff_ladder(lo, hi)


def test_policy_resolves_unset_parts_from_settings():
    assert RetryPolicy().resolve(5, [100]) == RetryPolicy(5, (100,), jitter=0.0)
    assert RetryPolicy(2, (7,)).resolve(5, [100], 0.2) == RetryPolicy(2, (7,), jitter=0.2)
    assert RetryPolicy(jitter=0.0).resolve(5, [100], 0.2).jitter == 0.0  # the kind's own, even none, wins


class Flaky(Exception):
    pass


@pytest.mark.parametrize(
    ("error", "attempt", "expected"),
    [
        (Flaky(), 1, Decision("retry", delay_ms=10)),
        (Flaky(), 2, Decision("retry", delay_ms=20)),
        (Flaky(), 3, Decision("dead", reason="exhausted")),
        (ValueError(), 1, Decision("failed", reason="permanent")),  # not in retry_on: no retry
        (RetryableError(), 1, Decision("retry", delay_ms=10)),  # the body asked for a retry
        (PermanentError(), 1, Decision("failed", reason="permanent")),
    ],
)
def test_retry_on_decides_which_errors_retry(error, attempt, expected):
    assert decide_failure(error, attempt, 3, (10, 20), retry_on=(Flaky,)) == expected


def test_an_invalid_payload_is_never_retried():
    from qw_core.registry import InvalidPayload

    err = InvalidPayload("k", [{"loc": ("x",), "msg": "Field required"}])
    assert decide_failure(err, 1, 5, (10,)) == Decision("failed", reason="invalid-payload")


def test_a_user_kind_gets_the_same_topology_as_a_built_in_whatever_its_retry_policy():
    r = Registry()
    r.add(spec("inventory", RetryPolicy(delays_ms=(500, 1000))))
    topo = build_topology(("email", *r.kinds()), 10)
    assert topo.queue(queue_name("inventory")).arguments == topo.queue(queue_name("email")).arguments | {
        "x-dead-letter-routing-key": "inventory"
    }
    assert topo.queue(dead_queue_name("inventory")).arguments == topo.queue(dead_queue_name("email")).arguments
    # Retries go through the shared delay ladder: a producer and a worker declare a kind identically.
    assert build_topology(("inventory",), 10).queue(queue_name("inventory")) == topo.queue(queue_name("inventory"))
    assert not [q.name for q in topo.queues if ".retry." in q.name]


def test_the_worker_cli_resolves_built_in_and_app_kinds_from_the_registry_and_names_the_known_ones():
    from qw_workers.__main__ import resolve_kind
    from qw_workers.builtins import BUILTINS

    assert resolve_kind("email", "") is BUILTINS.get("email")
    spec = resolve_kind("flaky", "tests.support.sdk_tasks")
    assert not spec.builtin and spec.policy.max_attempts == 4
    with pytest.raises(SystemExit, match=r"unknown task kind 'nope' in --app tests.support.sdk_tasks; known kinds: "
                       r"email, image, .*inventory"):  # fmt: skip
        resolve_kind("nope", "tests.support.sdk_tasks")
    with pytest.raises(SystemExit, match="qw_workers: task module 'shop.nope'"):
        resolve_kind("inventory", "shop.nope")


def test_make_dev_autoscales_the_kinds_of_qw_app_and_the_local_pools_take_any_kind_name():
    import argparse

    from dev import app_kinds  # scripts/dev.py (tests/conftest.py puts scripts/ on the path)
    from qw_operator.local import task_kind

    assert app_kinds({}) == [] and {"inventory", "flaky", "summarise"} <= set(app_kinds({"QW_APP": APP}))
    with pytest.raises(SystemExit, match="make dev: task module 'shop.nope'"):
        app_kinds({"QW_APP": "shop.nope"})
    assert [task_kind(k) for k in ("image", "email", "inventory")] == ["image", "email", "inventory"]
    with pytest.raises(argparse.ArgumentTypeError):
        task_kind("Bad.Kind")


def test_load_app_gives_the_kinds_of_that_module_not_all_this_process_imported():
    """A process that imported other task modules first (a test run, a notebook) still serves only QW_APP's."""
    import tests.support.sdk_limited  # noqa: F401 - defines `crunch` in the process's registry

    kinds = set(load_app("tests.support.sdk_tasks").kinds())
    assert "crunch" not in kinds and {"inventory", "flaky", "summarise"} <= kinds
    assert set(load_app("tests.support.sdk_limited").kinds()) == {"crunch"}
