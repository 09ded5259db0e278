"""Every Deployment in the watched namespaces as the operator needs it (spec and observed replicas, the uid of its
controller), kept current by one list + watch of its own per namespace, on a thread each.

These were two kopf indexes. kopf holds every resource event until all its indexes are populated, each waiting
event on one condition that wakes on every index change: at 5,000 QueueWorkers and 5,000 Deployments the
operator's start-up woke 5,000 waiters per Deployment listed and registered no QueueWorker in 4 minutes. This view
is filled by one LIST (raw JSON, no model objects), then follows a WATCH from that list's resourceVersion; an
expired watch (410) or any failure lists again. `synced` is set once every namespace was listed: the scheduler
ticks and the Deployment handler decides only after it, so a restarted operator never takes an existing
Deployment for a missing one.

Written by the watch threads, read on the event loop: each entry is one dict assignment (atomic in CPython).
"""

from __future__ import annotations

import asyncio
import logging
import threading
from typing import Any

import orjson
from kubernetes import client as k8s
from kubernetes.client.exceptions import ApiException
from kubernetes.watch.watch import iter_resp_lines

from qw_operator.observe import Replicas

log = logging.getLogger(__name__)

Key = tuple[str, str]  # (namespace, name)
RETRY_SECONDS = 1.0  # after a failed list or watch, list again after this long (doubling to 30 s)


def replicas_of(obj: dict[str, Any]) -> Replicas:
    """spec.replicas (1 when unset, as the API defaults it) and the observed replicas a Deployment reports."""
    spec, status = obj.get("spec") or {}, obj.get("status") or {}
    wanted = spec.get("replicas")
    return Replicas(1 if wanted is None else int(wanted), int(status.get("replicas") or 0),
                    int(status.get("readyReplicas") or 0))  # fmt: skip


def controller_of(obj: dict[str, Any]) -> str:
    """The uid of the Deployment's controller ("" for none)."""
    refs = (obj.get("metadata") or {}).get("ownerReferences") or []
    return next((str(r.get("uid")) for r in refs if r.get("controller")), "")


class DeploymentView:
    def __init__(
        self,
        api_client: k8s.ApiClient,
        namespaces: list[str] | None,  # None: every namespace (one cluster-wide list and watch)
        server_timeout: int = 300,
        client_timeout: int = 330,
    ) -> None:
        self.apps = k8s.AppsV1Api(api_client)
        self.namespaces: list[str | None] = list(namespaces) if namespaces is not None else [None]
        self.server_timeout, self.client_timeout = server_timeout, client_timeout
        self.replicas: dict[Key, Replicas] = {}
        self.controllers: dict[Key, str] = {}
        self.synced = asyncio.Event()
        self.lists = self.events = 0  # LISTs made (a relist after a failure counts), watch events applied
        self._listed: set[str | None] = set()
        self._stop = threading.Event()
        self._loop: asyncio.AbstractEventLoop | None = None

    def replicas_for(self, namespace: str, name: str) -> Replicas | None:
        return self.replicas.get((namespace, name))

    def controller_for(self, namespace: str, name: str) -> str | None:
        """The Deployment's controller uid, "" when it has none, None when there is no such Deployment."""
        return self.controllers.get((namespace, name))

    def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        for ns in self.namespaces:
            threading.Thread(target=self._follow, args=(ns,), name=f"deployments {ns or '*'}", daemon=True).start()

    def stop(self) -> None:
        """The threads end at their watch's next event or timeout (they are daemons: exit does not wait)."""
        self._stop.set()

    # -- one namespace (or all), on its own thread --------------------------------------------------------------

    def _follow(self, ns: str | None) -> None:
        delay = RETRY_SECONDS
        while not self._stop.is_set():
            try:
                version = self._list(ns)
                delay = RETRY_SECONDS
                self._watch(ns, version)
            except Exception as exc:  # noqa: BLE001 - any failure: list again, the view stays as it was meanwhile
                gone = isinstance(exc, ApiException) and exc.status == 410
                if not gone:
                    log.warning("Deployments in %s: %s; listing again in %.0fs", ns or "all namespaces", exc, delay)
                    self._stop.wait(delay)
                    delay = min(30.0, 2 * delay)

    def _list(self, ns: str | None) -> str:
        kwargs: dict[str, Any] = {"_preload_content": False, "_request_timeout": self.client_timeout}
        if ns is None:
            resp: Any = self.apps.list_deployment_for_all_namespaces(**kwargs)
        else:
            resp = self.apps.list_namespaced_deployment(ns, **kwargs)
        body = orjson.loads(resp.data)
        seen: set[Key] = set()
        for obj in body.get("items") or []:
            seen.add(self._put(obj))
        for key in [k for k in self.replicas if (ns is None or k[0] == ns) and k not in seen]:
            self._drop(key)  # deleted while nothing watched
        self.lists += 1
        if ns not in self._listed:
            self._listed.add(ns)
            if len(self._listed) == len(self.namespaces) and self._loop is not None:
                self._loop.call_soon_threadsafe(self.synced.set)
        return str((body.get("metadata") or {}).get("resourceVersion") or "")

    def _watch(self, ns: str | None, version: str) -> None:
        """Follow from `version` until the stop or an error (raised: the caller lists again); a watch the server
        ends after its timeout is resumed from the last version seen, without a list."""
        while not self._stop.is_set():
            kwargs: dict[str, Any] = {
                "watch": True,
                "resource_version": version,
                "allow_watch_bookmarks": True,
                "timeout_seconds": self.server_timeout,
                "_preload_content": False,
                "_request_timeout": self.client_timeout,
            }
            if ns is None:
                resp: Any = self.apps.list_deployment_for_all_namespaces(**kwargs)
            else:
                resp = self.apps.list_namespaced_deployment(ns, **kwargs)
            try:
                for line in iter_resp_lines(resp):
                    if self._stop.is_set():
                        return
                    if not line or line.isspace():
                        continue
                    event = orjson.loads(line)
                    kind, obj = event.get("type"), event.get("object") or {}
                    if kind == "ERROR":
                        raise ApiException(status=int(obj.get("code") or 500), reason=str(obj.get("message")))
                    version = str((obj.get("metadata") or {}).get("resourceVersion") or version)
                    if kind == "DELETED":
                        meta = obj.get("metadata") or {}
                        self._drop((str(meta.get("namespace")), str(meta.get("name"))))
                    elif kind in ("ADDED", "MODIFIED"):
                        self._put(obj)
                    else:
                        continue  # BOOKMARK: only its resourceVersion
                    self.events += 1
            finally:
                resp.release_conn()

    def _put(self, obj: dict[str, Any]) -> Key:
        meta = obj.get("metadata") or {}
        key = (str(meta.get("namespace")), str(meta.get("name")))
        self.replicas[key] = replicas_of(obj)
        self.controllers[key] = controller_of(obj)
        return key

    def _drop(self, key: Key) -> None:
        self.replicas.pop(key, None)
        self.controllers.pop(key, None)
