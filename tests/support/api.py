"""Run the real API (uvicorn, real HTTP on 127.0.0.1) in a background thread, or as a process, for tests."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

import httpx
import uvicorn
from pydantic import BaseModel, SecretStr
from qw_api.main import create_app
from qw_core.settings import ApiSettings

from tests.support.procs import stop_group
from tests.support.util import free_port, http_ok
from tests.support.wait import wait_for

ROOT = Path(__file__).resolve().parents[2]


S = TypeVar("S", bound=BaseModel)


def on_s3(settings: S, env: dict[str, str], **extra: Any) -> S:
    """`settings` pointed at the S3 prefix of `s3_env` (the QW_* of the tests' weed server), plus `extra`."""
    return settings.model_copy(
        update={
            "storage_url": env["QW_STORAGE_URL"],
            "s3_endpoint_url": env["QW_S3_ENDPOINT_URL"],
            "s3_access_key_id": SecretStr(env["QW_S3_ACCESS_KEY_ID"]),
            "s3_secret_access_key": SecretStr(env["QW_S3_SECRET_ACCESS_KEY"]),
            **extra,
        }
    )


@contextmanager
def running_api(settings: ApiSettings) -> Iterator[tuple[str, object]]:
    """Yields (base_url, app). The app's services are at app.state.services once started."""
    port = free_port()
    app = create_app(settings)
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_config=None, lifespan="on"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    base = f"http://127.0.0.1:{port}"
    wait_for("the API server to start", lambda: server.started, 20, 0.05)
    try:
        yield base, app
    finally:
        server.should_exit = True
        thread.join(15)


def client(base: str, key: str | None = "key-acme") -> httpx.Client:
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    return httpx.Client(base_url=base, headers=headers, timeout=30)


@contextmanager
def api_process(env: dict[str, str], log: Path, timeout: float = 60) -> Iterator[str]:
    """`python -m qw_api` as a child process (its own process group) with `env` on top of os.environ and a free
    QW_API_PORT; yields its base URL once /readyz answers 200; stops it (SIGTERM, then SIGKILL) afterwards."""
    port = free_port()
    proc_env = {**os.environ, "QW_ENV": "test", "QW_LOG_FORMAT": "json", **env, "QW_API_PORT": str(port)}
    with open(log, "ab") as out:
        proc = subprocess.Popen([sys.executable, "-m", "qw_api"], env=proc_env, cwd=ROOT, stdout=out,
                                stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True)  # fmt: skip
    base = f"http://127.0.0.1:{port}"
    try:
        wait_for("the API ready", lambda: http_ok(base + "/readyz") or proc.poll() is not None, timeout, 0.1)
        assert proc.poll() is None, log.read_text(errors="replace")[-3000:]
        yield base
    finally:
        stop_group(proc)
