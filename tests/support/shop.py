"""The shop example (examples/shop) for tests: its orders service as a real process, and what its tables say."""

from __future__ import annotations

import collections
import os
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from tests.support.procs import stop_group
from tests.support.smtp import Recorder
from tests.support.util import free_port, http_ok
from tests.support.wait import wait_for

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = str(ROOT / "examples")


def shop_env(env: dict[str, Any], shop_database_url: str) -> dict[str, str]:
    """`env` plus what the shop's processes need: `shop` importable, its database, QW_APP for the workers."""
    path = os.pathsep.join(p for p in (EXAMPLES, env.get("PYTHONPATH", "")) if p)
    return {**{k: str(v) for k, v in env.items()}, "PYTHONPATH": path, "SHOP_DATABASE_URL": shop_database_url,
            "QW_APP": "shop.tasks"}  # fmt: skip


@contextmanager
def shop_service(env: dict[str, str], log: Path) -> Iterator[str]:
    """`uvicorn --factory shop.app:create_app` on a free port (its own process group); yields its base URL."""
    port = free_port()
    cmd = [sys.executable, "-m", "uvicorn", "--factory", "shop.app:create_app", "--port", str(port), "--no-access-log"]
    with open(log, "ab") as out:
        proc = subprocess.Popen(cmd, env=env, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, start_new_session=True)  # fmt: skip
    base = f"http://127.0.0.1:{port}"
    try:
        wait_for("the shop service", lambda: http_ok(base + "/stock") or proc.poll() is not None, 60, 0.1)
        assert proc.poll() is None, log.read_text(errors="replace")[-3000:]
        yield base
    finally:
        stop_group(proc)


def mails_per_order(smtp: Recorder) -> collections.Counter[str]:
    """How many confirmation mails the SMTP server accepted for each order id."""
    return collections.Counter(str(m["X-Shop-Order-Id"]) for m in smtp.messages())
