"""SDK kinds over HTTP (the API started with QW_APP): POST /v1/tasks/{kind}, GET /v1/kinds, results, 404/422/503."""

from __future__ import annotations

import json
import subprocess
import sys
import time
import urllib.parse
from pathlib import Path

import pytest
from qw_core.settings import ApiSettings
from qw_core.topology import queue_name

from tests.support.api import client, running_api
from tests.support.wait import wait_for
from tests.support.workers import running_worker, worker_env

pytestmark = pytest.mark.integration
APP = "tests.support.sdk_tasks"
ORDER = {"order_id": "o-7", "items": [{"sku": "A", "qty": 2}]}


@pytest.fixture
def sdk_api(amqp_url, tmp_path):
    settings = ApiSettings(
        rabbitmq_url=amqp_url, database_url=f"sqlite:///{tmp_path}/qw.db", storage_dir=tmp_path / "storage",
        api_keys="key-acme:acme,key-globex:globex", retry_delays=[200, 400], publish_timeout=3.0, app=APP,
    )  # fmt: skip
    with running_api(settings) as (base, app), client(base) as http:
        yield http, app.state.services, settings


def test_a_posted_task_runs_on_a_worker_and_shows_its_result(sdk_api, amqp_url, tmp_path):
    http, services, settings = sdk_api
    r = http.post("/v1/tasks/inventory", json=ORDER)
    assert r.status_code == 202, r.text
    body = r.json()
    assert body["status"] == "queued" and body["status_url"].endswith(f"/v1/tasks/{body['task_id']}")
    env = worker_env(amqp_url, settings.database_url, settings.storage_dir, QW_APP=APP)
    with running_worker("inventory", env, tmp_path / "logs"):
        view = wait_for(
            "the task to succeed", lambda: (v := http.get(body["status_url"]).json())["status"] == "succeeded" and v, 20
        )
    expected = {"order_id": "o-7", "reserved": 2, "skus": ["A"]}
    assert view["kind"] == "inventory" and view["result"] == expected
    r = http.get(view["result_url"])
    assert r.status_code == 200 and r.headers["content-type"] == "application/json" and r.json() == expected
    events = http.get(f"{body['status_url']}/events").text  # ends at once: the task already ended
    assert [json.loads(line[6:])["result"] for line in events.splitlines() if line.startswith("data: ")] == [expected]
    with client(str(http.base_url), "key-globex") as other:  # tenancy as for every task
        assert other.get(body["status_url"]).status_code == 404


def test_an_unknown_kind_is_404_with_the_known_ones_and_needs_a_key(sdk_api):
    http, services, _ = sdk_api
    r = http.post("/v1/tasks/nope", json={})
    assert r.status_code == 404 and "flaky, inventory, stamped, summarise" in r.json()["detail"]
    assert "POST /v1/emails" in http.post("/v1/tasks/email", json={}).json()["detail"]
    with client(str(http.base_url), None) as anon:
        assert anon.post("/v1/tasks/inventory", json=ORDER).status_code == 401
        assert anon.post("/v1/tasks/nope", json={}).status_code == 401
        assert anon.get("/v1/kinds").status_code == 401
    assert services.store.counts() == {}


def test_an_api_without_qw_app_lists_the_built_in_kinds_at_their_own_routes(amqp_url, tmp_path):
    settings = ApiSettings(
        rabbitmq_url=amqp_url, database_url=f"sqlite:///{tmp_path}/qw.db", storage_dir=tmp_path / "storage",
        api_keys="key-acme:acme",
    )  # fmt: skip
    with running_api(settings) as (base, _), client(base) as http:
        kinds = {k["kind"]: k for k in http.get("/v1/kinds").json()}
    assert set(kinds) == {"image", "email"} and all(k["builtin"] for k in kinds.values())
    assert kinds["image"]["submit_url"] == f"{base}/v1/images" and kinds["email"]["submit_url"] == f"{base}/v1/emails"
    assert kinds["image"]["payload_schema"]["required"] == ["source_key", "source_format"]
    assert kinds["email"]["max_attempts"] is None and kinds["email"]["description"].startswith("Send one email")


def test_a_built_in_kind_cannot_be_queued_at_the_generic_route(sdk_api):
    """POST /v1/tasks/image would let a client name any storage key as its source: the built-ins are queued only at
    their own routes (the upload for images), and the generic route says where."""
    http, services, _ = sdk_api
    forged = {"source_key": "uploads/globex/secret.png", "source_format": "PNG"}
    for kind, body in (("image", forged), ("email", {"to": "a@example.com", "subject": "hi", "text": "x"})):
        r = http.post(f"/v1/tasks/{kind}", json=body)
        assert r.status_code == 404 and f"queue it with POST /v1/{kind}s" in r.json()["detail"]
    assert services.store.counts() == {}
    assert "/v1/tasks/image" not in http.get("/openapi.json").json()["paths"]


