"""S3Storage (qw_core/s3storage.py) against a real S3 server (SeaweedFS, started by the `s3_server` fixture): what
the API, the workers and the janitor rely on, per call. The pipeline and the outages are in test_s3_pipeline.py."""

from __future__ import annotations

import io
import os
import time
import urllib.request

import pytest
from pydantic import SecretStr
from qw_core.retention import RetentionPolicy
from qw_core.s3storage import S3Storage, expiry_days
from qw_core.settings import JanitorSettings
from qw_core.storage import StorageError, StorageUnavailable, open_storage
from qw_core.store import open_store
from qw_workers.janitor import Janitor

pytestmark = pytest.mark.integration


def _settings(env: dict[str, str], **extra) -> JanitorSettings:
    return JanitorSettings(
        storage_url=env["QW_STORAGE_URL"],
        s3_endpoint_url=env["QW_S3_ENDPOINT_URL"],
        s3_access_key_id=SecretStr(env["QW_S3_ACCESS_KEY_ID"]),
        s3_secret_access_key=SecretStr(env["QW_S3_SECRET_ACCESS_KEY"]),
        **extra,
    )


@pytest.fixture
def storage(s3_env) -> S3Storage:
    s = open_storage(_settings(s3_env))
    assert isinstance(s, S3Storage)
    return s


def test_objects_round_trip_under_the_prefix_and_missing_ones_are_file_not_found(storage, s3_server):
    key = storage.new_key("uploads", "acme", "PNG")
    storage.write(key, b"small")
    assert storage.read(key) == b"small" and storage.exists(key)
    listed = s3_server.client().list_objects_v2(Bucket=storage.bucket, Prefix=storage.prefix)["Contents"]
    assert [o["Key"] for o in listed] == [storage.prefix + key]  # the tenant's prefix inside the settings' prefix
    storage.delete(key)
    assert not storage.exists(key)
    with pytest.raises(FileNotFoundError):
        storage.read(key)
    with pytest.raises(FileNotFoundError):
        storage.open(key)
    storage.delete(key)  # deleting what is gone is no error


def test_a_large_file_goes_up_in_parts_and_comes_back_streamed(storage):
    data = os.urandom(17 * 1024 * 1024 + 123)  # three parts of 8 MiB (multipart upload)
    key = storage.new_key("uploads", "acme", "PNG")
    storage.write_file(key, io.BytesIO(data))
    blob = storage.open(key)
    try:
        chunks = list(blob.chunks)
    finally:
        blob.close()
    assert blob.size == len(data) and b"".join(chunks) == data and len(chunks) > 1
    out = io.BytesIO()
    storage.read_into(key, out)
    assert out.getvalue() == data


def test_a_key_that_is_not_a_generated_key_is_refused(storage):
    for bad in ("../escape.png", "/abs.png", "a//b.png", "uploads/../x.png", "a\\b.png", ""):
        with pytest.raises(StorageError):
            storage.write(bad, b"x")
    good = storage.new_key("results", "acme", "PNG")
    storage.write(good, b"x")
    assert storage.delete_many(["../escape.png", good, "results/acme/never-written.png"]) == ["../escape.png"]
    assert not storage.exists(good)


def test_a_presigned_url_serves_the_object_with_its_type_and_name_and_expires(storage):
    key = storage.new_key("results", "acme", "PNG")
    storage.write(key, b"png-bytes")
    url = storage.presign(key, 60, "task1.png", "image/png")
    with urllib.request.urlopen(url, timeout=10) as r:  # noqa: S310 - our own 127.0.0.1 server
        assert r.read() == b"png-bytes"
        assert r.headers["Content-Type"] == "image/png"
        assert r.headers["Content-Disposition"] == 'attachment; filename="task1.png"'
    short = storage.presign(key, 1, "task1.png", "image/png")
    time.sleep(2.5)  # not a timing assertion: an expired signature must be refused, however late we ask
    with pytest.raises(urllib.error.HTTPError) as err:
        urllib.request.urlopen(short, timeout=10)  # noqa: S310
    assert err.value.code == 403


def test_lifecycle_rules_follow_the_retention_and_keep_the_buckets_other_rules(storage, s3_server):
    client = s3_server.client()
    other = {"ID": "the-owners-own", "Filter": {"Prefix": "elsewhere/"}, "Status": "Enabled", "Expiration": {"Days": 3}}
    client.put_bucket_lifecycle_configuration(Bucket=storage.bucket, LifecycleConfiguration={"Rules": [other]})
    assert storage.expire({"uploads": 7 * 86400, "results": 1.5 * 86400})
    assert storage.expire({"uploads": 7 * 86400, "results": 1.5 * 86400})  # again: replaces its own, adds none
    rules = {r["ID"]: r for r in client.get_bucket_lifecycle_configuration(Bucket=storage.bucket)["Rules"]}
    assert rules["the-owners-own"]["Filter"] == {"Prefix": "elsewhere/"}
    mine = {r["Filter"]["Prefix"]: r["Expiration"]["Days"] for i, r in rules.items() if storage.prefix in i}
    assert mine == {f"{storage.prefix}uploads/": 8, f"{storage.prefix}results/": 3}
    assert expiry_days(86400) == 2 and expiry_days(1) == 2  # never before the janitor's own removal


def test_the_janitor_removes_an_ended_tasks_upload_and_an_expired_result_from_the_bucket(storage, tmp_path):
    store = open_store(f"sqlite:///{tmp_path}/qw.db")
    now = time.time()
    for task_id, age in (("old", 8 * 86400), ("new", 60)):
        src, res = f"uploads/acme/{task_id}.png", f"results/acme/{task_id}.webp"
        storage.write(src, b"source")
        storage.write(res, b"result")
        store.create_pending(task_id, "acme", "image", src)
        store.confirm_queued(task_id)
        store.start_attempt(task_id, 1)
        store.succeed(task_id, result_key=res)
        store._execute("UPDATE tasks SET updated_at=? WHERE task_id=?", (now - age, task_id))  # test-only backdate
    report = Janitor(store, storage, RetentionPolicy(7 * 86400, 600), batch_size=10).run_pass(now=now)
    assert report.uploads_removed == 2 and report.tasks_removed == 1
    assert not storage.exists("uploads/acme/old.png") and not storage.exists("uploads/acme/new.png")
    assert not storage.exists("results/acme/old.webp") and storage.exists("results/acme/new.webp")
    store.close()


def test_a_stopped_server_is_storage_unavailable_and_the_janitors_batch_stays_for_the_next_pass(
    s3_server, s3_env, tmp_path
):
    storage = open_storage(_settings(s3_env, s3_timeout_seconds=2, s3_max_attempts=2))
    store = open_store(f"sqlite:///{tmp_path}/qw.db")
    storage.write("uploads/acme/t1.png", b"source")
    store.create_pending("t1", "acme", "image", "uploads/acme/t1.png")
    store.confirm_queued("t1")
    store.start_attempt("t1", 1)
    store.finish_failed("t1", "failed", "boom", 1)
    janitor = Janitor(store, storage, RetentionPolicy(7 * 86400, 600), batch_size=10)
    s3_server.kill9()
    try:
        for call in (lambda: storage.write("uploads/acme/x.png", b"x"), lambda: storage.read("uploads/acme/t1.png")):
            with pytest.raises(StorageUnavailable):
                call()
        with pytest.raises(StorageUnavailable):
            janitor.run_pass()
    finally:
        s3_server.start()
    assert janitor.run_pass().uploads_removed == 1  # the row still named its upload: removed now
    assert not storage.exists("uploads/acme/t1.png")
    store.close()
