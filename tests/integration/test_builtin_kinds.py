"""Upgrading to workers that find the built-in kinds in the registry: messages already in the queues still run.

The bodies below are frozen copies of what the API published before the built-ins were tasks (the envelope with an
EmailTask / ImageTask payload), published as bytes, not rebuilt from today's models.
"""

from __future__ import annotations

import io

import pytest
from PIL import Image
from qw_core.storage import LocalStorage
from qw_core.store import open_store

from tests.support.smtp import smtp_server
from tests.support.wait import wait_for
from tests.support.workers import TaskPublisher, running_worker, worker_env

pytestmark = pytest.mark.integration

EMAIL_ID, IMAGE_ID = "e" * 32, "a" * 32
OLD_EMAIL = (
    b'{"v":1,"task_id":"' + EMAIL_ID.encode() + b'","tenant":"acme","created_at":"2025-06-01T12:00:00Z",'
    b'"payload":{"to":"ann@example.com","subject":"Queued before the upgrade","text":"still here","html":null,'
    b'"template":null,"context":{},"reply_to":null,"kind":"email"}}'
)
OLD_IMAGE = (
    b'{"v":1,"task_id":"' + IMAGE_ID.encode() + b'","tenant":"acme","created_at":"2025-06-01T12:00:00Z",'
    b'"payload":{"kind":"image","source_key":"uploads/acme/old.png","source_format":"PNG",'
    b'"options":{"width":10,"height":null,"thumbnail":false,"format":"WEBP","watermark":null,"quality":85}}}'
)


def test_email_and_image_tasks_queued_by_an_earlier_version_run_after_the_upgrade(amqp_url, tmp_path):
    db = f"sqlite:///{tmp_path}/qw.db"
    store = open_store(db)
    storage = LocalStorage(tmp_path / "storage")
    png = io.BytesIO()
    Image.new("RGB", (40, 20), (0, 90, 200)).save(png, "PNG")
    storage.write("uploads/acme/old.png", png.getvalue())
    pub = TaskPublisher(amqp_url, store)
    try:
        for task_id, kind, body in ((EMAIL_ID, "email", OLD_EMAIL), (IMAGE_ID, "image", OLD_IMAGE)):
            store.create_pending(task_id, "acme", kind, "uploads/acme/old.png" if kind == "image" else None)
            pub.publish_raw(kind, body, task_id)
            store.confirm_queued(task_id)
        with smtp_server() as (port, smtp):
            with (
                running_worker("email", worker_env(amqp_url, db, storage.root, QW_SMTP_PORT=port), tmp_path / "email"),
                running_worker("image", worker_env(amqp_url, db, storage.root), tmp_path / "image"),
            ):
                for task_id in (EMAIL_ID, IMAGE_ID):
                    rec = wait_for(f"{task_id} to succeed", lambda t=task_id: _succeeded(store, t), 20)
            [mail] = smtp.messages()
        assert mail["Subject"] == "Queued before the upgrade" and mail.get_content().strip() == "still here"
        assert rec.result_key == storage.task_key("results", "acme", IMAGE_ID, "WEBP")
        with Image.open(io.BytesIO(storage.read(rec.result_key))) as out:
            assert (out.format, out.size) == ("WEBP", (10, 5))
    finally:
        pub.close()
        store.close()


def _succeeded(store, task_id):
    rec = store.get(task_id)
    assert rec is None or rec.status in ("queued", "processing", "succeeded"), rec
    return rec if rec and rec.status == "succeeded" else None
