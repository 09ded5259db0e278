"""`make dev` + `make demo`: the whole local platform (real broker, API, autoscaled worker processes, SMTP sink)
takes a batch of uploads, scales workers up, drains the queue and scales back to zero; the demo reports it, and
draws it as a timeline picture from the JSON it writes beside it."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from qw_core.store import open_store

from tests.support.timeline import png_size
from tests.support.util import free_port, http_ok
from tests.support.wait import wait_for

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parents[2]


def test_demo_uploads_a_batch_and_watches_workers_scale_up_drain_and_scale_down(broker, amqp_url, tmp_path):
    db = f"sqlite:///{tmp_path}/dev.db"
    api_port = free_port()
    env = {
        **os.environ,
        "QW_RABBITMQ_URL": amqp_url,  # a private vhost on the session broker; dev.py reuses a running broker
        "QW_RABBITMQ_MANAGEMENT_URL": broker.management_url,
        "QW_DATABASE_URL": db,
        "QW_STORAGE_DIR": str(tmp_path / "storage"),
        "QW_API_PORT": str(api_port),
        "QW_SMTP_PORT": str(free_port()),
        "QW_LOCAL_BASE_PORT": str(free_port()),
        "QW_LOCAL_MAX_REPLICAS": "3",
        "QW_LOCAL_MESSAGES_PER_REPLICA": "5",
        "QW_LOCAL_COOLDOWN_SECONDS": "3",
        "QW_LOCAL_STABILIZATION_SECONDS": "3",
        "QW_LOCAL_INTERVAL": "1",
        "QW_TEST_TASK_DELAY": "1.0",  # each image takes a second longer, so the backlog outlasts a few scaler ticks
        "QW_ENV": "test",
    }
    dev = subprocess.Popen([sys.executable, "scripts/dev.py"], cwd=ROOT, env=env, stdout=subprocess.PIPE,
                           stderr=subprocess.STDOUT, text=True)  # fmt: skip
    try:
        wait_for("make dev's API", lambda: http_ok(f"http://127.0.0.1:{api_port}/readyz"), 60, 0.3)
        demo = subprocess.run(
            [sys.executable, "scripts/demo.py", "--count", "60", "--size", "640x480", "--every", "0.5",
             "--timeout", "240", "--timeline", str(tmp_path / "demo.png")],
            cwd=ROOT, env=env, capture_output=True, text=True, timeout=300,
        )  # fmt: skip
    finally:
        dev.send_signal(signal.SIGTERM)
        dev_out = dev.communicate(timeout=60)[0]
    out = demo.stdout + demo.stderr
    assert demo.returncode == 0, out[-4000:] + "\n--- dev ---\n" + dev_out[-4000:]
    assert "60/60 images succeeded, 0 failed, 0 dead" in out, out[-4000:]
    peak = int(re.search(r"workers peaked at (\d+)", out).group(1))  # type: ignore[union-attr]
    assert peak >= 2, out[-4000:]  # the backlog brought up more than one worker...
    assert "workers back to 0" in out, out[-4000:]  # ...and they went away once it drained
    assert re.search(r"\| queue \d+ \| workers [1-9]", out), out[-4000:]  # the progress line showed it live
    store = open_store(db)
    assert store.counts() == {"succeeded": 60}
    # The picture of the run it showed: its path printed, a PNG of the figure's size, drawn from the JSON beside it,
    # whose series tell the same story as the lines above.
    png = Path(re.search(r"^timeline: (.+\.png)$", out, re.M).group(1))  # type: ignore[union-attr]
    assert png == tmp_path / "demo.png" and png_size(png) == (800, 700)
    tl = json.loads(png.with_suffix(".json").read_text())["timeline"]
    assert max(tl["workers"]) == peak and tl["workers"][-1] == 0, tl["workers"]
    assert tl["tasks"]["succeeded"][-1] == 60 and max(tl["depth"]) > 0, tl
    assert len(tl["t_s"]) == len(tl["depth"]) == len(tl["tasks"]["queued"]) and tl["t_s"] == sorted(tl["t_s"])
    assert dev.returncode == 0, dev_out[-3000:]
