"""kopf wiring only: startup settings, shared clients in memo, and the handlers that call the domain modules."""

from __future__ import annotations

import asyncio
import functools
import logging
import os
from typing import Any

import aiohttp
import kopf
import orjson
from kubernetes import client as k8s
from kubernetes import config as k8s_config
from prometheus_client import start_http_server
from qw_core.settings import OperatorSettings

from qw_operator import reconcile
from qw_operator.crd import GROUP, PLURAL, VERSION
from qw_operator.deployments import DeploymentView
from qw_operator.metrics import OperatorMetrics, process_registry
from qw_operator.pause import follow_peering
from qw_operator.rabbitmq import BrokerPoller, Brokers, ManagementReader, PrometheusReader
from qw_operator.scaler import Kube, TemplateRefused, check_template, not_owned_reason, owned_deployment
from qw_operator.schedule import Scheduler
from qw_operator.writes import TokenBucket

RESOURCE = (GROUP, VERSION, PLURAL)
log = logging.getLogger(__name__)
FLUSH_SECONDS = 5.0  # what a shutdown waits at most for the held statuses' writes


def _quiet_tracking(record: logging.LogRecord) -> bool:
    """kopf logs every handler's success: for `track`, one line per QueueWorker event (each status write comes
    back as one), thousands a minute at scale, saying nothing."""
    return not record.getMessage().startswith("Handler 'track' succeeded")


def _kube_client(writers: int) -> k8s.ApiClient:
    if os.environ.get("KUBERNETES_SERVICE_HOST") and not os.environ.get("KUBECONFIG"):
        k8s_config.load_incluster_config()
    else:
        k8s_config.load_kube_config()
    conf = k8s.Configuration.get_default_copy()
    conf.connection_pool_maxsize = max(conf.connection_pool_maxsize, writers + 2)  # one connection per writer
    return k8s.ApiClient(conf)


@kopf.on.startup()
async def startup(settings: kopf.OperatorSettings, memo: kopf.Memo, **kwargs: Any) -> None:
    cfg = OperatorSettings()
    logging.getLogger("kopf.objects").addFilter(_quiet_tracking)
    settings.watching.server_timeout = cfg.watch_server_timeout
    settings.watching.client_timeout = cfg.watch_client_timeout
    settings.watching.connect_timeout = 10
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix=GROUP)
    settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(prefix=GROUP)
    settings.persistence.finalizer = f"{GROUP}/finalizer"
    settings.posting.level = logging.INFO
    # kopf posts Events (ScaledUp, BrokerUnreachable...) outside our paced writes, one task per object and by
    # default as many at once as there are objects: a broker lost at 1,000 QueueWorkers was 1,000 concurrent POSTs
    # and the apiserver answered 429 (APF queue-full). As many in flight as our own writers; idle ones exit soon.
    settings.posting.worker_limit = cfg.kube_writers
    settings.posting.idle_timeout = 0.1
    settings.peering.lifetime = cfg.peering_lifetime
    settings.peering.stealth = True
    # Namespaced: no cluster-wide listing of namespaces or CRDs, hence no cluster-scoped RBAC at all. The CRD
    # must exist before the operator starts (checked below; a missing one fails startup, so the pod restarts).
    settings.scanning.disabled = not settings.peering.clusterwide
    metrics = OperatorMetrics(process_registry())
    start_http_server(cfg.metrics_port, addr=cfg.metrics_host, registry=metrics.registry)
    session = aiohttp.ClientSession()
    prom = cfg.prometheus_urls()
    pollers = {
        name: BrokerPoller(
            name,
            ManagementReader(url, session, cfg.management_timeout),
            cfg.default_interval,
            metrics.broker_result,
            depth_reader=PrometheusReader(prom[name], session, cfg.management_timeout) if name in prom else None,
            reads_per_interval=cfg.broker_reads_per_interval if name in prom else 1,
        )
        for name, url in cfg.broker_urls().items()
    }
    brokers = Brokers(pollers)
    brokers.start()
    memo.cfg, memo.metrics, memo.session, memo.brokers = cfg, metrics, session, brokers
    api_client = _kube_client(cfg.kube_writers)
    await Kube.check_crd(api_client)
    memo.kube = Kube(
        api_client,
        on_retry=lambda status: metrics.kube_write_retries.labels(str(status)).inc(),
        bucket=TokenBucket(cfg.kube_qps, cfg.kube_burst),
        on_throttled=metrics.kube_throttled.inc,
        writers=cfg.kube_writers,
        on_write=lambda kind: metrics.kube_writes.labels(kind).inc(),
        timeout=cfg.kube_write_timeout,
    )
    # Every Deployment of the watched namespaces, from a list + watch of our own (deployments.py: kopf's indexes
    # made a start-up at 5,000 QueueWorkers quadratic); nothing is ticked or decided before its first list.
    namespaces = None if memo.get("clusterwide") else list(memo.get("namespaces") or [cfg.namespace])
    memo.deployments = DeploymentView(api_client, namespaces, cfg.watch_server_timeout, cfg.watch_client_timeout)
    memo.deployments.start()
    # Every QueueWorker is ticked by one scheduler, fed by kopf's watch (`track` below).
    memo.scheduler = Scheduler(
        pollers,
        _ticker_factory(memo, memo.deployments),
        metrics,
        cfg.default_interval,
        ready=memo.deployments.synced,
        lister=functools.partial(list_queueworkers, api_client, namespaces, cfg.watch_client_timeout),
    )
    follow_peering(memo.scheduler.pause)
    log.info("operator started: brokers %s; depth from Prometheus endpoints for %s", sorted(pollers), sorted(prom))


