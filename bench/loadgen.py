"""The HTTP load of the publish benchmarks: bench/loadgen-go, a small Go program (standard library only), built
here into .run/bin/loadgen on first use (`go build`; cached, so an unchanged source costs nothing).

Why Go: the Python asyncio generator it replaced shared the 2 cores with the server it measured and was itself
the ceiling: it could not keep even the no-op endpoint busy. This one reports its own CPU per request
(`loadgen_cpu_us_per_request`, 40-75 us here) so a table can show it is not.

closed_loop: N keep-alive connections, each sends its next request when the last one answered (max throughput).
open_loop:   requests scheduled at a fixed rate; latency counts from the scheduled time, so a slow server cannot
             hide its queueing (no coordinated omission); a request finding no idle connection is an error.
`port` may be a list: connections go round-robin to each (several server processes, as behind a Service).
Every request is `POST <path>` with Host, Content-Length, Content-Type: application/json, the given headers and
the body. Each run returns: requests (answered), ok (answered with `ok`), errors (failed or answered otherwise),
ok_per_s, p50_ms, p99_ms (null without an answer), statuses, loadgen_cpu_us_per_request.
"""

from __future__ import annotations

import functools
import json
import os
import shutil
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
SOURCE = ROOT / "bench" / "loadgen-go"
BINARY = ROOT / ".run" / "bin" / "loadgen"

Ports = int | Sequence[int]


@dataclass(frozen=True)
class Request:
    path: str
    body: bytes
    headers: dict[str, str] = field(default_factory=dict)


@functools.cache
def binary() -> Path:
    """The built load generator (`go build` once per process: a no-op when nothing changed)."""
    go = shutil.which("go") or "/usr/local/go/bin/go"
    BINARY.parent.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "GOTOOLCHAIN": "local", "CGO_ENABLED": "0"}
    subprocess.run([go, "build", "-o", str(BINARY), "."], cwd=SOURCE, env=env, check=True)
    return BINARY


def _run(port: Ports, request: Request, ok: int, seconds: float, *mode: str) -> dict[str, Any]:
    ports = [port] if isinstance(port, int) else list(port)
    cmd = [str(binary()), *mode, "-ports", ",".join(map(str, ports)), "-path", request.path, "-seconds", str(seconds)]
    cmd += ["-body", request.body.decode(), "-ok", str(ok)]
    for name, value in request.headers.items():
        cmd += ["-header", f"{name}: {value}"]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True, timeout=seconds + 120)
    result: dict[str, Any] = json.loads(out.stdout)
    return result


def closed_loop(port: Ports, request: Request, connections: int, seconds: float, ok: int = 202) -> dict[str, Any]:
    return _run(port, request, ok, seconds, "-mode", "closed", "-connections", str(connections))


def open_loop(
    port: Ports, request: Request, rate: float, seconds: float, ok: int = 202, max_connections: int = 128
) -> dict[str, Any]:
    return _run(
        port, request, ok, seconds, "-mode", "open", "-rate", str(rate), "-max-connections", str(max_connections)
    )
