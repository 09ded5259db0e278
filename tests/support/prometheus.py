"""A private Prometheus (Debian's `prometheus`) for tests, and the shipped dashboards' panel queries."""

from __future__ import annotations

import json
import shutil
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx

from tests.conftest import _need
from tests.support.util import free_port
from tests.support.wait import wait_for

CHART = Path(__file__).resolve().parents[2] / "charts" / "queueworker"
# Grafana's $__rate_interval is at least four scrape intervals; with 1 s scrapes 10 s leaves room for jitter.
RATE_INTERVAL = "10s"


def _tool(name: str) -> str:
    path = shutil.which(name)
    if not path:
        _need(name, FileNotFoundError(f"{name} not on PATH: apt-get install prometheus"))
    return str(path)


def panel_queries(name: str) -> list[tuple[str, str]]:
    """(panel title, PromQL) of every target of a shipped dashboard, with Grafana's variables filled in."""
    dash = json.loads((CHART / "dashboards" / f"{name}.json").read_text())
    return [
        (f"{name}: {p['title']}", t["expr"].replace("$__rate_interval", RATE_INTERVAL))
        for p in dash["panels"]
        for t in p["targets"]
    ]


@contextmanager
def prometheus(tmp: Path, targets: dict[str, tuple[str, list[str]]]) -> Iterator[str]:
    """A private Prometheus on a free loopback port; targets: job -> (metrics path, [host:port])."""
    tmp.mkdir(parents=True, exist_ok=True)
    port = free_port()
    config = {
        "global": {"scrape_interval": "1s", "evaluation_interval": "1s", "scrape_timeout": "900ms"},
        "scrape_configs": [
            {"job_name": job, "metrics_path": path, "static_configs": [{"targets": hosts}]}
            for job, (path, hosts) in targets.items()
        ],
    }
    (tmp / "prometheus.yml").write_text(json.dumps(config))  # JSON is YAML
    log = open(tmp / "prometheus.log", "wb")  # noqa: SIM115 - closed below
    proc = subprocess.Popen(
        [
            _tool("prometheus"),
            f"--config.file={tmp / 'prometheus.yml'}",
            f"--storage.tsdb.path={tmp / 'data'}",
            f"--web.listen-address=127.0.0.1:{port}",
            "--storage.tsdb.retention.time=1h",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    base = f"http://127.0.0.1:{port}"
    try:

        def ready() -> bool:
            assert proc.poll() is None, (tmp / "prometheus.log").read_text()[-3000:]
            try:
                return httpx.get(f"{base}/-/ready", timeout=1).status_code == 200
            except httpx.HTTPError:
                return False

        wait_for("Prometheus ready", ready, 30, 0.2)
        yield base
    finally:
        proc.terminate()
        proc.wait(15)
        log.close()


def query(base: str, expr: str) -> list[dict[str, Any]]:
    r = httpx.get(f"{base}/api/v1/query", params={"query": expr}, timeout=5)
    body = r.json()
    assert body["status"] == "success", f"{expr}: {body}"
    return list(body["data"]["result"])


def promtool(*args: str, stdin: str | None = None, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([_tool("promtool"), *args], input=stdin, capture_output=True, text=True, cwd=cwd, timeout=60)
