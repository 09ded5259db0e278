#!/usr/bin/env python3
"""`make dev`: RabbitMQ, the API, autoscaled image and email workers, a local SMTP sink and the janitor, on
127.0.0.1.

With QW_APP (your task module, e.g. `make dev QW_APP=shop.tasks PYTHONPATH=examples`), the API accepts its kinds
and the local autoscaler runs workers for each of them too.

With QW_STORAGE_URL=s3://bucket[/prefix] and no QW_S3_ENDPOINT_URL, uploads and results go to a local S3 server
(SeaweedFS `weed`, scripts/seaweed.py) on 127.0.0.1:8333 (QW_DEV_S3_PORT) with its data in .run/seaweed
(QW_DEV_S3_DIR); with QW_S3_ENDPOINT_URL, to that server.

Ctrl-C (or SIGTERM) stops everything it started, workers first so their tasks in hand finish.
Override any QW_* setting in the environment; the defaults below suit one laptop.
"""

from __future__ import annotations

import atexit
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from urllib.parse import urlsplit

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "scripts"))

from rabbitmq import Broker, port_open  # noqa: E402
from seaweed import Seaweed  # noqa: E402

DEFAULTS = {
    "QW_ENV": "dev",
    "QW_API_KEYS": "dev-key:dev",
    "QW_DATABASE_URL": f"sqlite:///{ROOT}/.run/dev.db",
    "QW_STORAGE_DIR": str(ROOT / ".run" / "storage"),
    "QW_SMTP_HOST": "127.0.0.1",
    "QW_SMTP_PORT": "2525",
    "QW_LOG_FORMAT": "text",
    "QW_RABBITMQ_MANAGEMENT_URL": "http://guest:guest@127.0.0.1:15672",
    "QW_RABBITMQ_PROMETHEUS_URL": "http://127.0.0.1:15692",  # fresher queue depth for the local autoscaler
}


def _pump(name: str, proc: subprocess.Popen[bytes]) -> None:
    assert proc.stdout is not None
    for line in iter(proc.stdout.readline, b""):
        sys.stdout.write(f"[{name:6}] {line.decode(errors='replace')}")
        sys.stdout.flush()


def app_kinds(env: dict[str, str]) -> list[str]:
    """The kinds of the QW_APP module (imported here as the API and the workers will import it), or none."""
    if not env.get("QW_APP"):
        return []
    from qw_core.registry import AppNotFound, load_app

    sys.path.insert(0, os.getcwd())
    try:
        kinds = list(load_app(env["QW_APP"]).kinds())
    except AppNotFound as exc:
        sys.exit(f"make dev: {exc}")
    print(f"QW_APP={env['QW_APP']}: autoscaled workers for {', '.join(kinds) or 'no kinds (it defines none)'}")
    return kinds


def start_s3(env: dict[str, str]) -> Seaweed | None:
    """A local S3 server when QW_STORAGE_URL names a bucket and no endpoint is given; its settings go into `env`."""
    url = env.get("QW_STORAGE_URL", "")
    if not url.startswith("s3://") or env.get("QW_S3_ENDPOINT_URL"):
        return None
    port = int(env.get("QW_DEV_S3_PORT", "8333"))
    if port_open(port):
        sys.exit(f"make dev: 127.0.0.1:{port} is taken; set QW_DEV_S3_PORT, or QW_S3_ENDPOINT_URL for your own server")
    server = Seaweed(Path(env.get("QW_DEV_S3_DIR", ROOT / ".run" / "seaweed")), port, urlsplit(url).netloc)
    server.start()
    atexit.register(server.stop)  # also when make dev ends early (sys.exit, an exception)
    env.update({k: v for k, v in server.env().items() if k != "QW_STORAGE_URL"})
    print(f"s3: {server.endpoint} (SeaweedFS), bucket {server.bucket}, data in {server.base}")
    return server


def main() -> int:
    env = {**DEFAULTS, **os.environ}
    env["PYTHONUNBUFFERED"] = "1"
    broker = Broker()
    if broker.running() and not broker.ours() and not port_open(broker.mgmt_port):
        # E.g. Debian's rabbitmq-server service: never ours to stop, and without the management API the local
        # autoscaler cannot read the queues. Say so now rather than wait for a management port that never opens.
        sys.exit(
            f"make dev: a broker we did not start listens on 127.0.0.1:{broker.port} without the management API "
            f"on {broker.mgmt_port} (Debian's rabbitmq-server service?). make dev leaves it alone: stop it yourself, "
            "or enable its management and Prometheus plugins (rabbitmq-plugins enable rabbitmq_management "
            "rabbitmq_prometheus) to use it"
        )
    started_broker = broker.start()
    print(f"rabbitmq: {broker.url}  management UI: http://127.0.0.1:{broker.mgmt_port} (guest/guest)")
    start_s3(env)
    py = sys.executable
    specs = [
        ("smtp", [py, "-m", "aiosmtpd", "-n", "-c", "aiosmtpd.handlers.Debugging", "-l",
                  f"{env['QW_SMTP_HOST']}:{env['QW_SMTP_PORT']}"], {}),
        ("api", [py, "-m", "qw_api"], {}),
        # Workers come and go with the queues: the operator's policy and reader, driving local processes.
        ("scaler", [py, "-m", "qw_operator.local", "image", "email", *app_kinds(env)], {}),
        # Retention: expired tasks and files, uploads of ended tasks, rows stuck pending (qw_workers/janitor.py).
        ("janitor", [py, "-m", "qw_workers", "janitor"], {}),
    ]  # fmt: skip
    procs: list[tuple[str, subprocess.Popen[bytes]]] = []
    for name, cmd, extra in specs:
        p = subprocess.Popen(cmd, env={**env, **extra}, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, cwd=ROOT)
        threading.Thread(target=_pump, args=(name, p), daemon=True).start()
        procs.append((name, p))
    key = env["QW_API_KEYS"].split(",")[0].split(":")[0]
    port = env.get("QW_API_PORT", "8000")
    print(
        f"\nqueueworker is up: open http://127.0.0.1:{port}/ (API key: {key}); API docs at /docs\n"
        f"  curl -H 'Authorization: Bearer {key}' -F file=@photo.jpg --form-string width=320 "
        f"http://127.0.0.1:{port}/v1/images\n"
        "Ctrl-C stops everything.\n"
    )
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    try:
        while not stop.is_set():
            for name, p in procs:
                if p.poll() is not None:
                    print(f"{name} exited with {p.returncode}; stopping")
                    stop.set()
            stop.wait(0.5)
    except KeyboardInterrupt:
        pass
    for _name, p in reversed(procs):  # workers first: they finish the task in hand
        if p.poll() is None:
            p.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + 30
    for _, p in procs:
        try:
            p.wait(max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            p.kill()
    if started_broker:
        broker.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
