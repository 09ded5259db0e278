"""A read works out only what changed (the Prometheus lines that differ, the queues whose inputs moved), and gives
exactly what a whole parse and a whole combine give: checked step by step over random histories of a broker's
answers (depth moving, publishes on several exchanges, queues added and deleted, a name that needs escaping,
management answers repeated or new, rate holds running out, a Prometheus read failing), 3.10 and 4.x."""

from __future__ import annotations

import random
from typing import Any

import pytest
from qw_operator.prometheus import PrometheusReader, Scrape, parse_scrape
from qw_operator.rabbitmq import BrokerPoller, QueueMetrics

ODD = 'odd "one" \\ here'  # a queue name the endpoint escapes


def esc(v: str) -> str:
    return v.replace("\\", "\\\\").replace('"', '\\"')


class Broker:
    """Queues with depth and counters, rendered as rabbitmq_prometheus renders them (one family after another)."""

    def __init__(self, rng: random.Random, version: str) -> None:
        self.rng, self.version, self.n = rng, version, 0
        self.queues: dict[str, dict[str, Any]] = {}
        for _ in range(12):
            self.add()
        self.add(ODD)

    def add(self, name: str | None = None) -> None:
        self.n += 1
        self.queues[name or f"q{self.n}"] = {"ready": 0, "unacked": 0, "consumers": 0, "red": 0, "ack": 0,
                                             "pub": {"": 0}}  # fmt: skip

    def step(self) -> None:
        rng = self.rng
        for q in self.queues.values():
            if rng.random() < 0.5:
                q["red"] += rng.randint(1, 900)  # reductions: move on every emission, never read
        for q in rng.sample(sorted(self.queues), k=min(len(self.queues), rng.randint(0, 3))):
            st = self.queues[q]
            what = rng.choice(["ready", "unacked", "consumers", "pub", "ack"])
            if what == "pub":
                ex = rng.choice(["", "qw.retry"])
                st["pub"][ex] = st["pub"].get(ex, 0) + rng.randint(1, 50)
            else:
                st[what] = rng.randint(0, 30)
        if rng.random() < 0.06:
            self.add()
        if rng.random() < 0.05 and len(self.queues) > 3:
            del self.queues[rng.choice(sorted(self.queues))]

    def text(self) -> str:
        counters = self.version.startswith("4")
        lab = {q: f'vhost="/",queue="{esc(q)}"' for q in self.queues}
        out = []
        for fam, key in (("messages_ready", "ready"), ("messages_unacked", "unacked"), ("messages", None),
                         ("process_reductions_total", "red"), ("consumers", "consumers")):  # fmt: skip
            out.append(f"# TYPE rabbitmq_detailed_queue_{fam} gauge")
            for q, st in self.queues.items():
                v = st["ready"] + st["unacked"] if key is None else st[key]
                out.append(f"rabbitmq_detailed_queue_{fam}{{{lab[q]}}} {v}")
        if counters:
            out.append("# TYPE rabbitmq_detailed_queue_messages_acked_total counter")
            out += [f"rabbitmq_detailed_queue_messages_acked_total{{{lab[q]}}} {st['ack']}"
                    for q, st in self.queues.items()]  # fmt: skip
            out.append("# TYPE rabbitmq_detailed_queue_exchange_messages_published_total counter")
            for q, st in self.queues.items():
                for ex, n in st["pub"].items():
                    out.append(f'rabbitmq_detailed_queue_exchange_messages_published_total{{vhost="/",'
                               f'exchange="{ex}",queue="{esc(q)}"}} {n}')  # fmt: skip
        out.append(f'rabbitmq_build_info{{rabbitmq_version="{self.version}"}} 1')
        out.append('rabbitmq_identity_info{rabbitmq_node="rabbit@here"} 1')
        return "\n".join(out) + "\n"

    def management(self, now: float) -> dict[tuple[str, str], QueueMetrics | None]:
        rng = self.rng
        return {
            ("/", q): None if rng.random() < 0.05 else QueueMetrics(
                st["ready"], st["unacked"], st["consumers"], round(rng.random(), 1) * (sum(st["pub"].values()) > 0),
                0.0, sum(st["pub"].values()), st["ack"])
            for q, st in self.queues.items()
        }  # fmt: skip


def same(a: Scrape, b: Scrape) -> None:
    assert (dict(a.depth), dict(a.published), dict(a.acked), a.version, a.node) == (
        dict(b.depth), dict(b.published), dict(b.acked), b.version, b.node)  # fmt: skip


