"""Kubernetes writes the apiserver refuses for now (429, 409, 5xx) are retried with backoff; others are not.

The apiserver is faked here: a 429 or a 5xx cannot be made on demand cheaply on the real control plane (it takes
thousands of concurrent writes to get the apiserver to throttle), so a fake raises the same `ApiException` the
kubernetes client raises. The real control plane's answer is measured by the operator e2e suites.
"""

from __future__ import annotations

from typing import Any

import pytest
from kubernetes import client as k8s
from kubernetes.client.rest import ApiException
from qw_operator.scaler import Kube


class Refusing:
    """A CustomObjectsApi / AppsV1Api whose writes fail with `statuses` in turn, then succeed."""

    def __init__(self, *statuses: int, retry_after: str | None = None) -> None:
        self.statuses = list(statuses)
        self.retry_after = retry_after
        self.calls: list[tuple[Any, ...]] = []

    def _call(self, *args: Any) -> dict[str, Any]:
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
