"""Before/after of the publish path: the API at several git revisions, interleaved round by round with the no-op
endpoint (bench/noop_app.py), so each change is measured in isolation on a busy machine and judged by its ratio
to the ceiling measured in the same minute.

    python -m bench.ab_publish [--seconds 5] [--rounds 3] REV [REV...]

Each revision is checked out (git worktree, detached, removed afterwards) and served with its own api/, core/ and
workers/ first on PYTHONPATH, by this checkout's interpreter and dependencies. Per revision: the median over the
rounds of its closed-loop rate (64 connections), of that rate over the round's no-op rate, of its CPU time per
request (all threads) and the no-op's over it (`cpu_vs_noop`: the rate ratio one core would give, the figure a
busy machine disturbs least), and of its open-loop p99 at half the round's no-op rate.
"""

from __future__ import annotations

import argparse
import atexit
import json
import signal
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from bench.publish import EMAIL_REQUEST, ROOT, Broker, _drop_vhost, _load, _serve, _vhost, bench_noop, free_port


def _checkout(rev: str, into: Path) -> Path:
    sha = subprocess.run(["git", "rev-parse", "--short", rev], cwd=ROOT, check=True, capture_output=True, text=True)
    path = into / sha.stdout.strip()
    subprocess.run(["git", "worktree", "add", "--detach", str(path), rev], cwd=ROOT, check=True, capture_output=True)
    return path


def _api_at(tree: Path, broker: Broker, tmp: Path, seconds: float, rate: float) -> dict[str, Any]:
    vhost, url = _vhost(broker)
    port = free_port()
    env = {
        "PYTHONPATH": ":".join(str(tree / d) for d in ("api", "core", "workers", "operator", "sdk")),
        "QW_RABBITMQ_URL": url, "QW_API_PORT": str(port), "QW_API_KEYS": "bench-key:bench",
        "QW_DATABASE_URL": f"sqlite:///{tmp}/ab-{vhost}.db", "QW_STORAGE_DIR": str(tmp / "storage"),
        "QW_LOG_LEVEL": "WARNING", "QW_TENANT_RATE": "0",
    }  # fmt: skip
    try:
        proc = _serve([sys.executable, "-m", "qw_api"], env, port)
        return _load([proc], port, EMAIL_REQUEST, 202, seconds, rate)
    finally:
        _drop_vhost(broker, vhost)


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("revs", nargs="+")
    parser.add_argument("--seconds", type=float, default=5)
    parser.add_argument("--rounds", type=int, default=3)
    a = parser.parse_args()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # stopped: still remove the checkouts (finally below)
    broker = Broker()
    if broker.start():  # a node this run started stops with it; one already running is left
        atexit.register(broker.stop)
    rows: dict[str, list[dict[str, float]]] = {rev: [] for rev in a.revs}
    with tempfile.TemporaryDirectory(prefix="qw-ab-") as d:
        tmp = Path(d)
        trees = {rev: _checkout(rev, tmp) for rev in a.revs}
        try:
            for _ in range(a.rounds):
                noop = bench_noop(a.seconds)
                base, rate = noop["closed_loop_64"]["ok_per_s"], noop["offered_per_s"]
                base_cpu = noop["closed_loop_64"]["cpu_us_per_request"]
                for rev, tree in trees.items():
                    r = _api_at(tree, broker, tmp, a.seconds, rate)
                    peak = r["closed_loop_64"]["ok_per_s"]
                    rows[rev].append(
                        {
                            "ok_per_s": peak,
                            "vs_noop": peak / max(base, 0.1),
                            "p99_ms": r["open_loop"]["p99_ms"],
                            "noop_per_s": base,
                            "offered_per_s": rate,
                            "cpu_us_per_request": (cpu := r["closed_loop_64"]["cpu_us_per_request"]),
                            "noop_cpu_us_per_request": base_cpu,
                            "cpu_vs_noop": base_cpu / max(cpu, 0.1),
                        }  # fmt: skip
                    )
        finally:
            for tree in trees.values():
                subprocess.run(["git", "worktree", "remove", "--force", str(tree)], cwd=ROOT, capture_output=True)
    out = {
        rev: {
            key: round(statistics.median(r[key] for r in runs), 2)
            for key in ("ok_per_s", "vs_noop", "p99_ms", "noop_per_s", "cpu_us_per_request", "cpu_vs_noop")
        }
        | {"rounds": runs}
        for rev, runs in rows.items()
    }
    print(json.dumps({"benchmark": "publish-ab", "seconds": a.seconds, "revisions": out}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
