"""Small helpers every suite uses."""

from __future__ import annotations

import socket
import urllib.error
import urllib.request
from collections.abc import Callable
from typing import TypeVar

from tests.support.wait import wait_for

T = TypeVar("T")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_until(predicate: Callable[[], T], timeout: float = 10.0, interval: float = 0.05, what: str = "condition") -> T:
    """Kept only for bench/publish.py (outside tests/); tests use tests.support.wait.wait_for."""
    return wait_for(what, predicate, timeout, interval)


def http_ok(url: str) -> bool:
    """True when GET `url` answers 200 (e.g. a service's /readyz); False on any other answer or no answer."""
    try:
        with urllib.request.urlopen(url, timeout=2) as r:  # noqa: S310 - test services on 127.0.0.1
            return bool(r.status == 200)
    except (urllib.error.URLError, OSError):
        return False
