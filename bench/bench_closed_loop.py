#!/usr/bin/env python3
"""The closed loop as a benchmark: the same burst of email tasks through the real API, broker, operator, workers,
PostgreSQL and SMTP server, once autoscaling (min 1, max 5 workers) and once at fixed min replicas (the baseline),
with each run's timeline (queue depth, workers, tasks done, twice a second) for its picture (bench/plots).

    python bench/bench_closed_loop.py [--tasks 1000]

It runs tests/e2e/test_closed_loop.py's burst test (the same assertions: every task done once, every mail once)
with QW_CLOSED_LOOP_FIXED=1 and QW_CLOSED_LOOP_RESULTS set, and prints that JSON with the ratios added.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--tasks", type=int, default=1000)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="qw-closed-loop-") as tmp:
        out = Path(tmp) / "closed-loop.json"
        env = {**os.environ, "QW_CLOSED_LOOP_TASKS": str(args.tasks), "QW_CLOSED_LOOP_FIXED": "1",
               "QW_CLOSED_LOOP_RESULTS": str(out)}  # fmt: skip
        cmd = [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-q", "-x",
               "tests/e2e/test_closed_loop.py", "-k", "test_burst_scales_up"]  # fmt: skip
        r = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=1800)
        if r.returncode or not out.exists():
            print(r.stdout[-3000:] + r.stderr[-3000:], file=sys.stderr)
            return 1
        data = json.loads(out.read_text())
    auto, fixed = (run["figures"] for run in data["runs"])
    data["ratios"] = {
        "autoscaling_over_fixed_drain": round(auto["drain_seconds"] / max(fixed["drain_seconds"], 1e-3), 3),
        "autoscaling_over_fixed_replica_seconds": round(
            auto["replica_seconds_until_drained_and_back"] / max(fixed["replica_seconds_until_drained_and_back"], 1e-3),
            3,
        ),
    }
    print(json.dumps(data))
    return 0


if __name__ == "__main__":
    sys.exit(main())
