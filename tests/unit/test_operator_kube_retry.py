"""Kubernetes writes the apiserver refuses for now (429, 409, 5xx) are retried with backoff; others are not.

A write that gets no answer is given up after its timeout and retried too: that fault is real here (a server on
127.0.0.1 that reads the request and never answers).

The apiserver is faked here: a 429 or a 5xx cannot be made on demand cheaply on the real control plane (it takes
thousands of concurrent writes to get the apiserver to throttle), so a fake raises the same `ApiException` the
kubernetes client raises. The real control plane's answer is measured by the operator e2e suites.
"""

from __future__ import annotations

import asyncio
import socket
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


def kube(api: Refusing) -> tuple[Kube, list[float], list[int]]:
    retried: list[int] = []
    k = Kube(k8s.ApiClient(k8s.Configuration(host="http://127.0.0.1:1")), on_retry=retried.append)
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


class Silent:
    """A real HTTP server on 127.0.0.1 whose first `hang` requests are read and never answered (what a connection
    dropped without a reset looks like from the client), then answered 200."""

    def __init__(self, hang: int) -> None:
        self.hang = hang
        self.requests: list[bytes] = []
        self._held: list[socket.socket] = []
        self._sock = socket.create_server(("127.0.0.1", 0))
        self.port = self._sock.getsockname()[1]
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self._sock.accept()
            except OSError:
                return
            conn.settimeout(5)
            data = b""
            while b"\r\n\r\n" not in data:
                data += conn.recv(65536)
            head, _, body = data.partition(b"\r\n\r\n")
            length = int(
                next((h.split(b":")[1] for h in head.split(b"\r\n") if h.lower().startswith(b"content-length")), b"0")
            )
            while len(body) < length:
                body += conn.recv(65536)
            self.requests.append(head.split(b"\r\n")[0] + b" " + body)
            if len(self.requests) <= self.hang:
                self._held.append(conn)  # read, never answered, never closed
                continue
            answer = DEPLOYMENT if b"/deployments/" in head else b"{}"
            conn.sendall(
                b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nConnection: close\r\n"
                + b"Content-Length: %d\r\n\r\n" % len(answer)
                + answer
            )
            conn.close()

    def close(self) -> None:
        self._sock.close()
        for c in self._held:
            c.close()


def silent_kube(server: Silent, timeout: float) -> tuple[Kube, list[int]]:
    retried: list[int] = []
    k = Kube(k8s.ApiClient(k8s.Configuration(host=f"http://127.0.0.1:{server.port}")), on_retry=retried.append,
             timeout=timeout)  # fmt: skip

    async def sleep(seconds: float) -> None:
        pass

    k.sleep = sleep
    return k, retried


async def test_a_write_that_gets_no_answer_is_given_up_after_its_timeout_and_sent_again() -> None:
    """Without a timeout the first write here would wait forever, holding a writer thread: with every writer held
    so, no replica change would go out again."""
    server = Silent(hang=2)
    try:
        k, retried = silent_kube(server, timeout=0.3)
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
        k, retried = silent_kube(server, timeout=0.2)
        with pytest.raises(TransportError):
            await asyncio.wait_for(k.patch_status("ns", "w", {"replicas": 1}), 20)
        assert len(server.requests) == Kube.attempts and retried == [NO_ANSWER] * (Kube.attempts - 1)
    finally:
        server.close()