@pytest.mark.parametrize("seed", range(6))
def test_parsing_only_the_changed_lines_gives_what_a_whole_parse_gives(seed: int) -> None:
    rng = random.Random(seed)
    broker = Broker(rng, "4.0.5")
    reader = PrometheusReader("http://x", None)  # type: ignore[arg-type]
    incremental = 0
    prev = None
    for _ in range(300):
        text = broker.text()
        got, whole = reader.parse("http://x", text), parse_scrape(text)
        same(got, whole)
        if got.changed is not None:
            incremental += 1
            assert prev is not None and got.since == prev.number
            moved = {k for k in whole.depth if whole.depth[k] != prev.depth.get(k)}
            moved |= {k for k in whole.published if whole.published[k] != prev.published.get(k)}
            moved |= {k for k in whole.acked if whole.acked[k] != prev.acked.get(k)}
            assert moved <= got.changed  # every queue whose figures moved is named (and only changed lines are)
        prev = got
        broker.step()
    assert incremental > 150  # most reads (no queue added or deleted) took the short way


class Failed:
    """What _combine asks of a depth reader: which endpoints failed."""

    def __init__(self) -> None:
        self.failed: dict[str, str] = {}
        self.calls = 0


@pytest.mark.parametrize("version", ["3.10.8", "4.0.5"])
@pytest.mark.parametrize("seed", range(5))
def test_combining_only_the_changed_queues_gives_what_a_whole_combine_gives(version: str, seed: int) -> None:
    rng = random.Random(seed)
    broker = Broker(rng, version)
    reader = PrometheusReader("http://x", None)  # type: ignore[arg-type]
    polls = []
    for incremental in (True, False):
        p = BrokerPoller("b", None, depth_reader=Failed())  # type: ignore[arg-type]
        p.incremental = incremental
        polls.append(p)
    now, management, short = 1000.0, None, 0
    for step in range(400):
        text = broker.text()
        fail = rng.random() < 0.05
        fast = None if fail else [("rabbit@here", reader.parse("http://x", text))]
        whole = None if fail else [("rabbit@here", parse_scrape(text))]
        if version.startswith("3") or fail:
            if management is None or rng.random() < 0.3:
                management = broker.management(now)  # a new answer; otherwise the last one again (same object)
        elif rng.random() < 0.9:
            management = None
        for p in polls:
            p.depth_reader.failed = {"http://x": "down"} if fail else {}
        a = polls[0]._combine(management, fast, now)  # noqa: SLF001
        b = polls[1]._combine(management, whole, now)  # noqa: SLF001
        assert a == b, f"step {step}"
        short += fast is not None and fast[0][1].changed is not None
        now += rng.choice([0.25, 0.5, 1.0, 3.0, 9.0])
        broker.step()
    assert short > 200


def test_a_publish_at_an_unchanged_rate_still_moves_published_at() -> None:
    """4.x, two nodes: a counter growing at exactly the same rate leaves the rate as it was, but the queue was
    published to again: its `published_at` (what tells a live rate from a stale one) moves on all the same."""
    poller = BrokerPoller("b", None, depth_reader=Failed())  # type: ignore[arg-type]
    key = ("/", "steady")
    got = []
    reader = PrometheusReader("http://x", None)  # type: ignore[arg-type]
    for i in range(5):
        text = (f'rabbitmq_detailed_queue_consumers{{vhost="/",queue="steady"}} 1\n'
                f'rabbitmq_detailed_queue_exchange_messages_published_total{{vhost="/",exchange="",queue="steady"}} '
                f'{10 * i}\nrabbitmq_build_info{{rabbitmq_version="4.0.5"}} 1\n')  # fmt: skip
        scrape = reader.parse("http://x", text)
        assert i < 1 or scrape.changed == {key}  # the short way
        other = reader.parse(
            "http://y",
            'rabbitmq_detailed_queue_consumers{vhost="/",queue="elsewhere"} 0\n'
            'rabbitmq_build_info{rabbitmq_version="4.0.5"} 1\n',
        )
        queues, _, _ = poller._combine(None, [("n1", scrape), ("n2", other)], 100.0 + i)  # noqa: SLF001
        got.append((queues[key].publish_rate, queues[key].published_at))
    assert [r for r, _ in got[2:]] == [10.0, 10.0, 10.0]
    assert [t for _, t in got[2:]] == [102.0, 103.0, 104.0]
