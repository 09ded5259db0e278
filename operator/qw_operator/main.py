"""kopf wiring only: startup settings, shared clients in memo, and the handlers that call the domain modules."""

from __future__ import annotations

import logging
import os
from typing import Any

import aiohttp
import kopf
from kubernetes import client as k8s
from kubernetes import config as k8s_config
from prometheus_client import start_http_server
from qw_core.settings import OperatorSettings

from qw_operator import reconcile
from qw_operator.crd import GROUP, PLURAL, VERSION
from qw_operator.metrics import OperatorMetrics, process_registry
from qw_operator.rabbitmq import BrokerPoller, Brokers, ManagementReader, PrometheusReader
from qw_operator.scaler import Kube, owned_deployment

RESOURCE = (GROUP, VERSION, PLURAL)
log = logging.getLogger(__name__)


def _kube_client() -> k8s.ApiClient:
    if os.environ.get("KUBERNETES_SERVICE_HOST") and not os.environ.get("KUBECONFIG"):
        k8s_config.load_incluster_config()
    else:
        k8s_config.load_kube_config()
    return k8s.ApiClient()


@kopf.on.startup()
async def startup(settings: kopf.OperatorSettings, memo: kopf.Memo, **_: Any) -> None:
    cfg = OperatorSettings()
    settings.watching.server_timeout = cfg.watch_server_timeout
    settings.watching.client_timeout = cfg.watch_client_timeout
    settings.watching.connect_timeout = 10
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix=GROUP)
    settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(prefix=GROUP)
    settings.persistence.finalizer = f"{GROUP}/finalizer"
    settings.posting.level = logging.INFO
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
        )
        for name, url in cfg.broker_urls().items()
    }
    brokers = Brokers(pollers)
    brokers.start()
    memo.cfg, memo.metrics, memo.session, memo.brokers = cfg, metrics, session, brokers
    api_client = _kube_client()
    await Kube.check_crd(api_client)
    memo.kube = Kube(api_client)
    log.info("operator started: brokers %s; depth from Prometheus endpoints for %s", sorted(pollers), sorted(prom))


@kopf.on.cleanup()
async def cleanup(memo: kopf.Memo, **_: Any) -> None:
    await memo.brokers.stop()
    await memo.session.close()


@kopf.index("apps", "v1", "deployments")
def deployment_replicas(
    namespace: str | None, name: str, spec: kopf.Spec, **_: Any
) -> dict[tuple[str | None, str], int]:
    """Current spec.replicas of every Deployment in the watched namespaces: ticks read this, not the API."""
    replicas = spec.get("replicas")
    return {(namespace, name): 1 if replicas is None else int(replicas)}


@kopf.on.resume(*RESOURCE, field="spec.template", value=kopf.PRESENT)
@kopf.on.create(*RESOURCE, field="spec.template", value=kopf.PRESENT)
@kopf.on.update(*RESOURCE, field="spec.template", value=kopf.PRESENT)
async def ensure_worker_deployment(
    name: str, namespace: str | None, uid: str, spec: kopf.Spec, memo: kopf.Memo, logger: kopf.Logger, **_: Any
) -> None:
    body = owned_deployment(name, str(namespace), uid, spec["template"], int(spec.get("minReplicas", 0)))
    what = await memo.kube.ensure_deployment(body)
    logger.info(f"Deployment {body['metadata']['name']} {what}")


@kopf.daemon(*RESOURCE, cancellation_timeout=5.0)
async def scale(
    stopped: kopf.DaemonStopped,
    name: str,
    namespace: str | None,
    uid: str,
    body: kopf.Body,
    memo: kopf.Memo,
    **kwargs: Any,
) -> None:
    deployment_replicas: kopf.Index[tuple[str | None, str], int] = kwargs["deployment_replicas"]  # the index above

    def lookup(ns: str, dep: str) -> int | None:
        for value in deployment_replicas.get((ns, dep), []):
            return value
        return None

    ticker = reconcile.Ticker(str(namespace), name, body, memo.kube, memo.metrics, lookup)
    await reconcile.run(ticker, memo.brokers.pollers, uid, stopped, memo.cfg.default_interval)
