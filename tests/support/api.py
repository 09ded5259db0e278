"""Run the real API (uvicorn, real HTTP on 127.0.0.1) in a background thread for tests."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

import httpx
import uvicorn
from qw_api.main import create_app
from qw_core.settings import ApiSettings

from tests.support.util import free_port, wait_until  # noqa: F401 - re-exported for the API suites


@contextmanager
def running_api(settings: ApiSettings) -> Iterator[tuple[str, object]]:
    """Yields (base_url, app). The app's services are at app.state.services once started."""
    port = free_port()
    app = create_app(settings)
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_config=None, lifespan="on"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        if server.started:
            break
        time.sleep(0.05)
    else:
        raise TimeoutError("API did not start")
    try:
        yield base, app
    finally:
        server.should_exit = True
        thread.join(15)


def client(base: str, key: str | None = "key-acme") -> httpx.Client:
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    return httpx.Client(base_url=base, headers=headers, timeout=30)
