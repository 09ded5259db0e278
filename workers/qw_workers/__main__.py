"""`python -m qw_workers [--app MODULE] KIND`: build everything once at startup, serve health + metrics, consume.

KIND is a built-in kind (image, email: qw_workers.builtins) or one defined with `queueworker.task` in MODULE (default
QW_APP), which is imported first so its definitions register. Either way the kind is looked up in the registry and
its handler built by qw_workers.handlers.make_handler. `python -m qw_workers janitor [--once]` runs retention instead
(qw_workers/janitor.py)."""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys

from qw_core.registry import TaskSpec

TEST_DELAY_ENV = "QW_TEST_TASK_DELAY"  # tests only: seconds to sleep before each task


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m qw_workers",
        description="Consume one task kind from RabbitMQ. Settings come from QW_* environment variables "
        "(QW_RABBITMQ_URL, QW_DATABASE_URL, QW_STORAGE_DIR, QW_PREFETCH, QW_CONCURRENCY, QW_GRACE_PERIOD, "
        "QW_SMTP_*, ...). Serves /healthz, /readyz and /metrics on QW_METRICS_HOST:QW_METRICS_PORT.",
    )
    p.add_argument(
        "--app",
        default=os.environ.get("QW_APP", ""),
        help="the module defining your tasks with queueworker.task, e.g. shop.tasks (default: QW_APP)",
    )
    p.add_argument("kind", help="the task kind to consume: image, email, or a kind defined in --app")
    return p.parse_args(argv)


def resolve_kind(kind: str, app: str) -> TaskSpec:
    """`kind`'s registry entry: a built-in one, or one `app` defines (imported here)."""
    from qw_core.registry import AppNotFound

    from qw_workers.builtins import worker_registry

    try:
        registry = worker_registry(app)
    except AppNotFound as exc:
        raise SystemExit(f"qw_workers: {exc}") from None
    spec = registry.get(kind)
    if spec is None:
        known = ", ".join(s.kind for s in sorted(registry, key=lambda s: not s.builtin))  # the built-ins first
        where = f"in --app {app}" if app else "(no --app module given, and QW_APP is empty)"
        raise SystemExit(f"unknown task kind {kind!r} {where}; known kinds: {known}")
    return spec


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["janitor"]:  # not a task kind: retention (qw_workers/janitor.py)
        from qw_workers.janitor import main as janitor_main

        return janitor_main(argv[1:])
    args = parse_args(argv)
    if args.app and os.getcwd() not in sys.path:  # `--app shop.tasks` from the working directory, like `python -m`
        sys.path.insert(0, os.getcwd())
    spec = resolve_kind(args.kind, args.app)
    from qw_core.logs import configure_logging
    from qw_core.settings import WorkerSettings, load
    from qw_core.storage import open_storage
    from qw_core.store import open_store

    from qw_workers.handlers import make_handler
    from qw_workers.health import HealthServer
    from qw_workers.metrics import WorkerMetrics
    from qw_workers.middleware import LoggingMiddleware, MetricsMiddleware, Middleware, slowed
    from qw_workers.runtime import Worker

    settings = load(WorkerSettings)
    configure_logging(settings.log_format, settings.log_level)
    log = logging.getLogger("qw_workers")
    metrics = WorkerMetrics(args.kind)
    middleware: list[Middleware] = [MetricsMiddleware(metrics), LoggingMiddleware()]
    handler = make_handler(spec)
    delay = float(os.environ.get(TEST_DELAY_ENV, "0") or 0)
    if delay > 0:
        if settings.env == "prod":
            raise SystemExit(f"{TEST_DELAY_ENV} is for tests only and refused when QW_ENV=prod")
        log.warning("test-only task delay of %.2fs is active", delay)
        handler = slowed(handler, delay)
    store = open_store(settings.database_url)
    storage = open_storage(settings)
    worker = Worker(args.kind, handler, settings, store, storage, middleware, policy=spec.policy)
    health = HealthServer(settings.metrics_host, settings.metrics_port, metrics.registry, lambda: worker.ready).start()

    def on_signal(signum: int, _frame: object) -> None:
        worker.request_stop()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    log.info("worker starting", extra={"kind": args.kind})
    code = worker.run()
    health.stop()
    store.close()
    logging.shutdown()
    if worker.abandoned:
        # Threads still inside a task would keep the interpreter alive at exit; their messages are redelivered.
        os._exit(code)
    return code


if __name__ == "__main__":
    sys.exit(main())
