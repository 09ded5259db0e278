"""Clients of the live status streams for tests: an SSE reader (a thread collecting frames) and WebSocket helpers."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import httpx


@dataclass
class Frame:
    event: str
    data: str
    id: str | None = None

    def json(self) -> Any:
        return json.loads(self.data)


def parse_frames(lines: Iterator[str]) -> Iterator[Frame | str]:
    """SSE frames from lines; a comment line (`: keep-alive`) comes through as its text."""
    event, data, ident = "message", [], None
    for line in lines:
        if line.startswith(":"):
            yield line
        elif line == "":
            if data:
                yield Frame(event, "\n".join(data), ident)
            event, data, ident = "message", [], None
        else:
            name, _, value = line.partition(":")
            value = value[1:] if value.startswith(" ") else value
            if name == "event":
                event = value
            elif name == "data":
                data.append(value)
            elif name == "id":
                ident = value


@dataclass
class SseReader:
    """Reads one SSE stream in a thread: `frames` (status and other events), `comments`, `opened` once 200."""

    base: str
    path: str
    key: str = "key-acme"
    headers: dict[str, str] = field(default_factory=dict)
    frames: list[Frame] = field(default_factory=list)
    comments: list[str] = field(default_factory=list)
    status: int | None = None
    ended: bool = False
    opened: threading.Event = field(default_factory=threading.Event)

    def __post_init__(self) -> None:
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def start(self) -> SseReader:
        self._thread.start()
        return self

    def statuses(self, task_id: str | None = None) -> list[dict[str, Any]]:
        views = [f.json() for f in list(self.frames) if f.event == "status"]
        return [v for v in views if task_id is None or v["task_id"] == task_id]

    def _run(self) -> None:
        headers = {"Authorization": f"Bearer {self.key}", **self.headers}
        try:
            with httpx.Client(base_url=self.base, timeout=httpx.Timeout(60, read=120)) as http:
                with http.stream("GET", self.path, headers=headers) as r:
                    self.status = r.status_code
                    self.opened.set()
                    if r.status_code != 200:
                        return
                    for item in parse_frames(r.iter_lines()):
                        if self._stop.is_set():
                            return
                        if isinstance(item, Frame):
                            self.frames.append(item)
                        else:
                            self.comments.append(item)
        except httpx.HTTPError:
            pass
        finally:
            self.ended = True
            self.opened.set()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(5)


@contextmanager
def sse(base: str, path: str, key: str = "key-acme", **headers: str) -> Iterator[SseReader]:
    """An SseReader running for the block, once its stream answered (its `comments` show `: subscribed` for a
    tenant stream, so nothing after that is missed)."""
    reader = SseReader(base, path, key, headers).start()
    try:
        assert reader.opened.wait(30), "the event stream did not answer"
        yield reader
    finally:
        reader.stop()


def ws_url(base: str, query: str = "") -> str:
    return base.replace("http://", "ws://") + "/v1/ws" + (f"?{query}" if query else "")
