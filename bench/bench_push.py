#!/usr/bin/env python3
"""Live status to N subscribers of one API process: pushed from the broker (qw.events) against the polling stream
(QW_EVENTS_PUSH=false: every stream reads the store every QW_SSE_POLL_INTERVAL), measured the same way.

Each of N SSE clients follows its own task (`GET /v1/tasks/{id}/events`, raw asyncio streams), spread over
--client-processes processes (each its own event loop: one loop holding 10,000 connections would measure itself as
much as the server). The API runs with QW_EVENTS_TRACE, so each pushed frame says when its hub received the change:
the latency is split into store -> hub (broker and consumer) and hub -> client (the fan-out). Once all of them
have the stored state, a writer plays the worker: `store.start_attempt` on M tasks at a fixed rate, through a store
whose changes are published exactly as the worker's are (qw_core.events). Latency = the client's receive time minus
the task's `updated_at` (the store's write time; one machine, one clock). Store load = the API's
queueworker_api_store_transactions_total over the measurement, per second.

    python bench/bench_push.py --subscribers 1000 10000 --changes 300 --rate 50

RabbitMQ 3.10 as a private node on free ports (or --amqp-url); SQLite store; `python -m qw_api` as a child
process. Raises this process's open-file limit to its hard limit (the child inherits it). Prints one JSON object.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import multiprocessing
import os
import resource
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "scripts"))

from qw_core.events import EventPublisher  # noqa: E402
from qw_core.store import open_store  # noqa: E402

KEY, TENANT = "bench-key", "bench"
# `python -m qw_api`, logging every collection of the older generations and its pause (a stall seen in the figures
# may be the collector's, or the machine's).
GC_LOGGING_API = """
import gc, runpy, sys, time
began = {}
def log(phase, info):
    if info["generation"] == 0:
        return
    if phase == "start":
        began["t"] = time.perf_counter()
    else:
        ms = (time.perf_counter() - began["t"]) * 1000
        print(f"gc gen{info['generation']} {ms:.1f} ms", file=sys.stderr, flush=True)
