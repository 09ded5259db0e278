"""Idempotency keys: their format, the request fingerprint, and the producer's accept path under a key (on the real
SQLite store, with test_sdk_accept's stand-in publisher); the broker-backed paths are in tests/integration."""

from __future__ import annotations

import time

import pytest
from queueworker import BoundTask, IdempotencyConflict, IdempotencyKeyInUse, task
from queueworker.tasks import send_option_names
from qw_core.idempotency import MAX_KEY_LENGTH, check_key, fingerprint, make_key
from qw_core.messages import TaskMessage, UserTask, utcnow
from qw_core.publishing import BrokerUnavailable, accept
from qw_core.registry import Registry
from qw_core.store import SqliteStore

from tests.unit.test_sdk_accept import Publisher


@pytest.mark.parametrize(
    "key", ["a", "order-17", "550e8400-e29b-41d4-a716-446655440000", "with inner space", "~!@#$%^&*()", "k" * 255]
)
def test_printable_keys_up_to_255_characters_are_accepted(key):
    assert check_key(key) == key


@pytest.mark.parametrize(
    "key", ["", " ", " lead", "trail ", "k" * (MAX_KEY_LENGTH + 1), "new\nline", "cr\r", "tab\t", "nul\x00", "café"]
)
def test_other_keys_are_refused_saying_what_a_key_must_be(key):
    with pytest.raises(ValueError, match="1 to 255 printable ASCII characters"):
        check_key(key)


def test_the_fingerprint_is_the_kind_and_the_payload_whatever_the_key_order():
    assert fingerprint("k", {"a": 1, "b": [1, 2]}) == fingerprint("k", {"b": [1, 2], "a": 1})
    assert fingerprint("k", {"a": 1}) != fingerprint("k", {"a": 2})
    assert fingerprint("k", {"a": 1}) != fingerprint("other", {"a": 1})


def message(task_id: str, args: dict | None = None) -> TaskMessage:
    return TaskMessage(
        task_id=task_id, tenant="acme", created_at=utcnow(), payload=UserTask(kind="k", args=args or {"a": 1})
    )


def key(args: dict | None = None, window: float = 3600.0):
    return make_key("order-17", "k", args or {"a": 1}, time.time(), window)


@pytest.fixture
def store() -> SqliteStore:
    return SqliteStore(":memory:")


def test_the_same_key_twice_publishes_once_and_returns_the_first_task(store):
    pub = Publisher(store)
    assert accept(store, pub, message("t1"), key()) == "t1"  # type: ignore[arg-type]
    assert accept(store, pub, message("t2"), key()) == "t1"  # type: ignore[arg-type]
    assert pub.sent == ["t1"] and store.counts() == {"queued": 1}


def test_the_same_key_for_another_payload_is_a_conflict_and_queues_nothing(store):
    pub = Publisher(store)
    accept(store, pub, message("t1"), key())  # type: ignore[arg-type]
    with pytest.raises(IdempotencyConflict, match="already used for a different request") as err:
        accept(store, pub, message("t2", {"a": 2}), key({"a": 2}))  # type: ignore[arg-type]
    assert err.value.task_id == "t1" and isinstance(err.value, ValueError)
    assert pub.sent == ["t1"] and store.get("t2") is None


def test_a_failed_publish_releases_the_key_so_the_retry_queues_the_task(store):
    with pytest.raises(BrokerUnavailable):
        accept(store, Publisher(store, BrokerUnavailable("down")), message("t1"), key())  # type: ignore[arg-type]
    assert accept(store, Publisher(store), message("t2"), key()) == "t2"  # type: ignore[arg-type]
    assert store.get("t1") is None and store.get("t2").status == "queued"


def test_a_key_whose_first_request_never_finishes_queueing_is_in_use(store):
    store.claim_key("t1", "acme", "k", key())  # pending: its publish is in flight (or its API died)
    with pytest.raises(IdempotencyKeyInUse, match="still being queued"):
        accept(store, Publisher(store), message("t2"), key(), wait_seconds=0.2)  # type: ignore[arg-type]
    assert store.get("t2") is None


def test_an_expired_key_makes_a_new_task(store):
    pub = Publisher(store)
    accept(store, pub, message("t1"), key(window=0.05))  # type: ignore[arg-type]
    time.sleep(0.1)
    assert accept(store, pub, message("t2"), key()) == "t2"  # type: ignore[arg-type]
    assert pub.sent == ["t1", "t2"]


def test_options_are_the_clients_keyword_options_and_bind_them_for_send():
    registry = Registry()

    @task(kind="kind-a", registry=registry)
    def kind_a(idempotency_key: str) -> str:  # a payload field named like an option stays a payload field
        return idempotency_key

    assert "idempotency_key" in send_option_names()
    bound = kind_a.options(idempotency_key="k-1")
    assert isinstance(bound, BoundTask) and bound.send_options == {"idempotency_key": "k-1"}
    with pytest.raises(TypeError, match="unknown option.*idempotency_keys"):
        kind_a.options(idempotency_keys="k-1")
