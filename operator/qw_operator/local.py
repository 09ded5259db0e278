"""Local autoscaling for `make dev`: the operator's policy and management-API reader driving a pool of worker
processes on this machine instead of a Deployment.

    python -m qw_operator.local image email      # one scaled pool per task kind
    QW_APP=shop.tasks python -m qw_operator.local inventory   # a kind of your own: its workers load QW_APP

Each tick: one batched read of the vhost's queues -> `decide()` per kind -> start or SIGTERM worker processes
(surplus ones get SIGTERM, as a kubelet would, so they finish the task in hand). Spec comes from QW_LOCAL_* env.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import re
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from typing import Any

import aiohttp
from qw_core.logs import configure_logging
from qw_core.messages import KIND_PATTERN, KINDS
from qw_core.settings import OperatorSettings, load
from qw_core.topology import queue_name

from .observe import read_queue
from .policy import Decision, History, Policy, decide
from .rabbitmq import BrokerPoller, ManagementReader, PrometheusReader

log = logging.getLogger("qw_operator.local")


@dataclass
class ProcessPool:
    """A scale target made of local processes: `scale(n)` starts or stops processes until n run."""

    kind: str
    base_port: int
    env: dict[str, str]
    procs: list[subprocess.Popen[bytes]] = field(default_factory=list)

    @property
    def replicas(self) -> int:
        self.procs = [p for p in self.procs if p.poll() is None]
        return len(self.procs)

    def _free_port(self) -> int:
        used = {int(getattr(p, "qw_port", 0)) for p in self.procs}
        return next(self.base_port + i for i in range(1000) if self.base_port + i not in used)

    def scale(self, n: int) -> None:
        while self.replicas < n:
            port = self._free_port()
            p = subprocess.Popen(
                [sys.executable, "-m", "qw_workers", self.kind],
                env={**self.env, "QW_METRICS_PORT": str(port)},
            )
            p.qw_port = port  # type: ignore[attr-defined]
            self.procs.append(p)
        while self.replicas > n:
            p = self.procs.pop()  # newest first
            p.send_signal(signal.SIGTERM)

    def stop(self, grace: float = 30.0) -> None:
        for p in self.procs:
            p.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + grace
        for p in self.procs:
            try:
                p.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                p.kill()


def local_spec(env: dict[str, str]) -> dict[str, Any]:
    """The QueueWorker spec for local pools (camelCase, as in the CRD)."""
    return {
        "minReplicas": int(env.get("QW_LOCAL_MIN_REPLICAS", 0)),
        "maxReplicas": int(env.get("QW_LOCAL_MAX_REPLICAS", 4)),
        "scaling": {
            "mode": env.get("QW_LOCAL_MODE", "QueueLength"),
            "messagesPerReplica": int(env.get("QW_LOCAL_MESSAGES_PER_REPLICA", 10)),
            "cooldownSeconds": int(env.get("QW_LOCAL_COOLDOWN_SECONDS", 30)),
            "scaleDownStabilizationSeconds": int(env.get("QW_LOCAL_STABILIZATION_SECONDS", 15)),
        },
    }


async def run(kinds: list[str], interval: float, stop: asyncio.Event) -> None:
    settings = load(OperatorSettings)
    vhost = settings.rabbitmq_url.get_secret_value().rsplit("/", 1)[-1] or "/"
    from urllib.parse import unquote

    vhost = unquote(vhost) or "/"
    env = dict(os.environ)
    policy = Policy.from_spec(local_spec(env))
    pools = {k: ProcessPool(k, int(env.get("QW_LOCAL_BASE_PORT", 9300)) + 100 * i, env) for i, k in enumerate(kinds)}
    history = {k: History() for k in kinds}
    async with aiohttp.ClientSession() as session:
        # The operator's own poller: one batched read per tick, Prometheus depth when configured (falling back to
        # the management API's), rates held between stats emissions.
        prom = settings.rabbitmq_prometheus_url.strip()
        poller = BrokerPoller(
            "local",
            ManagementReader(settings.rabbitmq_management_url.get_secret_value(), session),
            interval,
            depth_reader=PrometheusReader(prom, session) if prom else None,
        )
        for kind in kinds:
            poller.register(kind, vhost, queue_name(kind), interval)
        try:
            while not stop.is_set():
                snap = await poller.poll_once()
                for kind, pool in pools.items():
                    # A failed read or a queue without depth holds the replicas, as in the operator.
                    obs = read_queue(snap, vhost, queue_name(kind)).observation
                    d: Decision = decide(policy, obs, history[kind], pool.replicas, time.time())
                    history[kind] = d.history
                    if d.replicas != pool.replicas:
                        log.info("%s: %d -> %d (%s)", kind, pool.replicas, d.replicas, d.reason)
                        pool.scale(d.replicas)
                try:
                    await asyncio.wait_for(stop.wait(), interval)
                except TimeoutError:
                    pass
        finally:
            for pool in pools.values():
                pool.stop()


def task_kind(name: str) -> str:
    """A kind the pool can run: a built-in one, or any valid SDK kind name (its workers import QW_APP)."""
    if name not in KINDS and not re.fullmatch(KIND_PATTERN, name):
        raise argparse.ArgumentTypeError(f"{name!r} is neither image, email nor a task kind name ({KIND_PATTERN})")
    return name


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("kinds", nargs="+", type=task_kind)
    p.add_argument("--interval", type=float, default=float(os.environ.get("QW_LOCAL_INTERVAL", 2.0)))
    a = p.parse_args(argv)
    configure_logging(os.environ.get("QW_LOG_FORMAT", "text"), "INFO")

    async def _main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        await run(a.kinds, a.interval, stop)

    asyncio.run(_main())
    return 0


if __name__ == "__main__":
    sys.exit(main())
