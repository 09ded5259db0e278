"""The image worker as a real process on a real broker: results, dead letters, SIGTERM, SIGKILL, long tasks."""

from __future__ import annotations

import io
import json
import signal

import pytest
from PIL import Image
from qw_core.storage import LocalStorage
from qw_core.store import open_store
from qw_core.topology import H_REASON, dead_queue_name, queue_name

from tests.support.images import image_bytes
from tests.support.wait import wait_for
from tests.support.workers import TaskPublisher, running_worker, worker_env

pytestmark = [pytest.mark.integration, pytest.mark.broker_matrix]  # on RabbitMQ 3.10 and 4.x
TENANT = "acme"


@pytest.fixture
def rig(amqp_url, tmp_path):
    db = f"sqlite:///{tmp_path}/qw.db"
    store = open_store(db)
    storage = LocalStorage(tmp_path / "storage")
    pub = TaskPublisher(amqp_url, store)
    env = worker_env(amqp_url, db, tmp_path / "storage")
    yield pub, store, storage, env, tmp_path
    pub.close()
    store.close()


def upload(storage: LocalStorage, data: bytes, fmt: str = "PNG") -> str:
    key = storage.new_key("uploads", TENANT, fmt)
    storage.write(key, data)
    return key


def photo_with_exif(size=(200, 100)) -> bytes:
    """A JPEG whose pixels are landscape but whose EXIF says 'rotate 90°' (orientation 6), with GPS data."""
    img = Image.new("RGB", size, "blue")
    img.paste((255, 0, 0), (0, 0, size[0] // 2, size[1]))  # left half red
    exif = Image.Exif()
    exif[0x0112] = 6
    exif[0x010F] = "TestCam"
    exif.get_ifd(0x8825)[2] = (52.0, 31.0, 12.0)  # GPSLatitude
    buf = io.BytesIO()
    img.save(buf, "JPEG", exif=exif, quality=95)
    return buf.getvalue()


def settled(store, task_id):
    rec = store.get(task_id)
    return rec if rec and rec.status in ("succeeded", "failed", "dead") else None


def test_images_processed_to_size_format_orientation_without_metadata(rig):
    pub, store, storage, env, tmp = rig
    src = upload(storage, photo_with_exif(), "JPEG")
    plain = pub.publish(pub.image(TENANT, src, "JPEG", width=50, format="PNG"))
    marked = pub.publish(pub.image(TENANT, src, "JPEG", width=50, format="PNG", watermark="QW"))
    thumb = pub.publish(pub.image(TENANT, src, "JPEG", thumbnail=True, format="WEBP"))
    with running_worker("image", env, tmp) as w:
        recs = {t: wait_for("settled", lambda t=t: settled(store, t), 15) for t in (plain, marked, thumb)}
        # The status is written before the ack, and the metric counts the outcome after it: wait for the metric too.
        succeeded = lambda: w.metric("queueworker_worker_tasks_processed_total", kind="image", outcome="succeeded")  # noqa: E731
        wait_for("3 successes counted", lambda: succeeded() == 3, 10)
    for rec in recs.values():
        assert rec.status == "succeeded" and rec.completions == 1 and rec.attempts == 1
        assert rec.result_key and rec.result_key.startswith(f"results/{TENANT}/")
        assert storage.exists(rec.result_key)

    out = Image.open(io.BytesIO(storage.read(recs[plain].result_key)))
    # EXIF orientation 6 applied: 200x100 landscape becomes portrait, then fits width 50 -> 50x100.
    assert out.format == "PNG" and out.size == (50, 100)
    assert out.getpixel((25, 5))[:3][0] > 200  # the red half is on top after the rotation
    assert not out.getexif() and "exif" not in out.info
    marked_img = Image.open(io.BytesIO(storage.read(recs[marked].result_key)))
    assert marked_img.size == out.size
    assert marked_img.convert("RGB").tobytes() != out.convert("RGB").tobytes()
    thumb_img = Image.open(io.BytesIO(storage.read(recs[thumb].result_key)))
    assert thumb_img.format == "WEBP" and thumb_img.size == (100, 200) and not thumb_img.getexif()


def test_poison_and_permanent_are_dead_lettered_while_good_ones_flow(rig):
    pub, store, storage, env, tmp = rig
    good_src = upload(storage, image_bytes("PNG", (40, 30), "green"))
    pub.publish_raw("image", b"\xff not json at all", "poison-1")
    pub.publish_raw("image", json.dumps({"v": 1, "task_id": "x"}).encode(), "poison-2")
    missing = pub.publish(pub.image(TENANT, "uploads/acme/nope.png"))
    corrupt_key = upload(storage, b"\x89PNG\r\n\x1a\n garbage")
    corrupt = pub.publish(pub.image(TENANT, corrupt_key))
    good = [pub.publish(pub.image(TENANT, good_src, width=10)) for _ in range(6)]
    with running_worker("image", env, tmp) as w:
        for t in [*good, missing, corrupt]:
            wait_for("task settled", lambda t=t: settled(store, t), 15)
        wait_for("4 dead letters", lambda: pub.depth(dead_queue_name("image")) == 4, 10)
        dead = lambda reason: w.metric("queueworker_worker_dead_letters_total", kind="image", reason=reason)  # noqa: E731
        wait_for("4 dead letters counted", lambda: (dead("undecodable"), dead("permanent")) == (2, 2), 10)
    assert all(store.get(t).status == "succeeded" for t in good)
    for t in (missing, corrupt):
        rec = store.get(t)
        assert rec.status == "failed" and rec.attempts == 1 and rec.error
    dead = pub.drain(dead_queue_name("image"))
    assert sorted(h[H_REASON] for h, _ in dead) == ["permanent", "permanent", "undecodable", "undecodable"]
    assert pub.depth(queue_name("image")) == 0


def test_sigterm_mid_task_finishes_the_task_in_hand_and_loses_nothing(rig):
    pub, store, storage, env, tmp = rig
    src = upload(storage, image_bytes("PNG", (40, 30), "green"))
    ids = [pub.publish(pub.image(TENANT, src, width=8)) for _ in range(3)]
    slow = {**env, "QW_TEST_TASK_DELAY": "2", "QW_PREFETCH": "1", "QW_GRACE_PERIOD": "8"}
    with running_worker("image", slow, tmp) as w:
        wait_for("a task in hand", lambda: any(store.get(t).status == "processing" for t in ids), 10)
        w.signal(signal.SIGTERM)
        wait_for("not ready after SIGTERM", lambda: not w.is_ready(), 3)
        assert w.wait(8) == 0, w.log()
        done = [t for t in ids if store.get(t).status == "succeeded"]
        assert len(done) == 1, "the task in hand finished; nothing new was started"
    # Its ack reached the broker: exactly the two others are left (a closed channel's unacked messages return to
    # the queue on the broker's schedule: wait for them), and a new worker never sees the first again.
    depth = lambda: pub.depth(queue_name("image"))  # noqa: E731
    wait_for("the two others back on the queue", lambda: depth() == 2, 5, state=depth)
    with running_worker("image", env, tmp) as w2:
        for t in ids:
            wait_for("task settled", lambda t=t: settled(store, t), 15)
        # The outcome is counted after the ack: wait for both successes to be counted, then no duplicate was.
        outcome = lambda o: w2.metric("queueworker_worker_tasks_processed_total", kind="image", outcome=o)  # noqa: E731
        wait_for("2 successes counted", lambda: outcome("succeeded") == 2, 10, state=lambda: outcome("succeeded"))
        assert outcome("duplicate") == 0
    assert all(store.get(t).completions == 1 and store.get(t).status == "succeeded" for t in ids)


def test_sigkill_mid_task_is_redelivered_and_completed_once(rig):
    pub, store, storage, env, tmp = rig
    src = upload(storage, image_bytes("PNG", (40, 30), "green"))
    task = pub.publish(pub.image(TENANT, src, width=8))
    with running_worker("image", {**env, "QW_TEST_TASK_DELAY": "30"}, tmp) as w:
        wait_for("task in hand", lambda: store.get(task).status == "processing", 10)
        w.signal(signal.SIGKILL)
        w.wait(5)
    assert store.get(task).status == "processing"
    with running_worker("image", env, tmp):
        rec = wait_for("redelivered task settled", lambda: settled(store, task), 15)
    assert rec.status == "succeeded" and rec.completions == 1
    assert len(list((tmp / "storage" / "results" / TENANT).iterdir())) == 1


def test_long_task_keeps_heartbeats_no_redelivery(rig, broker):
    pub, store, storage, env, tmp = rig
    src = upload(storage, image_bytes("PNG", (40, 30), "green"))
    task = pub.publish(pub.image(TENANT, src, width=8))
    env = {**env, "QW_HEARTBEAT": "5", "QW_TEST_TASK_DELAY": "12"}
    with running_worker("image", env, tmp) as w:
        rec = wait_for("long task settled", lambda: settled(store, task), 25, 0.2)
        assert w.metric("queueworker_worker_broker_connected", kind="image") == 1
        assert "connection lost" not in w.log()
    assert rec.status == "succeeded" and rec.completions == 1 and rec.attempts == 1


def test_task_that_keeps_killing_its_workers_ends_dead_not_processing(rig):
    """Given a message the broker already returned `delivery_limit` times (its consumers died), the worker
    dead-letters it on the last chance and says why, instead of letting the broker drop it silently."""
    pub, store, storage, env, tmp = rig
    task_id = pub.publish(pub.image(TENANT, upload(storage, image_bytes("PNG", (40, 30), "green")), "PNG", width=10))
    limit = 10  # the topology's x-delivery-limit (queue arguments cannot change once declared)
    for _ in range(limit):  # each crash of a consumer returns the message (x-delivery-count + 1)
        method = wait_for("delivery", lambda: pub.ch.basic_get(queue_name("image"), auto_ack=False)[0])
        pub.ch.basic_nack(method.delivery_tag, requeue=True)
    with running_worker("image", {**env, "QW_DELIVERY_LIMIT": str(limit)}, tmp / "logs"):
        rec = wait_for("the task to settle", lambda: settled(store, task_id), 20)
        # The status is written before the dead-letter copy: wait for the copy before the worker is stopped.
        wait_for("the dead letter", lambda: pub.depth(dead_queue_name("image")) >= 1, 10)
    assert rec.status == "dead" and f"delivered {limit} times" in rec.error
    dead = pub.drain(dead_queue_name("image"))
    assert [h[H_REASON] for h, _ in dead] == ["delivery-limit"]
    assert not list((tmp / "storage").glob("results/**/*.png"))  # the handler never ran
