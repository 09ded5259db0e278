"""Kubernetes writes the apiserver refuses for now (429, 409, 5xx) are retried with backoff; others are not.

A write that gets no answer is given up after its timeout and retried too: that fault is real here (a server on
127.0.0.1 that reads the request and never answers).

The apiserver is faked here: a 429 or a 5xx cannot be made on demand cheaply on the real control plane (it takes
thousands of concurrent writes to get the apiserver to throttle), so a fake raises the same `ApiException` the
kubernetes client raises. The real control plane's answer is measured by the operator e2e suites.
"""

from __future__ import annotations

import asyncio
import http.server
import threading
from typing import Any

import pytest
from kubernetes import client as k8s
from kubernetes.client.rest import ApiException
from qw_operator.scaler import NO_ANSWER, Kube
from urllib3.exceptions import HTTPError as TransportError


class Refusing:
    """A CustomObjectsApi / AppsV1Api whose writes fail with `statuses` in turn, then succeed."""

    def __init__(self, *statuses: int, retry_after: str | None = None) -> None:
        self.statuses = list(statuses)
        self.retry_after = retry_after
        self.calls: list[tuple[Any, ...]] = []

    def _call(self, *args: Any, _request_timeout: float | None = None) -> dict[str, Any]:
        assert _request_timeout is not None, "every write has a timeout"
        self.calls.append(args)
        if self.statuses:
            exc = ApiException(status=self.statuses.pop(0), reason="refused")
            exc.headers = {"Retry-After": self.retry_after} if self.retry_after else None
            raise exc
        return {}

    patch_namespaced_custom_object_status = _call
    patch_namespaced_deployment = _call


def kube(api: Refusing | None = None, port: int = 1, timeout: float = 20.0) -> tuple[Kube, list[float], list[int]]:
    """A Kube on `api` (a fake) or, without one, on the server at 127.0.0.1:`port`; its backoff sleeps are recorded,
    not slept."""
    retried: list[int] = []
    k = Kube(k8s.ApiClient(k8s.Configuration(host=f"http://127.0.0.1:{port}")), on_retry=retried.append,
             timeout=timeout)  # fmt: skip
    if api is not None:
        k.custom = api  # type: ignore[assignment]
        k.apps = api  # type: ignore[assignment]
    slept: list[float] = []

    async def sleep(seconds: float) -> None:
        slept.append(seconds)

    k.sleep = sleep
    return k, slept, retried


async def test_a_throttled_status_write_is_retried_with_growing_backoff() -> None:
    api = Refusing(429, 429, 503)
    k, slept, retried = kube(api)
    await k.patch_status("ns", "w", {"replicas": 2})
    assert len(api.calls) == 4 and api.calls[-1][-1] == {"status": {"replicas": 2}}
    assert retried == [429, 429, 503]
    # jittered exponential backoff: 0.5, 1, 2 s, each scaled by [0.5, 1]
    assert [0.25 <= slept[0] <= 0.5, 0.5 <= slept[1] <= 1, 1 <= slept[2] <= 2] == [True, True, True]


async def test_retry_after_is_honoured_and_a_replica_patch_retries_too() -> None:
    api = Refusing(429, retry_after="3")
    k, slept, _ = kube(api)
    await k.set_replicas("ns", "dep", 4)
    assert slept == [3.0] and api.calls[-1][-1] == {"spec": {"replicas": 4}}


async def test_a_conflict_is_retried() -> None:
    api = Refusing(409)
    k, _, retried = kube(api)
    await k.patch_status("ns", "w", {})
    assert retried == [409] and len(api.calls) == 2


@pytest.mark.parametrize("status", [403, 404, 422])
async def test_errors_that_would_repeat_are_raised_at_once(status: int) -> None:
    api = Refusing(status)
    k, slept, _ = kube(api)
    with pytest.raises(ApiException) as err:
        await k.patch_status("ns", "w", {})
    assert err.value.status == status and len(api.calls) == 1 and slept == []


async def test_a_write_refused_every_time_gives_up_after_the_last_attempt() -> None:
    api = Refusing(*[429] * 10)
    k, slept, _ = kube(api)
    with pytest.raises(ApiException):
        await k.patch_status("ns", "w", {})
    assert len(api.calls) == Kube.attempts and len(slept) == Kube.attempts - 1 and max(slept) <= Kube.max_backoff


DEPLOYMENT = b'{"apiVersion": "apps/v1", "kind": "Deployment", "spec": {"selector": {}, "template": {}}}'


class Silent(http.server.ThreadingHTTPServer):
    """A real HTTP server on 127.0.0.1 whose first `hang` requests are read and never answered (what a connection
    dropped without a reset looks like from the client) until `close`, then answered 200. `requests`: each one's
    request line and body."""

    daemon_threads = True

    def __init__(self, hang: int) -> None:
        super().__init__(("127.0.0.1", 0), _Answer)
        self.hang = hang
        self.requests: list[bytes] = []
        self.port = self.server_address[1]
        self.released = threading.Event()
        threading.Thread(target=self.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.released.set()
        self.shutdown()
        self.server_close()


class _Answer(http.server.BaseHTTPRequestHandler):
    server: Silent
    protocol_version = "HTTP/1.1"

    def do_PATCH(self) -> None:  # noqa: N802 - http.server's naming
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        self.server.requests.append(self.requestline.encode() + b" " + body)
        if len(self.server.requests) <= self.server.hang:
            self.server.released.wait()  # read, never answered
            self.close_connection = True
            return
        answer = DEPLOYMENT if "/deployments/" in self.path else b"{}"
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(answer)))
        self.end_headers()
        self.wfile.write(answer)

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - http.server's signature
        pass


async def test_a_write_that_gets_no_answer_is_given_up_after_its_timeout_and_sent_again() -> None:
    """Without a timeout the first write here would wait forever, holding a writer thread: with every writer held
    so, no replica change would go out again."""
    server = Silent(hang=2)
    try:
        k, _, retried = kube(port=server.port, timeout=0.3)
        await asyncio.wait_for(k.set_replicas("ns", "dep", 3), 10)
        assert retried == [NO_ANSWER, NO_ANSWER]
        assert len(server.requests) == 3
        assert all(r.startswith(b"PATCH /apis/apps/v1/namespaces/ns/deployments/dep") for r in server.requests)
        assert {r.split(b" ", 3)[3] for r in server.requests} == {b'{"spec": {"replicas": 3}}'}  # the same patch
    finally:
        server.close()


async def test_a_write_never_answered_ends_in_an_error_after_the_last_attempt() -> None:
    server = Silent(hang=100)
    try:
        k, _, retried = kube(port=server.port, timeout=0.2)
        with pytest.raises(TransportError):
            await asyncio.wait_for(k.patch_status("ns", "w", {"replicas": 1}), 20)
        assert len(server.requests) == Kube.attempts and retried == [NO_ANSWER] * (Kube.attempts - 1)
    finally:
        server.close()
