from __future__ import annotations

import json

import pika
import pytest
from qw_core.settings import ApiSettings
from qw_core.store import open_store

from tests.support.api import client, running_api
from tests.support.smtp import smtp_server
from tests.support.util import free_port
from tests.support.workers import running_worker, worker_env

KEYS = "key-acme:acme,key-globex:globex"


@pytest.fixture
def store(database_url):
    """The task store at `database_url` (SQLite, and PostgreSQL where the test is parametrised), closed after."""
    s = open_store(database_url)
    yield s
    s.close()


@pytest.fixture
def api_settings(amqp_url, tmp_path) -> ApiSettings:
    return ApiSettings(
        rabbitmq_url=amqp_url,
        database_url=f"sqlite:///{tmp_path}/qw.db",
        storage_dir=tmp_path / "storage",
        api_keys=KEYS,
        max_upload_bytes=2 * 1024 * 1024,
        max_image_pixels=4_000_000,
        retry_delays=[200, 400],
        publish_timeout=3.0,
        sse_poll_interval=0.05,
    )


@pytest.fixture
def api(api_settings):
    with running_api(api_settings) as (base, app):
        yield base, app


@pytest.fixture
def http(api):
    with client(api[0]) as c:
        yield c


class Peek:
    """Reads what the API published, straight from the real broker."""

    def __init__(self, url: str) -> None:
        self.conn = pika.BlockingConnection(pika.URLParameters(url))
        self.ch = self.conn.channel()

    def depth(self, queue: str) -> int:
        return self.ch.queue_declare(queue, passive=True).method.message_count

    def take(self, queue: str):
        method, props, body = self.ch.basic_get(queue, auto_ack=True)
        return (props, json.loads(body)) if method else None

    def close(self) -> None:
        self.conn.close()


@pytest.fixture
def peek(amqp_url, api):
    p = Peek(amqp_url)
    yield p
    p.close()


@pytest.fixture
def platform(api_settings, amqp_url, tmp_path, request):
    """API + one image worker + one email worker + an SMTP server, all sharing one store and storage.
    A test marked `@pytest.mark.task_delay(seconds)` gets workers that take that long per task."""
    marker = request.node.get_closest_marker("task_delay")
    delay = {"QW_TEST_TASK_DELAY": marker.args[0]} if marker else {}
    with smtp_server() as (smtp_port, mails), running_api(api_settings) as (base, _app):
        env = worker_env(amqp_url, api_settings.database_url, api_settings.storage_dir,
                         QW_SMTP_PORT=smtp_port, QW_SMTP_FROM="noreply@queueworker.test", **delay)  # fmt: skip
        with (
            running_worker("image", env, tmp_path / "logs"),
            running_worker("email", {**env, "QW_METRICS_PORT": free_port()}, tmp_path / "logs"),
        ):
            with client(base) as http:
                yield http, mails


@pytest.fixture
def email_rig(amqp_url, tmp_path, request):
    """What an email worker test needs: a publisher, the store (SQLite; `postgres` as the indirect param), the
    worker's environment and the test's directory."""
    from qw_core.store import open_store

    from tests.support.workers import TaskPublisher, worker_env

    if getattr(request, "param", "sqlite") == "postgres":
        db = request.getfixturevalue("pg_url")
    else:
        db = f"sqlite:///{tmp_path}/qw.db"
    store = open_store(db)
    pub = TaskPublisher(amqp_url, store)
    env = worker_env(amqp_url, db, tmp_path / "storage", QW_SMTP_FROM="QueueWorker <noreply@qw.test>")
    yield pub, store, env, tmp_path
    pub.close()
    store.close()
