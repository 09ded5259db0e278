"""Shared fixtures: a real RabbitMQ (one per session, a fresh vhost per test) and a real PostgreSQL."""

from __future__ import annotations

import os
import sys
import urllib.parse
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "scripts"))

from postgres import Postgres  # noqa: E402
from rabbitmq import Broker  # noqa: E402


def _need(what: str, exc: BaseException) -> None:
    """A missing service fails in CI; locally (CI unset) it may skip, and says why."""
    if os.environ.get("CI"):
        raise exc
    pytest.skip(f"{what} not available locally ({exc}); CI runs this for real")


@pytest.fixture(scope="session")
def broker() -> Iterator[Broker]:
    b = Broker()
    try:
        started = b.start()
    except (SystemExit, TimeoutError, OSError) as exc:
        _need("RabbitMQ", exc)
    yield b
    if started and not os.environ.get("QW_KEEP_SERVICES"):
        b.stop()


@pytest.fixture
def vhost(broker: Broker) -> Iterator[str]:
    """A throwaway vhost: each test gets its own queues and exchanges, so tests cannot leak into each other."""
    name = f"t-{uuid.uuid4().hex[:12]}"
    q = urllib.parse.quote(name, safe="")
    broker.api(f"/api/vhosts/{q}", "PUT", {})
    broker.api(f"/api/permissions/{q}/guest", "PUT", {"configure": ".*", "write": ".*", "read": ".*"})
    yield name
    try:
        broker.api(f"/api/vhosts/{q}", "DELETE")
    except OSError:
        pass


@pytest.fixture
def amqp_url(broker: Broker, vhost: str) -> str:
    return f"amqp://guest:guest@127.0.0.1:{broker.port}/{urllib.parse.quote(vhost, safe='')}"


@pytest.fixture(scope="session")
def postgres() -> Iterator[Postgres]:
    pg = Postgres(int(os.environ.get("QW_PG_PORT", 55432)))
    try:
        started = pg.start()
    except (SystemExit, OSError) as exc:
        _need("PostgreSQL", exc)
    yield pg
    if started and not os.environ.get("QW_KEEP_SERVICES"):
        pg.stop()


@pytest.fixture
def pg_url(postgres: Postgres) -> Iterator[str]:
    """A fresh database per test."""
    import psycopg

    name = f"t_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(postgres.url, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    yield postgres.url.rsplit("/", 1)[0] + "/" + name
    with psycopg.connect(postgres.url, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture(params=["sqlite", "postgres"])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path}/qw.db"
    return str(request.getfixturevalue("pg_url"))
