"""Benchmark 1, the publish path: confirmed tasks/s and latency of POST /v1/emails through the real API
(one uvicorn process), side by side with
  (a) the seed guide's pattern: a new pika connection per request, no confirms (bench/seed_app.py), and
  (b) a bare pika publish loop with confirms: the broker's own limit for one confirming publisher here.
All against the same local RabbitMQ, in one run, each in a fresh vhost.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
import urllib.parse
import uuid
from pathlib import Path
from typing import Any

import pika

from bench.loadgen import build_request, closed_loop, open_loop

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "scripts"))
sys.path.insert(0, str(ROOT))

from rabbitmq import Broker  # noqa: E402

from tests.support.util import free_port, wait_until  # noqa: E402

EMAIL = {"to": "bench@example.com", "subject": "bench", "text": "hello"}


def _vhost(broker: Broker) -> tuple[str, str]:
    name = f"bench-{uuid.uuid4().hex[:8]}"
    q = urllib.parse.quote(name, safe="")
    broker.api(f"/api/vhosts/{q}", "PUT", {})
    broker.api(f"/api/permissions/{q}/guest", "PUT", {"configure": ".*", "write": ".*", "read": ".*"})
    return name, f"amqp://guest:guest@127.0.0.1:{broker.port}/{q}"


def _drop_vhost(broker: Broker, name: str) -> None:
    broker.api(f"/api/vhosts/{urllib.parse.quote(name, safe='')}", "DELETE")


def _serve(cmd: list[str], env: dict[str, str], port: int) -> subprocess.Popen[bytes]:
    p = subprocess.Popen(cmd, env={**os.environ, **env}, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=ROOT)

    def up() -> bool:
        import socket

        with socket.socket() as s:
            return s.connect_ex(("127.0.0.1", port)) == 0

    wait_until(up, 30, what="server to listen")
    time.sleep(0.5)
    return p


def _load(
    broker: Broker,
    vhost: str,
    proc: subprocess.Popen[bytes],
    port: int,
    raw: bytes,
    ok: int,
    seconds: float,
    rate: float,
) -> dict[str, Any]:
    """Warm up, then a closed-loop peak and an open-loop paced run against one server; stops it afterwards."""
    try:
        asyncio.run(closed_loop(port, lambda: raw, 8, 2))  # warm-up
        peak = asyncio.run(closed_loop(port, lambda: raw, 64, seconds)).summary(ok)
        paced = asyncio.run(open_loop(port, lambda: raw, rate, seconds)).summary(ok)
    finally:
        proc.terminate()
        proc.wait(15)
        _drop_vhost(broker, vhost)
    return {"closed_loop_64": peak, f"open_loop_{int(rate)}_per_s": paced}


def bench_api(broker: Broker, tmp: Path, seconds: float, rate: float) -> dict[str, Any]:
    vhost, url = _vhost(broker)
    port = free_port()
    env = {
        "QW_RABBITMQ_URL": url, "QW_API_PORT": str(port), "QW_API_KEYS": "bench-key:bench",
        "QW_DATABASE_URL": f"sqlite:///{tmp}/bench-api.db", "QW_STORAGE_DIR": str(tmp / "storage"),
        "QW_LOG_LEVEL": "WARNING",
        "QW_TENANT_RATE": "0",  # the ceiling: one tenant, not throttled by the per-tenant rate (a policy, not a cost)
    }  # fmt: skip
    proc = _serve([sys.executable, "-m", "qw_api"], env, port)
    raw = build_request("/v1/emails", json.dumps(EMAIL).encode(), {"Authorization": "Bearer bench-key"})
    return _load(broker, vhost, proc, port, raw, 202, seconds, rate)


def bench_seed(broker: Broker, seconds: float, rate: float) -> dict[str, Any]:
    vhost, url = _vhost(broker)
    port = free_port()
    cmd = [sys.executable, "-m", "uvicorn", "bench.seed_app:app", "--port", str(port), "--log-level", "warning"]
    proc = _serve(cmd, {"SEED_RABBITMQ_URL": url}, port)
    raw = build_request("/send-task", json.dumps(EMAIL).encode(), {})
    out = _load(broker, vhost, proc, port, raw, 200, seconds, rate)
    out["closed_loop_64"]["note"] = "no publisher confirms: ok means sent, not confirmed"
    return out


def bench_bare_pika(broker: Broker, seconds: float) -> dict[str, Any]:
    vhost, url = _vhost(broker)
    conn = pika.BlockingConnection(pika.URLParameters(url))
    ch = conn.channel()
    ch.queue_declare("bare", durable=True, arguments={"x-queue-type": "quorum"})
    ch.confirm_delivery()
    body = json.dumps({"task_id": "x", **EMAIL}).encode()
    props = pika.BasicProperties(delivery_mode=2)
    n, lat = 0, []
    stop = time.perf_counter() + seconds
    start = time.perf_counter()
    while time.perf_counter() < stop:
        t = time.perf_counter()
        ch.basic_publish("", "bare", body, props, mandatory=True)
        lat.append(time.perf_counter() - t)
        n += 1
    elapsed = time.perf_counter() - start
    conn.close()
    _drop_vhost(broker, vhost)
    lat.sort()
    return {
        "confirmed_per_s": round(n / elapsed, 1),
        "p50_ms": round(lat[len(lat) // 2] * 1000, 2),
        "p99_ms": round(lat[int(len(lat) * 0.99)] * 1000, 2),
    }


def run(tmp: Path, seconds: float = 10, rate: float = 1000) -> dict[str, Any]:
    broker = Broker()
    broker.start()
    api = bench_api(broker, tmp, seconds, rate)
    seed = bench_seed(broker, seconds, rate)
    bare = bench_bare_pika(broker, seconds)
    api_peak = api["closed_loop_64"]["ok_per_s"]
    return {
        "benchmark": "publish",
        "api": api,
        "seed_pattern": seed,
        "bare_pika_confirms": bare,
        "ratios": {
            "api_vs_seed_throughput": round(api_peak / max(seed["closed_loop_64"]["ok_per_s"], 0.1), 2),
            "api_vs_bare_pika_confirms": round(api_peak / max(bare["confirmed_per_s"], 0.1), 2),
        },
        "goals": {
            "confirmed_per_s>=2000": api_peak >= 2000,
            "p99_ms<=50_at_1000_per_s": api[f"open_loop_{int(rate)}_per_s"]["p99_ms"] <= 50,
        },  # fmt: skip
    }


if __name__ == "__main__":
    import tempfile

    with tempfile.TemporaryDirectory() as d:
        print(json.dumps(run(Path(d), float(sys.argv[1]) if len(sys.argv) > 1 else 10), indent=2))
