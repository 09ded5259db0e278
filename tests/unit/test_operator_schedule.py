"""One scheduler ticks every registered QueueWorker on each fresh snapshot of its broker: a new one from the
next snapshot on, a changed spec at its next tick, a deleted one no more, none while paused, and a QueueWorker
with a longer pollingInterval only when it is due. The broker's read is a stub; the ticks are the real Ticker's."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import kopf
import pytest
from prometheus_client import CollectorRegistry
from qw_operator.metrics import OperatorMetrics
from qw_operator.observe import Replicas
from qw_operator.rabbitmq import BrokerPoller, QueueMetrics
from qw_operator.reconcile import Ticker
from qw_operator.schedule import Scheduler


class Reader:
    calls = 0

    async def fetch(self, vhost: str | None = None) -> dict[tuple[str, str], QueueMetrics | None]:
        return {("/", q): QueueMetrics(0, 0, 0, 0.0, 0.0) for q in ("a", "b", "c")}


class Kube:
    def __init__(self) -> None:
        self.statuses: list[str] = []

    async def set_replicas(self, namespace: str, name: str, replicas: int) -> None:
        pass

    def queue_status(self, namespace: str, name: str, status: dict[str, Any]) -> asyncio.Future[None]:
        self.statuses.append(name)
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        fut.set_result(None)
        return fut


def body(name: str, queue: str, interval: float = 1, **spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": "queueworker.dev/v1alpha1",
        "kind": "QueueWorker",
        "metadata": {"name": name, "namespace": "ns", "uid": f"uid-{name}"},
        "spec": {"queue": queue, "vhost": "/", "pollingInterval": interval, "scaleTargetRef": {"name": name}, **spec},
    }


@pytest.fixture(autouse=True)
def no_events(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(kopf, "info", lambda *a, **k: None)
    monkeypatch.setattr(kopf, "warn", lambda *a, **k: None)


@pytest.fixture
async def sched() -> AsyncIterator[tuple[Scheduler, BrokerPoller, list[float], dict[str, int]]]:
    clock = [100.0]
    ticked: dict[str, int] = {}
    metrics = OperatorMetrics(CollectorRegistry())
    poller = BrokerPoller("default", Reader(), 1.0)  # type: ignore[arg-type]
    kube = Kube()

    def make(b: Any) -> Ticker:
        t = Ticker("ns", b["metadata"]["name"], b, kube, metrics, lambda ns, dep: Replicas(0, 0, 0))  # type: ignore[arg-type]
        real = t.begin

        def counted(snap: Any) -> Any:
            ticked[t.name] = ticked.get(t.name, 0) + 1
            return real(snap)

        t.begin = counted  # type: ignore[method-assign]
        return t

    s = Scheduler({"default": poller}, make, metrics, 5.0, clock=lambda: clock[0])
    s.start()
    yield s, poller, clock, ticked
    await s.stop()


async def poll(poller: BrokerPoller, clock: list[float], seconds: float = 1.0) -> None:
    clock[0] += seconds
    await poller.poll_once()
    for _ in range(5):  # the scheduler's loop and the tick tasks run
        await asyncio.sleep(0)


async def test_every_queueworker_ticks_once_per_snapshot_until_deleted(sched: Any) -> None:
    s, poller, clock, ticked = sched
    s.upsert("uid-a", body("a", "a"))
    s.upsert("uid-b", body("b", "b"))
    assert poller.registered == 2
    for _ in range(3):
        await poll(poller, clock)
    assert ticked == {"a": 3, "b": 3}
    # When b is deleted, then it is not ticked any more and its poller registration goes
    s.remove("uid-b")
    await poll(poller, clock)
    assert ticked == {"a": 4, "b": 3} and poller.registered == 1
    assert s.metrics.registry.get_sample_value("queueworker_operator_ticks_total") == 7


async def test_a_longer_polling_interval_ticks_only_when_due(sched: Any) -> None:
    s, poller, clock, ticked = sched
    s.upsert("uid-a", body("a", "a"))
    s.upsert("uid-c", body("c", "c", interval=3))
    for _ in range(6):
        await poll(poller, clock)
    assert ticked == {"a": 6, "c": 2}


async def test_a_changed_spec_is_read_at_the_next_tick(sched: Any) -> None:
    s, poller, clock, ticked = sched
    s.upsert("uid-a", body("a", "a"))
    await poll(poller, clock)
    s.upsert("uid-a", body("a", "b"))  # the same QueueWorker now reads queue b
    assert poller._regs["uid-a"][1] == "b"  # noqa: SLF001
    await poll(poller, clock)
    assert s.entries["uid-a"].ticker.last_status["queue"]["ready"] == 0
    assert ticked == {"a": 2}


async def test_nothing_ticks_while_paused_and_an_unknown_broker_is_reported(sched: Any) -> None:
    s, poller, clock, ticked = sched
    s.upsert("uid-a", body("a", "a"))
    s.pause(True)
    assert s.entries == {} and poller.registered == 0
    s.upsert("uid-b", body("b", "b"))  # kopf's list after a resume may come before the resume itself
    await poll(poller, clock)
    assert ticked == {}
    s.pause(False)
    await poll(poller, clock)
    assert ticked == {"b": 1}
    s.upsert("uid-e", body("e", "a", broker="eu"))
    entry = s.entries["uid-e"]
    await asyncio.sleep(1.2)  # the unknown-broker round runs every second
    cond = entry.ticker.last_status["conditions"][0]
    assert (cond["reason"], cond["message"]) == ("UnknownBroker", "broker 'eu' is not configured in the operator")


async def test_idle_rounds_count_every_decision_and_write_nothing(sched: Any) -> None:
    """An idle QueueWorker is still decided once per round (ticks_total, tick_interval), with no status write
    and no task of its own."""
    s, poller, clock, ticked = sched
    for n in "abc":
        s.upsert(f"uid-{n}", body(n, n))
    await poll(poller, clock)
    kube = s.entries["uid-a"].ticker.kube
    writes = len(kube.statuses)
    for _ in range(5):
        await poll(poller, clock)
    value = s.metrics.registry.get_sample_value
    assert value("queueworker_operator_ticks_total") == 18 and ticked == {"a": 6, "b": 6, "c": 6}
    assert value("queueworker_operator_tick_interval_seconds_count") == 15
    assert len(kube.statuses) == writes and all(e.task is None for e in s.entries.values())


def versioned(name: str, queue: str, version: int) -> dict[str, Any]:
    b = body(name, queue)
    b["metadata"]["resourceVersion"] = str(version)
    return b


async def test_the_scheduler_lists_every_queueworker_itself_and_keeps_the_newest_body() -> None:
    """At start (and on resume) one LIST registers every QueueWorker, without waiting for kopf to deliver them
    one by one; one deleted while the list was in flight is not registered from its answer, and a body older than
    the one registered (kopf catching up) does not replace it."""
    clock = [100.0]
    metrics = OperatorMetrics(CollectorRegistry())
    poller = BrokerPoller("default", Reader(), 1.0)  # type: ignore[arg-type]
    kube = Kube()
    answer = [versioned("a", "a", 7), versioned("b", "b", 8), versioned("c", "c", 9)]
    gate, lists = asyncio.Event(), [0]

    async def lister() -> list[Any]:
        lists[0] += 1
        await gate.wait()
        return [dict(b) for b in answer]

    def make(b: Any) -> Ticker:
        return Ticker("ns", b["metadata"]["name"], b, kube, metrics, lambda ns, dep: Replicas(0, 0, 0))  # type: ignore[arg-type]

    s = Scheduler({"default": poller}, make, metrics, 5.0, clock=lambda: clock[0], lister=lister)
    s.start()
    try:
        await asyncio.sleep(0)
        assert lists == [1] and not s.listed.is_set()
        s.upsert("uid-b", versioned("b", "b", 5))  # kopf's ADDED, then its DELETED, while the list is answered
        s.remove("uid-b")
        newer = versioned("c", "c-moved", 12)
        s.upsert("uid-c", newer)  # kopf already has a newer c than the list will bring
        gate.set()
        await asyncio.wait_for(s.listed.wait(), 2)
        assert set(s.entries) == {"uid-a", "uid-c"}
        assert s.entries["uid-c"].ticker.body is newer and poller._regs["uid-c"][1] == "c-moved"  # noqa: SLF001
        s.upsert("uid-a", versioned("a", "a", 6))  # kopf delivering an older a: ignored
        assert s.entries["uid-a"].ticker.body["metadata"]["resourceVersion"] == "7"
        await poll(poller, clock)
        assert set(kube.statuses) == {"a", "c"}  # both ticked on the first snapshot: each wrote its first status
        # Paused: the registry empties; resumed: listed again (b is back in the answer, as if re-created)
        s.pause(True)
        assert s.entries == {}
        s.pause(False)
        for _ in range(5):
            await asyncio.sleep(0)
        assert lists == [2] and set(s.entries) == {"uid-a", "uid-b", "uid-c"}
    finally:
        await s.stop()


async def test_queueworkers_whose_queue_changed_tick_first_in_the_round() -> None:
    """At thousands of QueueWorkers a round of ticks takes tens of milliseconds: the ones whose queue changed in
    this snapshot (a burst to scale for) go before the unchanged ones."""
    clock = [100.0]
    depth = {"a": 0, "b": 0, "c": 0}

    class Changing(Reader):
        async def fetch(self, vhost: str | None = None) -> dict[tuple[str, str], QueueMetrics | None]:
            return {("/", q): QueueMetrics(d, 0, 0, 0.0, 0.0) for q, d in depth.items()}

    metrics = OperatorMetrics(CollectorRegistry())
    poller = BrokerPoller("default", Changing(), 1.0)  # type: ignore[arg-type]
    order: list[str] = []

    def make(b: Any) -> Ticker:
        t = Ticker("ns", b["metadata"]["name"], b, Kube(), metrics, lambda ns, dep: Replicas(0, 0, 0))  # type: ignore[arg-type]
        real = t.begin

        def recorded(snap: Any) -> Any:
            order.append(t.name)
            return real(snap)

        t.begin = recorded  # type: ignore[method-assign]
        return t

    s = Scheduler({"default": poller}, make, metrics, 5.0, clock=lambda: clock[0])
    s.start()
    try:
        for n in "abc":
            s.upsert(f"uid-{n}", body(n, n))
        await poll(poller, clock)
        assert order == ["a", "b", "c"]  # the first snapshot: every queue is new, registration order
        order.clear()
        depth["c"] = 15
        await poll(poller, clock)
        assert order[0] == "c" and sorted(order) == ["a", "b", "c"]
        order.clear()
        await poll(poller, clock)  # nothing changed: every one still decided
        assert sorted(order) == ["a", "b", "c"]
    finally:
        await s.stop()


async def test_with_two_reads_per_interval_a_changed_queue_ticks_at_once_the_others_at_their_interval() -> None:
    """The depth is read twice per pollingInterval (QW_BROKER_READS_PER_INTERVAL=2): a QueueWorker whose queue
    changed is decided at the first read that shows it, an unchanged one still once per interval."""
    clock = [100.0]
    depth = {"a": 0, "b": 0}

    class Changing(Reader):
        async def fetch(self, vhost: str | None = None) -> dict[tuple[str, str], QueueMetrics | None]:
            return {("/", q): QueueMetrics(d, 0, 0, 0.0, 0.0) for q, d in depth.items()}

    metrics = OperatorMetrics(CollectorRegistry())
    poller = BrokerPoller("default", Changing(), 1.0, reads_per_interval=2)  # type: ignore[arg-type]
    ticked: dict[str, int] = {"a": 0, "b": 0}

    def make(b: Any) -> Ticker:
        t = Ticker("ns", b["metadata"]["name"], b, Kube(), metrics, lambda ns, dep: Replicas(0, 0, 0))  # type: ignore[arg-type]
        real = t.begin

        def counted(snap: Any) -> Any:
            ticked[t.name] += 1
            return real(snap)

        t.begin = counted  # type: ignore[method-assign]
        return t

    s = Scheduler({"default": poller}, make, metrics, 5.0, clock=lambda: clock[0])
    s.start()
    try:
        for n in "ab":
            s.upsert(f"uid-{n}", body(n, n))
        assert poller.read_interval == 0.5
        await poll(poller, clock, 0.5)
        assert ticked == {"a": 1, "b": 1}
        for _ in range(4):  # 2 s of reads every 0.5 s; b's queue changes on each
            depth["b"] += 1
            await poll(poller, clock, 0.5)
        assert ticked == {"a": 3, "b": 5}
    finally:
        await s.stop()
