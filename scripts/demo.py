#!/usr/bin/env python3
"""`make demo`: upload a batch of generated photos to the running `make dev` platform and watch it work.

    make dev            # in one terminal
    make demo           # in another: 200 images; DEMO_ARGS="--count 50 --width 640" to change

One progress line shows the tasks by status, the image queue's depth and how many workers consume it (read over
AMQP, straight from the queue, so the line is live; the autoscaler reads the management API, a few seconds
behind), so you see workers go up as the backlog grows, the queue drain, and the workers go back down after the
cooldown. At the end it writes what it showed as a timeline picture (depth, workers, tasks by status; the JSON it
is drawn from beside it) and prints its path. Exits 0 when every image succeeded (and, unless
--no-wait-scale-down, the workers are back to zero); 1 otherwise.
"""

from __future__ import annotations

import argparse
import io
import os
import random
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pika
import pika.exceptions
from PIL import Image, ImageDraw

FINAL = ("succeeded", "failed", "dead")
STATUSES = ("queued", "processing", *FINAL)
ROOT = Path(__file__).resolve().parent.parent


def photo(i: int, size: tuple[int, int]) -> bytes:
    """A JPEG with enough structure (gradient, shapes) that resizing it is real work."""
    rnd = random.Random(i)
    w, h = size
    base = Image.linear_gradient("L").resize((w, h))
    img = Image.merge("RGB", (base, base.rotate(90), base.transpose(Image.Transpose.FLIP_LEFT_RIGHT)))
    draw = ImageDraw.Draw(img)
    for _ in range(12):
        x, y = rnd.randrange(w), rnd.randrange(h)
        r = rnd.randrange(20, max(21, w // 6))
        draw.ellipse((x - r, y - r, x + r, y + r), fill=tuple(rnd.randrange(256) for _ in range(3)))
    draw.text((10, 10), f"queueworker demo #{i}", fill=(255, 255, 255))
    buf = io.BytesIO()
    img.save(buf, "JPEG", quality=88)
    return buf.getvalue()


@dataclass
class Board:
    """What the demo knows: each task's last status, the queue as the broker reports it, the peak worker count."""

    status: dict[str, str] = field(default_factory=dict)
    depth: int | None = None
    workers: int | None = None
    peak_workers: int = 0
    rejected: int = 0
    timeline: dict[str, list[float | int]] = field(default_factory=dict)

    def sample(self, elapsed: float) -> None:
        """One point of the timeline picture, once the queue has been read."""
        if self.depth is None or self.workers is None:
            return
        c = self.counts()
        point = {"t_s": round(elapsed, 2), "depth": self.depth, "workers": self.workers}
        point.update({s: c.get(s, 0) for s in STATUSES})
        for k, v in point.items():
            self.timeline.setdefault(k, []).append(v)

    def counts(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for s in self.status.values():
            out[s] = out.get(s, 0) + 1
        return out

    def line(self, total: int, elapsed: float, width: int = 30) -> str:
        c = self.counts()
        done = sum(c.get(s, 0) for s in FINAL)
        filled = int(width * done / total) if total else width
        bar = "#" * filled + "." * (width - filled)
        parts = " ".join(f"{s} {c.get(s, 0)}" for s in STATUSES)
        q = "?" if self.depth is None else self.depth
        w = "?" if self.workers is None else self.workers
        return f"[{bar}] {done}/{total} {elapsed:5.1f}s | {parts} | queue {q} | workers {w}"


class Demo:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.http = httpx.Client(base_url=args.api, headers={"Authorization": f"Bearer {args.key}"}, timeout=30)
        self.board = Board()
        self.amqp: pika.BlockingConnection | None = None

    def upload(self, i: int, data: bytes) -> str:
        form = {"width": str(self.args.width), "format": self.args.format, "watermark": f"demo {i}"}
        for attempt in range(20):  # 503 + Retry-After means the broker is briefly unavailable: wait and retry
            r = self.http.post("/v1/images", files={"file": (f"demo-{i}.jpg", data, "image/jpeg")}, data=form)
            if r.status_code == 202:
                return str(r.json()["task_id"])
            if r.status_code not in (429, 503):
                raise SystemExit(f"upload {i} refused: {r.status_code} {r.text}")
            time.sleep(float(r.headers.get("Retry-After", 1)) * (1 + attempt / 10))
        raise SystemExit(f"upload {i}: the API kept answering {r.status_code}")

    def poll_task(self, task_id: str) -> None:
        r = self.http.get(f"/v1/tasks/{task_id}")
        if r.status_code == 200:
            self.board.status[task_id] = r.json()["status"]

    def poll_queue(self) -> None:
        """A passive declare answers with the queue's ready count and consumers as of now."""
        try:
            if self.amqp is None or self.amqp.is_closed:
                self.amqp = pika.BlockingConnection(pika.URLParameters(self.args.rabbitmq_url))
            q = self.amqp.channel().queue_declare(self.args.queue, passive=True).method
        except pika.exceptions.AMQPError:  # broker restarting, or the queue not declared yet: next time
            self.amqp = None
            return
        self.board.depth = int(q.message_count)
        self.board.workers = int(q.consumer_count)
        self.board.peak_workers = max(self.board.peak_workers, self.board.workers)

    def show(self, start: float, final: bool = False) -> None:
        line = self.board.line(self.args.count, time.monotonic() - start)
        if sys.stdout.isatty():
            sys.stdout.write("\r" + line + ("\n" if final else ""))
        else:
            print(line)
        sys.stdout.flush()

    def run(self) -> int:
        try:
            return self.watch()
        finally:
            if self.board.timeline:
                print(f"timeline: {self.picture()}", flush=True)

    def picture(self) -> Path:
        """The run as a PNG, drawn from the JSON written beside it (bench/plots, the benchmarks' pictures)."""
        sys.path.insert(0, str(ROOT))
        from bench.jsonfmt import dumps
        from bench.plots import machine, measured_now, save
        from bench.plots.timelines import demo_figure

        tl = self.board.timeline
        data = {"count": self.args.count, "queue": self.args.queue, "machine": machine(), "measured": measured_now(),
                "timeline": {"t_s": tl["t_s"], "depth": tl["depth"], "workers": tl["workers"],
                             "tasks": {s: tl[s] for s in STATUSES}}}  # fmt: skip
        png = Path(self.args.timeline or ROOT / ".run" / "demo" / time.strftime("demo-%Y%m%d-%H%M%S.png")).resolve()
        png.parent.mkdir(parents=True, exist_ok=True)
        png.with_suffix(".json").write_text(dumps(data) + "\n")
        return save(demo_figure(data), png)

    def watch(self) -> int:
        a = self.args
        print(f"generating {a.count} photos of {a.size[0]}x{a.size[1]} ...", flush=True)
        photos = [photo(i, a.size) for i in range(a.count)]
        start = time.monotonic()
        last_show = 0.0
        with ThreadPoolExecutor(a.parallel) as pool:
            uploads = [pool.submit(self.upload, i, p) for i, p in enumerate(photos)]
            pending = list(uploads)
            while pending:  # show the board while uploading: workers start before the last upload lands
                done = [f for f in pending if f.done()]
                for f in done:
                    self.board.status[f.result()] = "queued"
                pending = [f for f in pending if not f.done()]
                self.poll_queue()
                self.board.sample(time.monotonic() - start)
                if time.monotonic() - last_show >= a.every:
                    self.show(start)
                    last_show = time.monotonic()
                time.sleep(0.2)
            print(f"uploaded {a.count} images in {time.monotonic() - start:.1f}s", flush=True)
            deadline = start + a.timeout
            while time.monotonic() < deadline:
                open_ids = [t for t, s in self.board.status.items() if s not in FINAL]
                list(pool.map(self.poll_task, open_ids))
                self.poll_queue()
                self.board.sample(time.monotonic() - start)
                if time.monotonic() - last_show >= a.every or not open_ids:
                    self.show(start, final=not open_ids)
                    last_show = time.monotonic()
                if not open_ids:
                    break
                time.sleep(0.5)
        drained = time.monotonic() - start
        c = self.board.counts()
        ok = c.get("succeeded", 0) == a.count
        print(
            f"{c.get('succeeded', 0)}/{a.count} images succeeded, {c.get('failed', 0)} failed, "
            f"{c.get('dead', 0)} dead, in {drained:.1f}s; workers peaked at {self.board.peak_workers}",
            flush=True,
        )
        if ok and a.wait_scale_down:
            print("waiting for the workers to scale back down (cooldown) ...", flush=True)
            while time.monotonic() < deadline:
                self.poll_queue()
                self.board.sample(time.monotonic() - start)
                if self.board.workers == 0:
                    print(f"workers back to 0, {time.monotonic() - start - drained:.1f}s after the queue drained")
                    return 0
                if time.monotonic() - last_show >= a.every:
                    self.show(start)
                    last_show = time.monotonic()
                time.sleep(0.5)
            print("the workers did not scale back to zero before --timeout", flush=True)
            return 1
        return 0 if ok else 1


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--count", type=int, default=200, help="images to upload (default 200)")
    p.add_argument("--api", default=f"http://127.0.0.1:{os.environ.get('QW_API_PORT', '8000')}")
    p.add_argument("--key", default=os.environ.get("QW_API_KEYS", "dev-key:dev").split(",")[0].split(":")[0])
    p.add_argument("--size", default="1600x1200", help="WxH of the generated photos")
    p.add_argument("--width", type=int, default=320, help="resize target width")
    p.add_argument("--format", default="WEBP")
    p.add_argument("--parallel", type=int, default=8, help="concurrent uploads and status polls")
    p.add_argument("--every", type=float, default=1.0, help="seconds between progress lines")
    p.add_argument("--timeout", type=float, default=600)
    p.add_argument("--no-wait-scale-down", dest="wait_scale_down", action="store_false")
    p.add_argument("--rabbitmq-url", default=os.environ.get("QW_RABBITMQ_URL", "amqp://guest:guest@127.0.0.1:5672/"))
    p.add_argument("--queue", default="qw.image")
    p.add_argument("--timeline", help="where to write the timeline PNG (default .run/demo/demo-<time>.png)")
    args = p.parse_args(argv)
    w, _, h = args.size.partition("x")
    args.size = (int(w), int(h))
    if args.count < 1:
        p.error("--count must be at least 1")
    return args


def main(argv: list[str] | None = None) -> int:
    try:
        return Demo(parse(argv)).run()
    except httpx.ConnectError as exc:
        print(f"cannot reach the API ({exc}); is `make dev` running?", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
