"""The README's broker commands as written: `python3 scripts/rabbitmq.py start --version 4` runs RabbitMQ 4.x from
its trixie root (private ports here, so it cannot meet the session brokers), `status` sees it, `stop` ends it and
its namespace."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "scripts"))

from rabbitmq import Broker4, free_broker_ports  # noqa: E402

pytestmark = pytest.mark.integration


def script(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["python3", "scripts/rabbitmq.py", *args], cwd=ROOT, capture_output=True, text=True, timeout=180
    )


def test_start_status_stop_a_4x_broker_from_the_command_line() -> None:
    amqp, mgmt, prom = free_broker_ports()
    name = f"qwcli4-{amqp}"  # a node name no other session's broker has
    ports = ["--name", name, "--port", str(amqp), "--mgmt-port", str(mgmt), "--prom-port", str(prom)]
    b = Broker4(name, amqp, mgmt, prom)
    try:
        out = script("start", "--version", "4", *ports)
        assert out.returncode == 0 and "rabbitmq started" in out.stdout, out.stderr
        overview = b.api("/api/overview")
        assert isinstance(overview, dict) and overview["rabbitmq_version"].startswith("4.")
        assert script("status", *ports).returncode == 0
        out = script("stop", "--version", "4", *ports)
        assert out.returncode == 0 and "rabbitmq stopped" in out.stdout, out.stderr
        assert not b.running() and b._beam_pid() is None
        assert script("status", *ports).returncode == 1
    finally:
        b.destroy()
