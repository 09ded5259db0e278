"""Timelines of a real run, for its picture (bench/plots): a thread samples a probe at a fixed period and keeps each
value as a series, with the seconds since sampling started as `t_s`; and a PNG reader for the tests of pictures."""

from __future__ import annotations

import struct
import threading
import time
from collections.abc import Callable
from pathlib import Path
from types import TracebackType

import pika
import pika.exceptions


class Sampler:
    """`with Sampler(probe) as s:` calls probe() every `every` seconds until the block ends, once more at the end,
    then close(); a probe that raises (a broker restarting) or returns None skips that sample.
    `s.series()`: {"t_s": [...], key: [...] for each key the probe returns}."""

    def __init__(
        self,
        probe: Callable[[], dict[str, float | int] | None],
        every: float = 0.5,
        close: Callable[[], None] | None = None,
    ) -> None:
        self.probe, self.every, self.close = probe, every, close
        self.start = time.monotonic()
        self._samples: list[tuple[float, dict[str, float | int]]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> Sampler:
        self.start = time.monotonic()
        self._thread.start()
        return self

    def __exit__(self, *exc: type[BaseException] | BaseException | TracebackType | None) -> None:
        self._stop.set()
        self._thread.join(30)
        self._sample()  # the end state, as the run left it
        if self.close is not None:
            self.close()

    def _sample(self) -> None:
        try:
            values = self.probe()
        except Exception:  # noqa: BLE001 - a probe of real servers fails while one restarts: next sample
            return
        if values is not None:
            self._samples.append((round(time.monotonic() - self.start, 2), values))

    def _run(self) -> None:
        while not self._stop.is_set():
            self._sample()
            self._stop.wait(self.every)

    def series(self) -> dict[str, list[float | int]]:
        keys = self._samples[0][1].keys() if self._samples else ()
        out: dict[str, list[float | int]] = {"t_s": [t for t, _ in self._samples]}
        out.update({k: [v[k] for _, v in self._samples] for k in keys})
        return out


class QueueDepth:
    """A queue's ready count and consumers, live, from an AMQP passive declare (the management API lags by its
    statistics interval); reconnects after a broker restart."""

    def __init__(self, amqp_url: str, queue: str) -> None:
        self.url, self.queue = amqp_url, queue
        self._conn: pika.BlockingConnection | None = None
        self._chan: pika.adapters.blocking_connection.BlockingChannel | None = None

    def __call__(self) -> tuple[int, int]:
        try:
            if self._conn is None or self._conn.is_closed:
                self._conn = pika.BlockingConnection(pika.URLParameters(self.url))
            if self._chan is None or self._chan.is_closed:  # a passive declare of a missing queue closes it
                self._chan = self._conn.channel()
            q = self._chan.queue_declare(self.queue, passive=True).method
        except pika.exceptions.AMQPError:
            self.close()
            raise
        return int(q.message_count), int(q.consumer_count)

    def close(self) -> None:
        if self._conn is not None and self._conn.is_open:
            try:
                self._conn.close()
            except pika.exceptions.AMQPError:
                pass
        self._conn = self._chan = None


def png_size(path: Path) -> tuple[int, int]:
    """(width, height) from a PNG's header; raises unless the file starts as a PNG does (signature, IHDR first)."""
    head = path.read_bytes()[:24]
    assert head[:8] == b"\x89PNG\r\n\x1a\n", f"{path} is not a PNG: {head[:8]!r}"
    assert head[12:16] == b"IHDR", f"{path}: no IHDR chunk first"
    width, height = struct.unpack(">II", head[16:24])
    return width, height
