"""Builds the app from settings at startup (never at import)."""

from __future__ import annotations

import math
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from importlib import resources
from typing import Any
from urllib.parse import urlsplit

from fastapi import FastAPI, Request
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse
from qw_core.events import publish_changes
from qw_core.registry import Registry, load_app
from qw_core.settings import ApiSettings
from qw_core.storage import disk_usage, open_storage
from qw_core.store import open_store
from qw_core.topology import build_topology
from qw_workers.builtins import BUILTINS

from .deps import Services, hash_key
from .limits import BodySizeLimit, BodyTooLarge
from .metrics import ApiMetrics, ObserveRequests, StorageUsage, StoreTransactions
from .publisher import MessageTooLarge, Publisher
from .push import Change, EventConsumer
from .routes import emails, events, health, images, kinds, notifications, tasks

MULTIPART_OVERHEAD = 64 * 1024


def _redirect_origin(settings: ApiSettings) -> str:
    """The scheme://host[:port] presigned result URLs point at, when the API redirects to them ("" otherwise)."""
    endpoint = settings.s3_public_endpoint_url or settings.s3_endpoint_url
    if not (settings.storage_url and settings.result_redirect_seconds and endpoint):
        return ""
    parsed = urlsplit(endpoint)
    return f"{parsed.scheme}://{parsed.netloc}"


def create_app(settings: ApiSettings | None = None) -> FastAPI:
    settings = settings or ApiSettings()
    keys = settings.tenant_keys()
    if not keys:
        raise ValueError("QW_API_KEYS is empty: set key:tenant pairs (or @/path/to/file) so clients can authenticate")
    # SDK kinds: importing QW_APP registers them; without it the API knows none (not whatever this process imported).
    # The built-in kinds are listed with them (GET /v1/kinds) but queued only by their own routes.
    registry = Registry([*BUILTINS, *(load_app(settings.app) if settings.app else ())])

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        store = open_store(settings.database_url)
        topology = build_topology(registry.kinds(), settings.delivery_limit, settings.queue_limits())
        publisher = Publisher(
            settings.rabbitmq_url.get_secret_value(), topology, settings.publish_timeout, settings.max_message_bytes
        )
        app.state.services = Services(
            settings=settings,
            store=store,
            storage=open_storage(settings),
            publisher=publisher,
            metrics=metrics,
            key_hashes={hash_key(k): t for k, t in keys.items()},
        )
        services = app.state.services
        urls = settings.rabbitmq_urls()
        events = publish_changes(store, urls) if settings.publish_events else None
        consumer = None
        if settings.events_push:
            consumer = EventConsumer(urls, services.hub, unbind_seconds=settings.events_unbind_seconds)
            services.hub.on_receive = lambda change: _count_change(metrics, change)
        app.state.event_consumer = consumer
        await publisher.start()
        if consumer is not None:
            await consumer.start()
        await publisher.wait_connected(5.0)  # start serving anyway: /readyz tells the truth
        try:
            yield
        finally:
            if consumer is not None:
                await consumer.stop()
            await publisher.stop()
            app.state.services.rows.close()
            if events is not None:
                events.close()
            store.close()

    metrics = ApiMetrics()
    if not settings.storage_url:  # a volume's used and free bytes; a bucket has no such figures
        metrics.registry.register(StorageUsage(lambda: disk_usage(settings.storage_dir)))
    metrics.registry.register(StoreTransactions(lambda: _store_transactions(app)))
    app = FastAPI(
        title="queueworker API",
        version="1.0",
        description="Submit images and emails as background tasks; follow them by polling or server-sent events.",
        lifespan=lifespan,
    )
    for module in (images, emails, notifications, tasks, events):
        app.include_router(module.router)
    app.include_router(kinds.build_router(registry))
    app.include_router(health.router)

    @app.exception_handler(RequestValidationError)
    async def _invalid(_: Request, exc: RequestValidationError) -> JSONResponse:
        # FastAPI's own 422, except that a non-finite number echoed back (Python's JSON parser takes NaN and
        # Infinity) is written as the literal it came as: strict JSON has no NaN, and JSONResponse refuses it (500)
        return JSONResponse({"detail": _finite(jsonable_encoder(exc.errors()))}, status_code=422)

    @app.exception_handler(BodyTooLarge)
    async def _too_large(_: Request, __: BodyTooLarge) -> JSONResponse:
        return JSONResponse({"detail": "request body too large"}, status_code=413)

    @app.exception_handler(MessageTooLarge)
    async def _message_too_large(_: Request, exc: MessageTooLarge) -> JSONResponse:
        detail = (
            f"{exc} (QW_MAX_MESSAGE_BYTES, the broker's max_message_size); nothing was queued. "
            "Send less inline data, e.g. a link to large content instead of the content itself"
        )
        return JSONResponse({"detail": detail}, status_code=413)

    page = resources.files("qw_api").joinpath("static/index.html").read_text()
    # With results redirected to presigned URLs, the page's fetch follows the redirect to the store: allow its
    # origin (the bucket must answer CORS for the API's origin; SeaweedFS allows any by default).
    connect_src = f"connect-src 'self' {store}; " if (store := _redirect_origin(settings)) else ""

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    async def index() -> HTMLResponse:
        return HTMLResponse(
            page,
            headers={
                "Content-Security-Policy": f"default-src 'self'; {connect_src}img-src 'self' blob:; "
                "style-src 'self' 'unsafe-inline'; script-src 'self' 'unsafe-inline'"
            },
        )

    uploads = {"/v1/images": settings.max_upload_bytes + MULTIPART_OVERHEAD}
    app.add_middleware(BodySizeLimit, max_bytes=settings.max_json_bytes, large_paths=uploads)
    app.add_middleware(ObserveRequests, metrics=metrics)
    return app


def _finite(value: Any) -> Any:
    """`value` with every NaN or infinite float replaced by its JSON literal as a string."""
    if isinstance(value, float) and not math.isfinite(value):
        return "NaN" if math.isnan(value) else ("Infinity" if value > 0 else "-Infinity")
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_finite(v) for v in value]
    return value


def _count_change(metrics: ApiMetrics, change: Change) -> None:
    metrics.push_events.inc()
    metrics.push_lag.observe(max(0.0, change.received - change.rec.updated_at))


def _store_transactions(app: FastAPI) -> int:
    services = getattr(app.state, "services", None)
    return services.store.transactions if services is not None else 0