@kopf.on.cleanup()
async def cleanup(memo: kopf.Memo, **_: Any) -> None:
    memo.deployments.stop()
    await memo.scheduler.stop()
    # What only churned since each status's last write (a busy queue's lastActiveTime, the recommendations) is
    # written now, so the next operator starts from this one's history; bounded: a slow apiserver delays no exit.
    if held := memo.scheduler.flush():
        left = await memo.kube.statuses.drain(FLUSH_SECONDS)
        log.info("shutdown: %d held statuses written, %d not in %.0f s", held - left, left, FLUSH_SECONDS)
    await memo.kube.statuses.stop()
    await memo.brokers.stop()
    await memo.session.close()


@kopf.on.resume(*RESOURCE, field="spec.template", value=kopf.PRESENT)
@kopf.on.create(*RESOURCE, field="spec.template", value=kopf.PRESENT)
@kopf.on.update(*RESOURCE, field="spec.template", value=kopf.PRESENT)
async def ensure_worker_deployment(
    name: str,
    namespace: str | None,
    uid: str,
    spec: kopf.Spec,
    body: kopf.Body,
    memo: kopf.Memo,
    logger: kopf.Logger,
    **_: Any,
) -> None:
    """Create or update the owned worker Deployment; refuse a template that runs as a ServiceAccount not allowed
    (Event TemplateRefused), and a Deployment of that name someone else controls (never adopted, never rewritten;
    the scaling daemon reports it: Ready=False TargetNotOwned)."""
    try:
        check_template(spec["template"], memo.cfg.allowed_service_accounts())
    except TemplateRefused as exc:
        kopf.warn(body, reason="TemplateRefused", message=str(exc))
        raise kopf.PermanentError(str(exc)) from None
    wanted = owned_deployment(name, str(namespace), uid, spec["template"], int(spec.get("minReplicas", 0)))
    dep = wanted["metadata"]["name"]
    await memo.deployments.synced.wait()
    controller = memo.deployments.controller_for(str(namespace), dep)
    if controller is not None and (why := not_owned_reason(controller or None, uid)):
        raise kopf.PermanentError(f"Deployment {dep} {why}")
    what = await memo.kube.ensure_deployment(wanted, update=controller is not None)
    if what == "exists":  # created by someone since the view last saw it: look again once the view has it
        raise kopf.TemporaryError(f"Deployment {dep} appeared meanwhile; checking who controls it", delay=2)
    logger.info(f"Deployment {dep} {what}")


@kopf.on.event(*RESOURCE)
async def track(type: str | None, uid: str, event: Any, body: kopf.Body, memo: kopf.Memo, **_: Any) -> None:
    """Every QueueWorker kopf lists or sees change is ticked by the scheduler; a deleted one no more.

    The scheduler starts here, at the first event, not at startup: its tasks inherit this handler's context, which
    holds kopf's event queue (kopf.info/warn post through it; startup handlers do not have it)."""
    if not memo.scheduler.started:
        memo.scheduler.start()
    if type == "DELETED":
        memo.scheduler.remove(uid)
    else:
        # The event's own object, a plain dict: kopf's Body is a live view whose every lookup goes through its
        # mapping layers (at 5,000 QueueWorkers a third of a round's tick time went to them).
        raw = event.get("object") if isinstance(event, dict) else None
        memo.scheduler.upsert(uid, raw if isinstance(raw, dict) else body)


async def list_queueworkers(
    api_client: k8s.ApiClient, namespaces: list[str] | None, request_timeout: float
) -> list[Any]:
    """Every QueueWorker of the watched namespaces (None: all), as raw JSON dicts: one LIST per namespace."""
    custom = k8s.CustomObjectsApi(api_client)

    def one(ns: str | None) -> list[Any]:
        kwargs: dict[str, Any] = {"_preload_content": False, "_request_timeout": request_timeout}
        resp: Any
        if ns is None:
            resp = custom.list_cluster_custom_object(GROUP, VERSION, PLURAL, **kwargs)
        else:
            resp = custom.list_namespaced_custom_object(GROUP, VERSION, ns, PLURAL, **kwargs)
        items: list[Any] = orjson.loads(resp.data).get("items") or []
        for item in items:  # kopf.info/warn name the object by these (a LIST's items carry them; kept sure)
            item.setdefault("apiVersion", f"{GROUP}/{VERSION}")
            item.setdefault("kind", "QueueWorker")
        return items

    found: list[Any] = []
    for ns in namespaces if namespaces is not None else [None]:
        found += await asyncio.to_thread(one, ns)
    return found


def _ticker_factory(memo: kopf.Memo, view: DeploymentView) -> Any:
    lookup = view.replicas_for

    def make(body: kopf.Body) -> reconcile.Ticker:
        namespace, name, uid = str(body["metadata"]["namespace"]), body["metadata"]["name"], body["metadata"]["uid"]
        ticker = reconcile.Ticker(namespace, name, body, memo.kube, memo.metrics, lookup)

        def target_problem(dep: str) -> str | None:
            """A template-form QueueWorker scales only the Deployment it controls."""
            controller = view.controller_for(namespace, dep)
            if "template" not in ticker.spec or controller is None:
                return None
            return not_owned_reason(controller or None, uid)

        ticker.target_problem = target_problem
        ticker.min_interval = memo.cfg.status_min_interval_seconds
        return ticker

    return make
