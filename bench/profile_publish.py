"""Where the API's time goes under the publish benchmark's load: `python -m qw_api` under py-spy (PyPI) while the
load generator keeps 64 connections busy on POST /v1/emails, then a summary by part of the request path.

    python -m bench.profile_publish [SECONDS] [--out DIR] [--noop]

py-spy samples the process (all threads, idle time left out: `--idle` not given) at 250 Hz into collapsed stacks
(DIR/api.collapsed, one line per stack: frames joined by ';' and a sample count); the summary counts, for each
part, the samples whose stack passes through any of its frames (inclusive, so parts may overlap).
"""

from __future__ import annotations

import argparse
import atexit
import json
import shutil
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

from bench.loadgen import closed_loop
from bench.publish import EMAIL_REQUEST, ROOT, Broker, _drop_vhost, _vhost, free_port, wait_until

# part -> substrings of a frame ("function (file:line)") that put a sample in that part
PARTS: dict[str, tuple[str, ...]] = {
    "event loop + uvicorn HTTP (parse, transport)": ("httptools_impl.py", "uvloop"),
    "store writes (their thread)": ("write_api_rows", "qw_core/store.py"),
    "AMQP publish + confirms": ("aio_pika", "aiormq", "pamqp", "qw_api/publisher.py", "qw_api/amqp.py", "pika/"),
    "pydantic (body, task message)": ("pydantic", "model_dump_json", "email_validator"),
    "FastAPI routing + dependencies": ("fastapi/routing.py", "fastapi/dependencies", "starlette/routing.py"),
    "metrics middleware": ("qw_api/metrics.py", "prometheus_client"),
    "body-size middleware": ("qw_api/limits.py",),
    "JSON response": ("JSONResponse", "responses.py", "render ("),
    "url_for (status_url)": ("url_for", "url_path_for"),
    "thread hops (run_in_threadpool)": ("run_in_threadpool", "to_thread", "anyio", "concurrent/futures"),
}


def summarise(collapsed: Path) -> dict[str, object]:
    total, parts, leaves = 0, Counter[str](), Counter[str]()
    for line in collapsed.read_text().splitlines():
        stack, _, n = line.rpartition(" ")
        count = int(n)
        total += count
        for part, needles in PARTS.items():
            if any(needle in stack for needle in needles):
                parts[part] += count
        leaves[stack.split(";")[-1]] += count
    pct = {k: round(100 * v / max(total, 1), 1) for k, v in parts.most_common()}
    top = {k: round(100 * v / max(total, 1), 1) for k, v in leaves.most_common(25)}
    return {"samples": total, "inclusive_percent_by_part": pct, "top_self_percent": top}


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("seconds", nargs="?", type=float, default=15)
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--noop", action="store_true", help="profile the no-op endpoint (bench/noop_app.py) instead")
    a = parser.parse_args()
    spy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    out = a.out or Path(tempfile.mkdtemp(prefix="qw-profile-"))
    out.mkdir(parents=True, exist_ok=True)
    broker = Broker()
    if broker.start():  # a node this run started stops with it; one already running is left
        atexit.register(broker.stop)
    vhost, url = _vhost(broker)
    port = free_port()
    env = {
        "QW_RABBITMQ_URL": url, "QW_API_PORT": str(port), "QW_API_KEYS": "bench-key:bench",
        "QW_DATABASE_URL": f"sqlite:///{out}/api.db", "QW_STORAGE_DIR": str(out / "storage"),
        "QW_LOG_LEVEL": "WARNING", "QW_TENANT_RATE": "0",
    }  # fmt: skip
    import os

    cmd = [sys.executable, "-m", "bench.noop_app" if a.noop else "qw_api"]
    api = subprocess.Popen(cmd, env={**os.environ, **env, "NOOP_PORT": str(port)}, cwd=ROOT)
    try:
        wait_until(lambda: _listening(port), 30, what="the API to listen")
        closed_loop(port, EMAIL_REQUEST, 8, 2)  # warm-up
        collapsed = out / "api.collapsed"
        rec = subprocess.Popen(
            [spy, "record", "--pid", str(api.pid), "--rate", "250", "--format", "raw", "--threads",
             "--duration", str(int(a.seconds)), "--output", str(collapsed), "--nonblocking"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        time.sleep(1)
        result = closed_loop(port, EMAIL_REQUEST, 64, a.seconds - 1)
        rec.wait(60)
    finally:
        api.terminate()
        api.wait(15)
        _drop_vhost(broker, vhost)
    print(json.dumps({"load": result, "collapsed": str(collapsed), **summarise(collapsed)}, indent=2))
    return 0


def _listening(port: int) -> bool:
    import socket

    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


if __name__ == "__main__":
    sys.exit(main())
