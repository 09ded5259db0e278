"""The image pipeline on S3 storage end to end (API + image worker on a real broker and a real SeaweedFS server):
uploads land in the bucket under the tenant's prefix, the result is streamed or redirected to a presigned URL
(after the tenant check), and the failure paths: S3 down -> 503 + Retry-After and nothing queued; a worker whose
store is down retries with backoff and finishes once it is back."""

from __future__ import annotations

import io
import json

import httpx
import pytest
from PIL import Image
from qw_core.settings import WorkerSettings
from qw_core.storage import open_storage
from qw_core.store import open_store
from qw_core.topology import queue_name

from tests.support.api import client, on_s3, running_api
from tests.support.images import image_bytes
from tests.support.wait import wait_for
from tests.support.workers import TaskPublisher, running_worker, worker_env

pytestmark = pytest.mark.integration


def _on_s3(settings, env: dict[str, str], **extra):
    """Short S3 timeouts and attempts, so a stopped server is an answer within seconds."""
    return on_s3(settings, env, s3_timeout_seconds=2.0, s3_max_attempts=2, **extra)


def _upload(http: httpx.Client, **form: str) -> httpx.Response:
    files = {"file": ("../../etc/passwd.png", image_bytes("PNG", (300, 200)), "image/png")}
    return http.post("/v1/images", files=files, data={"width": "100", "format": "WEBP", **form})


def _done(http: httpx.Client, task_id: str) -> dict:
    def settled():
        body = http.get(f"/v1/tasks/{task_id}").json()
        return body if body["status"] in ("succeeded", "failed", "dead") else None

    return wait_for(f"task {task_id} settled", settled, 60)


@pytest.mark.parametrize("redirect", [0, 60], ids=["streamed", "presigned-redirect"])
def test_an_upload_is_processed_and_its_result_served_from_the_bucket(
    api_settings, amqp_url, s3_env, tmp_path, redirect
):
    settings = _on_s3(api_settings, s3_env, result_redirect_seconds=redirect)
    storage = open_storage(settings)
    env = worker_env(amqp_url, settings.database_url, tmp_path / "unused", **s3_env)
    with running_api(settings) as (base, _), running_worker("image", env, tmp_path / "logs"), client(base) as http:
        r = _upload(http)
        assert r.status_code == 202, r.text
        task_id = r.json()["task_id"]
        assert _done(http, task_id)["status"] == "succeeded"
        rec = open_store(settings.database_url).get(task_id)
        assert rec.result_key.startswith("results/acme/") and storage.exists(rec.result_key)
        assert not list((tmp_path / "unused").glob("**/*.*"))  # nothing went to a local directory

        res = http.get(f"/v1/tasks/{task_id}/result")
        if redirect:
            assert res.status_code == 302
            location = res.headers["location"]
            assert location.startswith(s3_env["QW_S3_ENDPOINT_URL"]) and "X-Amz-Signature" in location
            res = httpx.get(location)  # no API key: the signed URL alone
        assert res.status_code == 200
        assert res.headers["content-type"] == "image/webp"
        assert res.headers["content-disposition"] == f'attachment; filename="{task_id}.webp"'
        img = Image.open(io.BytesIO(res.content))
        assert img.format == "WEBP" and img.size == (100, 67)
        with client(base, "key-globex") as other:  # another tenant: 404, never a link
            assert other.get(f"/v1/tasks/{task_id}/result", follow_redirects=False).status_code == 404


def test_s3_down_the_upload_is_503_with_retry_after_and_nothing_is_queued(
    api_settings, amqp_url, s3_server, s3_env, peek
):
    settings = _on_s3(api_settings, s3_env)
    with running_api(settings) as (base, _), client(base) as http:
        s3_server.kill9()
        try:
            r = _upload(http)
            assert r.status_code == 503, r.text
            assert int(r.headers["retry-after"]) > 0 and "storage" in r.json()["detail"]
            assert peek.depth(queue_name("image")) == 0
        finally:
            s3_server.start()
        r = _upload(http)  # back by itself once the store is
        assert r.status_code == 202, r.text
        assert peek.depth(queue_name("image")) == 1


def test_a_worker_retries_with_backoff_while_s3_is_down_and_finishes_when_it_is_back(
    amqp_url, s3_server, s3_env, tmp_path
):
    db = f"sqlite:///{tmp_path}/qw.db"
    store = open_store(db)
    storage = open_storage(_on_s3(WorkerSettings(), s3_env))
    src = storage.new_key("uploads", "acme", "PNG")
    storage.write(src, image_bytes("PNG", (64, 64)))
    pub = TaskPublisher(amqp_url, store)
    # Retries 1.5 s apart, 20 attempts: the outage below outlasts several of them and not all.
    env = worker_env(amqp_url, db, tmp_path / "unused", QW_RETRY_DELAYS=json.dumps([1500]), QW_MAX_ATTEMPTS=20,
                     QW_S3_TIMEOUT_SECONDS=2, QW_S3_MAX_ATTEMPTS=2, **s3_env)  # fmt: skip
    try:
        with running_worker("image", env, tmp_path / "logs"):
            s3_server.kill9()
            try:
                task_id = pub.publish(pub.image("acme", src, "PNG", format="PNG", width=32))
                wait_for("a second attempt", lambda: (store.get(task_id).attempts or 0) >= 2, 60)
                assert store.get(task_id).status != "succeeded"
            finally:
                s3_server.start()
            rec = wait_for("succeeded", lambda: (r := store.get(task_id)) and r.status == "succeeded" and r, 90)
        assert rec.completions == 1 and rec.attempts >= 2
        assert Image.open(io.BytesIO(storage.read(rec.result_key))).size == (32, 32)
    finally:
        pub.close()
        store.close()
