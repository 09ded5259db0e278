"""Run real worker processes and publish tasks the way the API does (status row + confirmed publish)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

import pika
from prometheus_client.parser import text_string_to_metric_families
from qw_core.messages import EmailTask, ImageOptions, ImageTask, TaskMessage, new_task_id, utcnow
from qw_core.store import TaskStore
from qw_core.topology import H_ATTEMPT, TASKS_EXCHANGE, build_topology, declare_with_pika

from tests.support.util import free_port
from tests.support.wait import wait_for

ROOT = Path(__file__).resolve().parents[2]
T = TypeVar("T")
RETRY_DELAYS = [200, 400]


def worker_env(amqp_url: str, database_url: str, storage_dir: Path, **extra: Any) -> dict[str, str]:
    env = {
        **os.environ,
        "QW_ENV": "test",
        "QW_RABBITMQ_URL": amqp_url,
        "QW_DATABASE_URL": database_url,
        "QW_STORAGE_DIR": str(storage_dir),
        "QW_METRICS_PORT": str(free_port()),
        "QW_RETRY_DELAYS": json.dumps(RETRY_DELAYS),
        "QW_MAX_ATTEMPTS": "3",
        "QW_GRACE_PERIOD": "10",
        "QW_LOG_FORMAT": "json",
    }
    env.update({k: str(v) for k, v in extra.items()})
    return env


class WorkerProcess:
    """`python -m qw_workers <kind>` as a child process, with its log in a file and its HTTP endpoints."""

    def __init__(self, kind: str, env: dict[str, Any], log_path: Path) -> None:
        self.kind = kind
        self.env = env = {k: str(v) for k, v in env.items()}
        self.log_path = log_path
        self.port = int(env["QW_METRICS_PORT"])
        self._log = open(log_path, "ab")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "qw_workers", kind],
            env=env,
            cwd=ROOT,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )

    def get(self, path: str) -> tuple[int, str]:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.port}{path}", timeout=2) as r:  # noqa: S310
                return r.status, r.read().decode()
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read().decode()
        except OSError:
            return 0, ""

    def is_ready(self) -> bool:
        return self.get("/readyz")[0] == 200

    def wait_ready(self, timeout: float = 20) -> None:
        def ready() -> bool:
            if self.proc.poll() is not None:
                raise AssertionError(f"worker exited with {self.proc.returncode}:\n{self.log()}")
            return self.is_ready()

        wait_for(f"{self.kind} worker ready", ready, timeout, 0.1)

    def metric(self, name: str, **labels: str) -> float | None:
        status, text = self.get("/metrics")
        if status != 200:
            return None
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                    return float(sample.value)
        return None

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")[-6000:]

    def signal(self, sig: int) -> None:
        self.proc.send_signal(sig)

    def wait(self, timeout: float) -> int:
        return self.proc.wait(timeout)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(10)
        self._log.close()


@contextmanager
def running_worker(kind: str, env: dict[str, Any], log_dir: Path, wait: bool = True) -> Iterator[WorkerProcess]:
    log_dir.mkdir(parents=True, exist_ok=True)
    w = WorkerProcess(kind, env, log_dir / f"worker-{kind}-{time.monotonic_ns()}.log")
    try:
        if wait:
            w.wait_ready()
        yield w
    finally:
        w.stop()


class TaskPublisher:
    """Publishes as the API does: pending row, persistent publish with confirms and mandatory, queued row."""

    def __init__(self, amqp_url: str, store: TaskStore) -> None:
        self.store = store
        self.conn = pika.BlockingConnection(pika.URLParameters(amqp_url))
        self.ch = self.conn.channel()
        declare_with_pika(self.ch, build_topology(("image", "email"), 10))
        self.ch.confirm_delivery()

    @staticmethod
    def image(tenant: str, source_key: str, source_format: str = "PNG", **options: Any) -> TaskMessage:
        payload = ImageTask(source_key=source_key, source_format=source_format, options=ImageOptions(**options))
        return TaskMessage(task_id=new_task_id(), tenant=tenant, created_at=utcnow(), payload=payload)

    @staticmethod
    def email(tenant: str = "acme", **fields: Any) -> TaskMessage:
        fields.setdefault("to", "someone@example.com")
        fields.setdefault("subject", "hello")
        return TaskMessage(task_id=new_task_id(), tenant=tenant, created_at=utcnow(), payload=EmailTask(**fields))

    def publish(self, msg: TaskMessage, create_row: bool = True) -> str:
        if create_row:
            source_key = getattr(msg.payload, "source_key", None)
            self.store.create_pending(msg.task_id, msg.tenant, msg.kind, source_key)
        self.publish_raw(msg.kind, msg.to_bytes(), msg.task_id)
        if create_row:
            self.store.confirm_queued(msg.task_id)
        return msg.task_id

    def publish_raw(self, kind: str, body: bytes, message_id: str | None = None) -> None:
        props = pika.BasicProperties(
            message_id=message_id,
            content_type="application/json",
            delivery_mode=pika.DeliveryMode.Persistent,
            headers={H_ATTEMPT: 0},
        )
        self.ch.basic_publish(TASKS_EXCHANGE, kind, body, props, mandatory=True)

    def depth(self, queue: str) -> int:
        return int(self.ch.queue_declare(queue, passive=True).method.message_count)

    def drain(self, queue: str) -> list[tuple[dict[str, Any], bytes]]:
        """Take every ready message (headers, body) off a queue."""
        out = []
        while True:
            method, props, body = self.ch.basic_get(queue, auto_ack=True)
            if method is None:
                return out
            out.append((dict(props.headers or {}), body))

    def close(self) -> None:
        try:
            self.conn.close()
        except Exception:  # noqa: S110 - the broker may be gone in fault tests
            pass
