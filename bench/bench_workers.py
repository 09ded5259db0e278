#!/usr/bin/env python3
"""Images/s through the whole image-worker path versus a bare Pillow loop on the same images, same run.

    python bench/bench_workers.py --images 200 [--concurrency 1] [--size 1024x768] [--amqp-port 5672]

Worker path: decode (bomb-safe) -> EXIF transpose -> fit -> encode -> atomic write to storage ->
status write (SQLite) -> ack, consuming from a real RabbitMQ (a throwaway vhost on the local broker)
with the runtime's own thread model. Bare loop: Image.open -> thumbnail -> save, in one thread.
Prints one JSON object.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import sys
import tempfile
import threading
import time
import urllib.parse
import uuid
from pathlib import Path

import pika
from PIL import Image

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "scripts"))

from qw_core.messages import ImageOptions, ImageTask, TaskMessage, new_task_id, utcnow  # noqa: E402
from qw_core.settings import WorkerSettings  # noqa: E402
from qw_core.storage import LocalStorage, Storage  # noqa: E402
from qw_core.store import open_store  # noqa: E402
from qw_core.topology import H_ATTEMPT, TASKS_EXCHANGE, build_topology, declare_with_pika  # noqa: E402
from qw_workers.builtins import worker_registry  # noqa: E402
from qw_workers.handlers import make_handler  # noqa: E402
from qw_workers.runtime import Worker  # noqa: E402
from rabbitmq import Broker  # noqa: E402


def make_images(n: int, size: tuple[int, int]) -> list[bytes]:
    base = Image.frombytes("RGB", size, os.urandom(size[0] * size[1] * 3)).resize(size)
    out = []
    for i in range(n):
        buf = io.BytesIO()
        base.rotate(i % 360).save(buf, "JPEG", quality=90)
        out.append(buf.getvalue())
    return out


def bare_loop(images: list[bytes], side: int) -> float:
    start = time.perf_counter()
    for data in images:
        img = Image.open(io.BytesIO(data))
        img.thumbnail((side, side), Image.Resampling.LANCZOS)  # the same filter the worker uses
        img.save(io.BytesIO(), "JPEG", quality=85)
    return len(images) / (time.perf_counter() - start)


def worker_path(
    images: list[bytes], side: int, concurrency: int, broker: Broker, work: Path, storage: Storage | None = None
) -> float:
    """Images/s of one Worker thread on `storage` (a directory under `work` by default; bench_s3.py passes S3)."""
    vhost = f"bench-{uuid.uuid4().hex[:8]}"
    q = urllib.parse.quote(vhost, safe="")
    broker.api(f"/api/vhosts/{q}", "PUT", {})
    broker.api(f"/api/permissions/{q}/guest", "PUT", {"configure": ".*", "write": ".*", "read": ".*"})
    url = f"amqp://guest:guest@127.0.0.1:{broker.port}/{q}"
    try:
        settings = WorkerSettings(
            rabbitmq_url=url,
            database_url=f"sqlite:///{work}/bench.db",
            storage_dir=work / "storage",
            concurrency=concurrency,
            prefetch=max(4, 2 * concurrency),
            log_format="text",
        )
        store = open_store(settings.database_url)
        storage = storage or LocalStorage(settings.storage_dir)
        conn = pika.BlockingConnection(pika.URLParameters(url))
        ch = conn.channel()
        declare_with_pika(ch, build_topology(("image", "email"), settings.delivery_limit))
        ch.confirm_delivery()
        props = pika.BasicProperties(delivery_mode=2, content_type="application/json", headers={H_ATTEMPT: 0})
        for data in images:
            key = storage.new_key("uploads", "bench", "JPEG")
            storage.write(key, data)
            msg = TaskMessage(
                task_id=new_task_id(),
                tenant="bench",
                created_at=utcnow(),
                payload=ImageTask(source_key=key, source_format="JPEG", options=ImageOptions(width=side, height=side)),
            )
            store.create_pending(msg.task_id, msg.tenant, "image", key)
            ch.basic_publish(TASKS_EXCHANGE, "image", msg.to_bytes(), props, mandatory=True)
            store.confirm_queued(msg.task_id)
        conn.close()

        spec = worker_registry("").get("image")
        assert spec is not None
        worker = Worker("image", make_handler(spec), settings, store, storage, policy=spec.policy)
        thread = threading.Thread(target=worker.run, daemon=True)
        thread.start()
        while not worker.ready:  # connecting and declaring are start-up, not throughput
            time.sleep(0.001)
        start = time.perf_counter()
        while store.counts().get("succeeded", 0) < len(images):
            if time.perf_counter() - start > 600:
                raise TimeoutError(f"only {store.counts()} after 600s")
            time.sleep(0.05)
        elapsed = time.perf_counter() - start
        worker.request_stop()
        thread.join(30)
        store.close()
        return len(images) / elapsed
    finally:
        broker.api(f"/api/vhosts/{q}", "DELETE")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--images", type=int, default=200)
    p.add_argument("--concurrency", type=int, default=1)
    p.add_argument("--size", default="1024x768")
    p.add_argument("--side", type=int, default=256, help="output bound (px)")
    p.add_argument("--amqp-port", type=int, default=5672)
    p.add_argument("--mgmt-port", type=int, default=15672)
    a = p.parse_args()
    w, h = (int(x) for x in a.size.split("x"))
    broker = Broker(port=a.amqp_port, mgmt_port=a.mgmt_port)
    broker.wait_ready(30)
    images = make_images(a.images, (w, h))
    bare = bare_loop(images, a.side)
    with tempfile.TemporaryDirectory(prefix="qw-bench-") as tmp:
        worker = worker_path(images, a.side, a.concurrency, broker, Path(tmp))
    print(
        json.dumps(
            {
                "images": a.images,
                "input": a.size,
                "output_side": a.side,
                "concurrency": a.concurrency,
                "bare_pillow_images_per_s": round(bare, 1),
                "worker_images_per_s": round(worker, 1),
                "worker_to_bare_ratio": round(worker / bare, 3),
            }
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