def test_a_bad_payload_is_422_naming_the_field_and_queues_nothing(sdk_api, amqp_url):
    http, services, _ = sdk_api
    r = http.post("/v1/tasks/inventory", json={"order_id": "o-1", "items": [{"sku": "A", "qty": 0}]})
    assert r.status_code == 422
    [err] = r.json()["detail"]
    assert err["loc"] == ["body", "items", 0, "qty"] and "greater than or equal to 1" in err["msg"]
    r = http.post("/v1/tasks/inventory", json={**ORDER, "coupon": "X"})
    assert r.status_code == 422 and r.json()["detail"][0]["loc"] == ["body", "coupon"]
    assert services.store.counts() == {}


def test_kinds_lists_each_kind_with_its_json_schema_and_docs_show_it(sdk_api):
    http, _, _ = sdk_api
    kinds = {k["kind"]: k for k in http.get("/v1/kinds").json()}
    assert set(kinds) == {"image", "email", "inventory", "flaky", "summarise", "stamped"}
    assert [k for k, v in kinds.items() if v["builtin"]] == ["email", "image"]
    inv = kinds["inventory"]
    assert inv["submit_url"].endswith("/v1/tasks/inventory") and inv["max_attempts"] == 4
    assert inv["payload_schema"]["required"] == ["order_id", "items"]
    assert inv["payload_schema"]["additionalProperties"] is False
    assert kinds["flaky"]["retry_delays_ms"] == [200, 400] and kinds["summarise"]["time_limit"] == 1.0
    assert kinds["stamped"]["retry_jitter"] == 0.5 and kinds["flaky"]["retry_jitter"] is None  # None: the workers'

    openapi = http.get("/openapi.json").json()
    assert "/v1/tasks/inventory" in openapi["paths"] and "InventoryPayload" in openapi["components"]["schemas"]


def test_a_full_queue_is_503_not_202(sdk_api, broker, vhost):
    http, services, _ = sdk_api
    v = urllib.parse.quote(vhost, safe="")
    cap = {"pattern": f"^{queue_name('inventory')}$", "definition": {"max-length": 1}, "apply-to": "queues"}
    broker.api(f"/api/policies/{v}/cap", "PUT", cap)
    codes = []
    for _ in range(40):  # the policy applies asynchronously; quorum queues reject once over the limit
        r = http.post("/v1/tasks/inventory", json=ORDER)
        codes.append(r.status_code)
        if r.status_code == 503:
            break
        time.sleep(0.1)
    assert codes[-1] == 503 and set(codes[:-1]) <= {202}
    assert r.headers["retry-after"] and "nothing was queued" in r.json()["detail"]
    assert services.store.counts() == {"queued": codes.count(202)}


def test_no_server_errors_from_fuzzing_the_kind_routes(sdk_api, tmp_path):
    """schemathesis on the API's own OpenAPI, which now holds a route per kind with its payload schema."""
    http, _, _ = sdk_api
    cmd = [
        str(Path(sys.executable).with_name("schemathesis")), "run", f"{http.base_url}/openapi.json",
        "--checks", "not_a_server_error", "--include-path-regex", "^/v1/(tasks/[a-z]+|kinds)$",
        "--max-examples", "30", "--seed", "1", "--phases", "examples,coverage,fuzzing",
        "-H", "Authorization: Bearer key-acme", "--generation-database", "none", "--report-dir", str(tmp_path),
    ]  # fmt: skip
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=600)  # noqa: S603
    assert r.returncode == 0, r.stdout[-6000:] + r.stderr[-2000:]
    assert "5 selected" in r.stdout, r.stdout[-3000:]  # the four kinds' routes and /v1/kinds, not filtered away


def test_a_delay_query_schedules_the_task_and_a_bad_one_is_422_with_nothing_queued(sdk_api, amqp_url, tmp_path):
    http, services, settings = sdk_api
    log = tmp_path / "stamps"
    r = http.post("/v1/tasks/stamped?delay=2", json={"log": str(log)})
    assert r.status_code == 202, r.text
    body = r.json()
    assert body["status"] == "scheduled" and abs(body["not_before"] - (time.time() + 2)) < 1
    view = http.get(body["status_url"]).json()
    assert view["status"] == "scheduled" and view["not_before"] == body["not_before"]
    for bad in ("0", "-1", "86401", "soon"):
        r = http.post(f"/v1/tasks/stamped?delay={bad}", json={"log": str(log)})
        assert r.status_code == 422 and r.json()["detail"][0]["loc"] == ["query", "delay"], r.text
    r = http.post("/v1/emails?delay=90000", json={"to": "a@example.com", "subject": "s", "text": "t"})
    assert r.status_code == 422 and "86400" in r.text
    assert services.store.counts("acme") == {"scheduled": 1}  # the refused ones left no row
    env = worker_env(amqp_url, settings.database_url, settings.storage_dir, QW_APP=APP)
    with running_worker("stamped", env, tmp_path / "logs"):
        done = wait_for(
            "the task", lambda: (v := http.get(body["status_url"]).json())["status"] == "succeeded" and v, 20
        )
    assert float(log.read_text().split()[0]) >= body["not_before"]
    assert done["not_before"] == body["not_before"]