gc.callbacks.append(log)
runpy.run_module("qw_api", run_name="__main__")
"""
CONNECTS_AT_ONCE = 200


def log(msg: str) -> None:
    print(f"{time.strftime('%H:%M:%S')} {msg}", file=sys.stderr, flush=True)


def raise_fd_limit() -> int:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return hard


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextmanager
def api(amqp_url: str, db_url: str, tmp: Path, push: bool, streams: int) -> Iterator[tuple[int, Path]]:
    port = _free_port()
    env = {**os.environ, "QW_ENV": "test", "QW_LOG_LEVEL": "WARNING", "QW_RABBITMQ_URL": amqp_url,
           "QW_DATABASE_URL": db_url, "QW_STORAGE_DIR": str(tmp / "storage"), "QW_API_KEYS": f"{KEY}:{TENANT}",
           "QW_API_PORT": str(port), "QW_EVENTS_PUSH": "true" if push else "false", "QW_EVENTS_TRACE": "true",
           "QW_MAX_STREAMS": str(streams + 100), "QW_MAX_STREAMS_PER_TENANT": str(streams + 100)}  # fmt: skip
    log = open(tmp / f"api-{port}.log", "ab")  # noqa: SIM115 - closed below
    proc = subprocess.Popen([sys.executable, "-c", GC_LOGGING_API], env=env, cwd=ROOT, stdout=log,
                            stderr=subprocess.STDOUT, start_new_session=True)  # fmt: skip
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=2):
                    break
            except OSError:
                time.sleep(0.2)
        else:
            raise RuntimeError("the API did not become ready: " + (tmp / f"api-{port}.log").read_text()[-2000:])
        yield port, tmp / f"api-{port}.log"
    finally:
        proc.terminate()
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()


def store_transactions(port: int) -> float:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=30) as r:
        for line in r.read().decode().splitlines():
            if line.startswith("queueworker_api_store_transactions_total"):
                return float(line.split()[-1])
    return float("nan")


class Subscriber:
    """One SSE client: `ready` once the stored state arrived; `latencies` of the changes after it, and `hub_lags`:
    for each, from the store's write to the API's hub receiving it (the `: hub <time>` comment QW_EVENTS_TRACE adds
    to pushed frames), so the latency splits into store -> hub (broker, consumer) and hub -> client (fan-out)."""

    def __init__(self, task_id: str) -> None:
        self.task_id = task_id
        self.ready = asyncio.Event()
        self.latencies: list[float] = []
        self.hub_lags: list[float] = []
        self.frames = 0

    async def run(self, port: int, gate: asyncio.Semaphore) -> None:
        async with gate:
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(f"GET /v1/tasks/{self.task_id}/events HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                         f"Authorization: Bearer {KEY}\r\n\r\n".encode())  # fmt: skip
            status = await reader.readline()
            if b" 200 " not in status:
                raise RuntimeError(f"stream refused: {status!r}")
            while (await reader.readline()) not in (b"\r\n", b""):
                pass
        hub: float | None = None
        try:
            while True:
                line = await reader.readline()
                if not line:
                    return
                if line.startswith(b": hub "):
                    hub = float(line[6:])
                    continue
                start = line.find(b"data: ")
                if start < 0:
                    continue
                now = time.time()
                view = json.loads(line[start + 6 :])
                self.frames += 1
                if self.ready.is_set():
                    self.latencies.append(now - view["updated_at"])
                    if hub is not None:
                        self.hub_lags.append(hub - view["updated_at"])
                self.ready.set()
                hub = None
        finally:
            writer.close()


def pct(xs: list[float], p: float) -> float:
    xs = sorted(xs)
    return round(xs[min(len(xs) - 1, int(p / 100 * len(xs)))] * 1000, 2) if xs else float("nan")


def write_changes(db_url: str, amqp_url: str, task_ids: list[str], rate: float) -> None:
    """The worker's side: each task to `processing`, at `rate` per second, its change published as a worker's."""
    store = open_store(db_url)
    events = EventPublisher([amqp_url]).start().attach(store)
    events.connected.wait(30)  # a worker is long connected when its tasks change
    try:
        start = time.monotonic()
        for i, task_id in enumerate(task_ids):
            delay = start + i / rate - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            store.start_attempt(task_id, 1)
    finally:
        events.close()
        store.close()


def gc_pauses(api_log: Path, generation: int = 2) -> list[float]:
    lines = api_log.read_text().splitlines()
    return [float(line.split()[2]) for line in lines if line.startswith(f"gc gen{generation} ")]


def clients(port: int, task_ids: list[str], chosen: set[str], to_parent: Any, measured: Any) -> None:
    """One client process (its own event loop) holding its share of the subscribers: tells the parent when all
    have their stored state, then, once the writer is done (`measured`), waits for its chosen tasks' changes and
    sends back what it measured."""
    raise_fd_limit()
    try:
        to_parent.put(asyncio.run(_clients(port, task_ids, chosen, to_parent, measured)))
    except Exception as exc:
        to_parent.put({"error": str(exc)[:300]})


async def _clients(port: int, task_ids: list[str], chosen: set[str], to_parent: Any, measured: Any) -> dict:
    subs = [Subscriber(t) for t in task_ids]
    gate = asyncio.Semaphore(CONNECTS_AT_ONCE)
    runs = [asyncio.create_task(s.run(port, gate)) for s in subs]
    waiting = asyncio.gather(*(s.ready.wait() for s in subs))
    done, _ = await asyncio.wait({waiting, *runs}, timeout=300, return_when=asyncio.FIRST_COMPLETED)
    if waiting not in done:  # a stream ended or failed first, or the time ran out
        raise RuntimeError(f"only {sum(s.ready.is_set() for s in subs)} of {len(subs)} subscribers got their state")
    # The collector stays off while it measures: a full collection over thousands of connections' objects would
    # stall the clock, not the server.
    gc.collect()
    gc.freeze()
    gc.disable()
    to_parent.put("ready")
    await asyncio.to_thread(measured.wait)
    mine = [s for s in subs if s.task_id in chosen]
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and not all(s.latencies for s in mine):  # noqa: ASYNC110
        await asyncio.sleep(0.1)
    for r in runs:
        r.cancel()
    await asyncio.gather(*runs, return_exceptions=True)
    return {
        "latencies": {s.task_id: s.latencies for s in mine},
        "hub_lags": [x for s in mine for x in s.hub_lags],
        "frames": sum(s.frames for s in subs),
        "subscribers": len(subs),
    }


async def measure(
    port: int, db_url: str, amqp_url: str, task_ids: list[str], changes: int, rate: float, api_log: Path, procs: int
) -> dict:
    step = max(1, len(task_ids) // changes)
    chosen = task_ids[::step][:changes]
    ctx = multiprocessing.get_context("spawn")
    to_parent, measured = ctx.Queue(), ctx.Event()
    shares = [task_ids[i::procs] for i in range(procs)]
    opened = time.monotonic()
    children = [ctx.Process(target=clients, args=(port, share, set(chosen), to_parent, measured)) for share in shares]
    for c in children:
        c.start()
    try:
        for _ in children:
            msg = await asyncio.to_thread(to_parent.get, True, 330)
            if msg != "ready":
                raise RuntimeError(str(msg))
        subscribe_s = time.monotonic() - opened
        log(f"{len(task_ids)} subscribed in {subscribe_s:.1f} s ({procs} client processes)")
        await asyncio.sleep(2)  # settle
        before, t0 = await asyncio.to_thread(store_transactions, port), time.monotonic()
        gc_before = len(gc_pauses(api_log)), len(gc_pauses(api_log, 1))
        # The writer is a process of its own, as a worker is.
        writer = ctx.Process(target=write_changes, args=(db_url, amqp_url, chosen, rate))
        writer.start()
        await asyncio.to_thread(writer.join)
        measured.set()
        outs = [await asyncio.to_thread(to_parent.get, True, 60) for _ in children]
        elapsed = time.monotonic() - t0
        after = await asyncio.to_thread(store_transactions, port)
    finally:
        measured.set()
        for c in children:
            c.join(10)
            if c.is_alive():
                c.kill()
    errors = [o["error"] for o in outs if "error" in o]
    if errors:
        raise RuntimeError(errors[0])
    by_id = {t: lat for o in outs for t, lat in o["latencies"].items()}
    lat = [x for t in chosen for x in by_id[t]]
    hub = [x for o in outs for x in o["hub_lags"]]
    slowest = sorted(chosen, key=lambda t: -max(by_id[t] or [0]))[:8]
    log(f"slowest changes (index, ms): {[(chosen.index(t), round(max(by_id[t] or [0]) * 1000)) for t in slowest]}")
    return {
        "subscribers": len(task_ids),
        "client_processes": procs,
        "changes": len(chosen),
        "received": sum(1 for t in chosen if by_id[t]),
        "unexpected_frames": sum(o["frames"] for o in outs) - len(task_ids) - len(lat),
        "p50_ms": pct(lat, 50),
        "p99_ms": pct(lat, 99),
        "max_ms": pct(lat, 100),
        # the latency split (push only): store write -> the API's hub, and what is left, hub -> client
        "store_to_hub_p50_ms": pct(hub, 50),
        "store_to_hub_p99_ms": pct(hub, 99),
        "hub_to_client_p50_ms": pct(_minus(lat, hub), 50) if len(hub) == len(lat) else None,
        "hub_to_client_p99_ms": pct(_minus(lat, hub), 99) if len(hub) == len(lat) else None,
        "store_tx_per_s": round((after - before) / elapsed, 1),
        # the API's collections of generations 2 (full) and 1 while measuring
        "api_gc_gen2_pauses_ms": gc_pauses(api_log)[gc_before[0] :],
        "api_gc_gen1_pauses_ms": gc_pauses(api_log, 1)[gc_before[1] :],
        "subscribe_seconds": round(subscribe_s, 1),
        "load_average_1m": round(os.getloadavg()[0], 1),  # this machine is shared: how busy it was
    }


def _minus(a: list[float], b: list[float]) -> list[float]:
    return [x - y for x, y in zip(a, b, strict=True)]


def prepare(db_url: str, n: int) -> list[str]:
    store = open_store(db_url)
    ids = [uuid.uuid4().hex for _ in range(n)]
    store.create_pending_many([(t, TENANT, "email", None) for t in ids])
    for i in range(0, n, 500):
        store.confirm_queued_many(ids[i : i + 500])
    store.close()
    return ids


def run_one(amqp_url: str, n: int, push: bool, changes: int, rate: float, procs: int = 1) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="qw-bench-push-") as tmpdir:
        tmp = Path(tmpdir)
        db_url = f"sqlite:///{tmp}/qw.db"
        ids = prepare(db_url, n)
        log(f"{n} tasks stored; starting the API (push={push})")
        with api(amqp_url, db_url, tmp, push, n) as (port, api_log):
            log("API ready")
            out = asyncio.run(measure(port, db_url, amqp_url, ids, changes, rate, api_log, procs))
    return {"mode": "push" if push else "poll", **out}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--subscribers", type=int, nargs="+", default=[1000, 10000])
    p.add_argument("--changes", type=int, default=300)
    p.add_argument("--rate", type=float, default=50.0, help="changes per second written")
    p.add_argument("--modes", nargs="+", default=["push", "poll"], choices=["push", "poll"])
    p.add_argument("--amqp-url", help="a running broker (default: a private RabbitMQ started here)")
    p.add_argument("--client-processes", type=int, default=4, help="processes (event loops) holding the clients")
    a = p.parse_args()
    fds = raise_fd_limit()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # stop the API and the broker on the way out
    results: list[dict[str, Any]] = []

    def all_runs(url: str) -> None:
        for n in a.subscribers:
            for mode in a.modes:
                try:
                    results.append(run_one(url, n, mode == "push", a.changes, a.rate, a.client_processes))
                except Exception as exc:  # e.g. polling at 10,000 never got every stream its state
                    results.append({"mode": mode, "subscribers": n, "error": str(exc)[:300]})
                print(json.dumps(results[-1]), file=sys.stderr, flush=True)

    if a.amqp_url:
        all_runs(a.amqp_url)
    else:
        from rabbitmq import Broker, free_broker_ports

        amqp, mgmt, prom = free_broker_ports()
        with tempfile.TemporaryDirectory(prefix="qw-bench-rmq-") as base:
            broker = Broker(name=f"qwbench-{amqp}", port=amqp, mgmt_port=mgmt, prom_port=prom, base=Path(base))
            broker.start()
            log("broker started")
            try:
                all_runs(f"amqp://guest:guest@127.0.0.1:{amqp}/%2F")
            finally:
                broker.destroy()
    ratios = {}
    for n in a.subscribers:
        by = {r["mode"]: r for r in results if r.get("subscribers") == n and "p99_ms" in r}
        if "push" in by and "poll" in by:
            ratios[str(n)] = {
                "p99_push_over_poll": round(by["push"]["p99_ms"] / by["poll"]["p99_ms"], 3),
                "store_tx_push_over_poll": round(
                    by["push"]["store_tx_per_s"] / max(by["poll"]["store_tx_per_s"], 0.1), 4
                ),
            }
    print(json.dumps({"fd_limit": fds, "rate_per_s": a.rate, "results": results, "ratios": ratios}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
