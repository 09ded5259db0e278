"""Kubernetes writes: the owned worker Deployment (built as a dict from the QueueWorker) and replica patches.

Every write takes a token of one `TokenBucket` first (writes.py: client-side QPS/burst, replica changes before
status writes before Deployment templates), each retry too; status writes go through a `StatusQueue`, which
coalesces the ones not sent yet per QueueWorker.

The sync `kubernetes` client is made once at startup and its calls run in worker threads, so the event loop
(and every other QueueWorker's tick) never waits on one slow request. A replica or status write the apiserver
refuses for now (429 Too Many Requests, 409 Conflict, 5xx) is retried with jittered exponential backoff, after
its Retry-After when it sends one; other errors (403, 404, 422) are not retried. Every write has a timeout
(QW_KUBE_WRITE_TIMEOUT): one without an answer by then (a connection dropped without a reset, an apiserver
that hangs), or whose connection failed, is retried the same way. Those writes are merge patches that set
values, so sending one twice changes nothing; a Deployment create that times out is not retried here (its
handler's retry finds it, 409 "exists", if it was made after all).
"""

from __future__ import annotations

import asyncio
import copy
import functools
import logging
import random
from collections.abc import Awaitable, Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from kubernetes import client as k8s
from kubernetes.client.rest import ApiException
from urllib3.exceptions import HTTPError as TransportError

from qw_operator.crd import GROUP, PLURAL, VERSION
from qw_operator.writes import SCALE, STATUS, TEMPLATE, Slots, StatusQueue, TokenBucket

NAME_LABEL = f"{GROUP}/queueworker"
KINDS = {SCALE: "replicas", STATUS: "status", TEMPLATE: "deployment"}
log = logging.getLogger(__name__)


def retryable(exc: ApiException) -> bool:
    """The apiserver may accept the same write later: throttled, a conflicting writer, or a server error."""
    return exc.status in (409, 429) or (exc.status or 0) >= 500


NO_ANSWER = 0  # the retry metric's status for a write that got no HTTP answer (timeout, connection failed)


def retry_after(exc: ApiException) -> float | None:
    """The apiserver's Retry-After (seconds) on a 429, if any."""
    value = (exc.headers or {}).get("Retry-After")
    try:
        return None if value is None else max(0.0, float(value))
    except ValueError:
        return None


def deployment_name(qw_name: str) -> str:
    return f"{qw_name}-worker"


def target_name(qw_name: str, spec: Mapping[str, Any]) -> str:
    ref = spec.get("scaleTargetRef")
    return str(ref["name"]) if ref else deployment_name(qw_name)


def owned_deployment(
    qw_name: str, namespace: str, uid: str, template: Mapping[str, Any], replicas: int
) -> dict[str, Any]:
    """The Deployment a template-form QueueWorker owns (garbage-collected with it via ownerReferences)."""
    tpl = copy.deepcopy(dict(template))
    meta = tpl.setdefault("metadata", {})
    labels = {**(meta.get("labels") or {}), NAME_LABEL: qw_name}
    meta["labels"] = labels
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {
            "name": deployment_name(qw_name),
            "namespace": namespace,
            "labels": {NAME_LABEL: qw_name, "app.kubernetes.io/managed-by": "queueworker-operator"},
            "ownerReferences": [
                {
                    "apiVersion": f"{GROUP}/{VERSION}",
                    "kind": "QueueWorker",
                    "name": qw_name,
                    "uid": uid,
                    "controller": True,
                }
            ],
        },
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": {NAME_LABEL: qw_name}},
            "template": tpl,
        },
    }


class TemplateRefused(Exception):
    """The QueueWorker asks for something this operator will not create on its behalf (the message says why and
    what to do)."""


def check_template(template: Mapping[str, Any], allowed_accounts: set[str]) -> None:
    """A pod template may run only as an allowed ServiceAccount: the operator, not the QueueWorker's author,
    creates the Deployment, so the author's own rights are never checked by Kubernetes."""
    pod = template.get("spec") or {}
    account = pod.get("serviceAccountName") or pod.get("serviceAccount") or "default"
    if account not in allowed_accounts:
        raise TemplateRefused(
            f"spec.template runs as ServiceAccount {account!r}; this operator creates worker pods only with "
            f"{', '.join(sorted(allowed_accounts)) or 'no ServiceAccount'} (QW_TEMPLATE_SERVICE_ACCOUNTS). Use an "
            "allowed account, or create the Deployment yourself and name it in spec.scaleTargetRef"
        )


def not_owned_reason(controller_uid: str | None, uid: str) -> str | None:
    """Why an existing Deployment of a template-form QueueWorker's name must be left alone (None: it is ours).
    The operator never adopts: taking over a Deployment someone else made would let a QueueWorker rewrite it."""
    if controller_uid == uid:
        return None
    owner = "another object" if controller_uid else "nobody (it was not created by this operator)"
    return f"exists and is controlled by {owner}; the operator never adopts a Deployment: rename or delete it"


