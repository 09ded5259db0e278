"""The chart's dashboards and alerts against the real thing: a private Prometheus (Debian's `prometheus`) scrapes
the real API, real image and email workers and the real RabbitMQ every second while tasks flow; every dashboard
panel query must return data. The alert rules pass `promtool check rules` and their unit tests, and each
service's /metrics passes `promtool check metrics`.

Operator panels need a running operator (and so a control plane): see tests/e2e/test_operator_metrics.py.
"""

from __future__ import annotations

import threading
import urllib.parse

import httpx
import pika
import pytest

from tests.support.api import client, running_api
from tests.support.images import image_bytes
from tests.support.prometheus import CHART, RATE_INTERVAL, panel_queries, prometheus, promtool, query
from tests.support.smtp import smtp_server
from tests.support.util import free_port
from tests.support.wait import wait_for
from tests.support.workers import WorkerProcess, running_worker, worker_env

pytestmark = pytest.mark.integration

RULES = CHART / "rules"
DASHBOARDS = ("api", "workers")


class Traffic:
    """Keeps tasks flowing through the API in a thread: images, emails and an unacceptable upload."""

    def __init__(self, http: httpx.Client) -> None:
        self.http = http
        self.errors: list[str] = []
        self.accepted = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        png = image_bytes("PNG", (32, 24))
        while not self._stop.is_set():
            calls = [
                ("/v1/images", {"files": {"file": ("a.png", png, "image/png")}, "data": {"width": "16"}}),
                ("/v1/emails", {"json": {"to": "ann@example.com", "subject": "hi", "text": "hello"}}),
            ]
            for path, kwargs in calls:
                r = self.http.post(path, **kwargs)
                if r.status_code == 202:
                    self.accepted += 1
                else:
                    self.errors.append(f"{path}: {r.status_code} {r.text[:200]}")
            bad = self.http.post("/v1/images", files={"file": ("a.png", b"not an image", "image/png")})
            if bad.status_code < 400:
                self.errors.append(f"a text upload was accepted: {bad.status_code}")
            self._stop.wait(0.2)

    def __enter__(self) -> Traffic:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(10)


@pytest.fixture
def services(api_settings, amqp_url, tmp_path):
    """API + image worker + email worker + SMTP (the first mail is refused once, so a retry happens).
    Like the `platform` fixture, but it hands out the worker processes for their metrics ports."""
    with (
        smtp_server(data_replies=["451 4.3.0 busy, try again"]) as (smtp_port, _mails),
        running_api(api_settings) as (base, _app),
    ):
        env = worker_env(amqp_url, api_settings.database_url, api_settings.storage_dir, QW_SMTP_PORT=smtp_port)
        with (
            running_worker("image", env, tmp_path / "logs") as image,
            running_worker("email", {**env, "QW_METRICS_PORT": free_port()}, tmp_path / "logs") as email,
        ):
            yield base, {"image": image, "email": email}


def _poison(amqp_url: str) -> None:
    """One undecodable message straight onto qw.image: the worker dead-letters it (reason undecodable)."""
    conn = pika.BlockingConnection(pika.URLParameters(amqp_url))
    try:
        ch = conn.channel()
        ch.confirm_delivery()
        ch.basic_publish("qw.tasks", "image", b"\xff not json", pika.BasicProperties(delivery_mode=2), mandatory=True)
    finally:
        conn.close()


def test_every_dashboard_panel_returns_data_while_tasks_flow(services, amqp_url, broker, tmp_path):
    base, workers = services
    api_hostport = urllib.parse.urlparse(base).netloc
    targets = {
        "queueworker-api": ("/metrics", [api_hostport]),
        "queueworker-workers": ("/metrics", [f"127.0.0.1:{w.port}" for w in workers.values()]),
        # Per-queue series (rabbitmq_queue_messages_ready{queue=...}); /metrics only has the sum of all queues.
        "rabbitmq": ("/metrics/per-object", [f"127.0.0.1:{broker.prom_port}"]),
    }
    queries = [q for name in DASHBOARDS for q in panel_queries(name)]
    with prometheus(tmp_path / "prom", targets) as prom, client(base) as http, Traffic(http) as traffic:
        _poison(amqp_url)

        def all_up() -> bool:
            up = query(prom, "up")
            return len(up) == 4 and all(s["value"][1] == "1" for s in up)

        wait_for("every scrape target up", all_up, 20, 0.5)

        missing: list[str] = []

        def every_panel_has_data() -> bool:
            missing[:] = [f"{title}: {expr}" for title, expr in queries if not query(prom, expr)]
            return not missing

        wait_for("data for every panel query", every_panel_has_data, 45, 1.0, state=lambda: missing)
        assert not traffic.errors, traffic.errors[:5]

        # The data is the real flow, not just zero-initialised series. Prometheus scrapes each target on its own
        # schedule: wait until every flow below shows, not just the first one.
        def flowing(expr: str, by: str) -> set[str]:
            return {s["metric"].get(by, "") for s in query(prom, expr) if float(s["value"][1]) > 0}

        def flows() -> dict[str, set[str]]:
            succeeded = f'rate(queueworker_worker_tasks_processed_total{{outcome="succeeded"}}[{RATE_INTERVAL}])'
            submitted = f"rate(queueworker_api_tasks_submitted_total[{RATE_INTERVAL}])"
            return {
                "succeeded": flowing(f"sum by (kind) ({succeeded})", "kind"),
                "submitted": flowing(f"sum by (kind) ({submitted})", "kind"),
                "rejected": flowing("sum by (reason) (queueworker_api_rejected_uploads_total)", "reason"),
                "dead": flowing("sum by (kind, reason) (queueworker_worker_dead_letters_total)", "reason"),
                "retried": flowing("sum by (kind) (queueworker_worker_retries_total)", "kind"),
                "consumed": flowing('sum by (queue) (rabbitmq_queue_consumers{queue=~"qw\\\\.[a-z]+"})', "queue"),
            }

        def expected(f: dict[str, set[str]]) -> bool:
            return (
                f["succeeded"] == f["submitted"] == {"image", "email"}
                and bool(f["rejected"])
                and f["dead"] == {"undecodable"}
                and f["retried"] == {"email"}
                and f["consumed"] >= {"qw.image", "qw.email"}
            )

        wait_for("every flow in the metrics", lambda: expected(flows()), 15, 0.5, state=flows)


def test_alert_rules_are_valid_and_their_unit_tests_pass() -> None:
    checked = promtool("check", "rules", str(RULES / "queueworker.rules.yaml"))
    assert checked.returncode == 0, checked.stdout + checked.stderr
    tested = promtool("test", "rules", "queueworker.rules.test.yaml", cwd=RULES)
    assert tested.returncode == 0, tested.stdout + tested.stderr
    assert "SUCCESS" in tested.stdout


def test_metrics_of_every_service_pass_promtool_check_metrics(services, amqp_url) -> None:
    base, workers = services
    with client(base) as http:
        assert http.post("/v1/emails", json={"to": "ann@example.com", "subject": "s", "text": "t"}).status_code == 202
        exposition = {"api": http.get("/metrics").text}
    worker: WorkerProcess
    for kind, worker in workers.items():
        status, text = worker.get("/metrics")
        assert status == 200
        exposition[f"{kind} worker"] = text
    for service, text in exposition.items():
        assert "queueworker_" in text, service
        result = promtool("check", "metrics", stdin=text)
        assert result.returncode == 0, f"{service}: {result.stdout}{result.stderr}"
