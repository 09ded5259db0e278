"""A small HTTP/1.1 load generator on raw asyncio streams (keep-alive), light enough to share 2 cores.

closed_loop: N connections, each sends its next request when the last one answered (max throughput).
open_loop:   requests scheduled at a fixed rate; latency counts from the scheduled time, so a slow
             server cannot hide its queueing (no coordinated omission).
`port` may be a list: connections go round-robin to each (several server processes, as behind a Service).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

Ports = int | Sequence[int]


def _ports(port: Ports) -> list[int]:
    return [port] if isinstance(port, int) else list(port)


@dataclass
class Result:
    latencies: list[float] = field(default_factory=list)
    statuses: dict[int, int] = field(default_factory=dict)
    elapsed: float = 0.0
    errors: int = 0

    def add(self, status: int, latency: float) -> None:
        self.statuses[status] = self.statuses.get(status, 0) + 1
        self.latencies.append(latency)

    def pct(self, p: float) -> float:
        xs = sorted(self.latencies)
        return xs[min(len(xs) - 1, int(p / 100 * len(xs)))] if xs else float("nan")

    def summary(self, ok: int = 202) -> dict[str, float]:
        n_ok = self.statuses.get(ok, 0)
        return {
            "requests": len(self.latencies),
            "ok": n_ok,
            "errors": self.errors + len(self.latencies) - n_ok,
            "ok_per_s": round(n_ok / self.elapsed, 1) if self.elapsed else 0.0,
            "p50_ms": round(self.pct(50) * 1000, 2),
            "p99_ms": round(self.pct(99) * 1000, 2),
        }


def build_request(path: str, body: bytes, headers: dict[str, str]) -> bytes:
    head = [f"POST {path} HTTP/1.1", "Host: 127.0.0.1", f"Content-Length: {len(body)}",
            "Content-Type: application/json"] + [f"{k}: {v}" for k, v in headers.items()]  # fmt: skip
    return ("\r\n".join(head) + "\r\n\r\n").encode() + body


async def _read_response(reader: asyncio.StreamReader) -> int:
    status_line = await reader.readline()
    status = int(status_line.split()[1])
    length = 0
    while True:
        line = await reader.readline()
        if line in (b"\r\n", b""):
            break
        if line.lower().startswith(b"content-length:"):
            length = int(line.split(b":")[1])
    if length:
        await reader.readexactly(length)
    return status


class Conn:
    def __init__(self, port: int) -> None:
        self.port = port
        self.rw: tuple[asyncio.StreamReader, asyncio.StreamWriter] | None = None

    async def send(self, raw: bytes) -> int:
        if self.rw is None:
            self.rw = await asyncio.open_connection("127.0.0.1", self.port)
        reader, writer = self.rw
        writer.write(raw)
        await writer.drain()
        return await _read_response(reader)

    def close(self) -> None:
        if self.rw:
            self.rw[1].close()


async def closed_loop(port: Ports, make_request, connections: int, seconds: float) -> Result:
    res = Result()
    stop = time.perf_counter() + seconds
    ports = _ports(port)

    async def worker(port: int) -> None:
        c = Conn(port)
        try:
            while time.perf_counter() < stop:
                t = time.perf_counter()
                try:
                    status = await c.send(make_request())
                except (OSError, asyncio.IncompleteReadError, ValueError, IndexError):
                    res.errors += 1
                    c.close()
                    c = Conn(port)
                    continue
                res.add(status, time.perf_counter() - t)
        finally:
            c.close()

    start = time.perf_counter()
    await asyncio.gather(*(worker(ports[i % len(ports)]) for i in range(connections)))
    res.elapsed = time.perf_counter() - start
    return res


async def open_loop(port: Ports, make_request, rate: float, seconds: float, max_connections: int = 128) -> Result:
    res = Result()
    ports = _ports(port)
    idle: list[Conn] = [Conn(ports[i % len(ports)]) for i in range(max_connections)]
    n = int(rate * seconds)
    start = time.perf_counter()
    tasks = []

    async def one(scheduled: float) -> None:
        if not idle:
            res.errors += 1  # more in flight than connections: counts as a failure to keep the rate
            return
        c = idle.pop()
        try:
            status = await c.send(make_request())
            res.add(status, time.perf_counter() - scheduled)
            idle.append(c)
        except (OSError, asyncio.IncompleteReadError, ValueError, IndexError):
            res.errors += 1
            c.close()
            idle.append(Conn(c.port))

    for i in range(n):
        scheduled = start + i / rate
        delay = scheduled - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        tasks.append(asyncio.create_task(one(scheduled)))
    await asyncio.gather(*tasks)
    res.elapsed = time.perf_counter() - start
    for c in idle:
        c.close()
    return res