class Kube:
    """The few Kubernetes calls the operator makes. One ApiClient for the process."""

    attempts = 6  # 0.5 + 1 + 2 + 4 + 8 s of backoff at most (jittered down to half), then the error is raised
    backoff = 0.5
    max_backoff = 8.0

    def __init__(
        self,
        api_client: k8s.ApiClient,
        on_retry: Callable[[int], None] = lambda status: None,
        bucket: TokenBucket | None = None,
        on_throttled: Callable[[], None] = lambda: None,
        writers: int = 4,
        on_write: Callable[[str], None] = lambda kind: None,
        timeout: float | None = 20.0,
    ) -> None:
        self.apps = k8s.AppsV1Api(api_client)
        self.custom = k8s.CustomObjectsApi(api_client)
        self.calls = 0
        self.on_retry = on_retry  # counts retries by HTTP status (a metric)
        self.on_throttled = on_throttled  # counts every 429 seen (a metric)
        self.on_write = on_write  # counts every request sent, by kind (a metric)
        self.bucket = bucket if bucket is not None else TokenBucket(0, 1)  # the tests' Kube: unpaced
        self.statuses = StatusQueue(self.patch_status)
        # Threads of their own: queued writes never hold up the broker read's DNS lookups (the default executor).
        self._threads = ThreadPoolExecutor(max(1, writers), thread_name_prefix="kube-write")
        self.slots = Slots(writers)  # one write per thread in flight: priority holds up to the apiserver
        self.sleep: Callable[[float], Awaitable[None]] = asyncio.sleep
        self.timeout = timeout  # seconds per request (connect and answer), None: none

    async def _write(self, call: Callable[..., Any], *args: Any, priority: int = STATUS) -> Any:
        """`call(*args)` in a thread after a token, retried while `retryable`; the last error is raised (a status
        not written is taken back by its Ticker and written by a later tick)."""
        delay = self.backoff
        for attempt in range(1, self.attempts + 1):
            try:
                return await self._send(priority, call, *args)
            except ApiException as exc:
                if exc.status == 429:
                    self.on_throttled()
                if not retryable(exc) or attempt == self.attempts:
                    raise
                status, why, wait = int(exc.status or 0), f"{exc.status} {exc.reason}", retry_after(exc)
            except TransportError as exc:  # no answer in time, or the connection failed: nothing was refused
                if attempt == self.attempts:
                    raise
                status, why, wait = NO_ANSWER, f"no answer ({type(exc).__name__})", None
            self.on_retry(status)
            wait = min(self.max_backoff, delay * random.uniform(0.5, 1.0) if wait is None else wait)
            log.debug("%s: %s, retry %d in %.2fs", getattr(call, "__name__", call), why, attempt, wait)
            await self.sleep(wait)
            delay = min(self.max_backoff, 2 * delay)
        raise AssertionError("unreachable")

    async def _send(self, priority: int, call: Callable[..., Any], *args: Any) -> Any:
        """One call: a writer slot, then a token (each by priority), then the call on a writer thread."""
        await self.slots.acquire(priority)
        try:
            await self.bucket.acquire(priority)
            self.calls += 1
            self.on_write(KINDS[priority])
            return await self._in_thread(call, *args)
        finally:
            self.slots.release()

    async def _in_thread(self, call: Callable[..., Any], *args: Any) -> Any:
        kwargs = {} if self.timeout is None else {"_request_timeout": self.timeout}
        return await asyncio.get_running_loop().run_in_executor(self._threads, functools.partial(call, *args, **kwargs))

    @staticmethod
    async def check_crd(api_client: k8s.ApiClient) -> None:
        """Discovery needs no RBAC: fail fast when the QueueWorker CRD is not installed."""
        try:
            await asyncio.to_thread(k8s.CustomObjectsApi(api_client).get_api_resources, GROUP, VERSION)
        except ApiException as exc:
            raise RuntimeError(f"{PLURAL}.{GROUP}/{VERSION} is not served; apply manifests/crd.yaml first") from exc

    async def ensure_deployment(self, body: Any, update: bool) -> str:
        """Create the owned Deployment, or (`update`: the caller saw that it controls it) bring its pod template
        up to date; replicas stay the operator's. "exists": not known to be ours yet, left alone."""
        ns, name = body["metadata"]["namespace"], body["metadata"]["name"]
        if not update:
            try:
                await self._send(TEMPLATE, self.apps.create_namespaced_deployment, ns, body)
                return "created"
            except ApiException as exc:
                if exc.status == 429:
                    self.on_throttled()
                if exc.status != 409:
                    raise
                return "exists"
        patch = {"metadata": {"labels": body["metadata"]["labels"]}, "spec": {"template": body["spec"]["template"]}}
        await self._write(self.apps.patch_namespaced_deployment, name, ns, patch, priority=TEMPLATE)
        return "updated"

    async def set_replicas(self, namespace: str, name: str, replicas: int) -> None:
        patch = {"spec": {"replicas": replicas}}
        await self._write(self.apps.patch_namespaced_deployment, name, namespace, patch, priority=SCALE)

    def queue_status(self, namespace: str, name: str, status: Mapping[str, Any]) -> asyncio.Future[None]:
        """The status patch queued behind this QueueWorker's write in flight (merged into one not sent yet)."""
        return self.statuses.submit(namespace, name, status)

    async def patch_status(self, namespace: str, name: str, status: Mapping[str, Any]) -> None:
        await self._write(
            self.custom.patch_namespaced_custom_object_status,
            GROUP,
            VERSION,
            namespace,
            PLURAL,
            name,
            {"status": dict(status)},
        )
