"""The publish benchmarks' load generator (bench/loadgen-go, built by the Go toolchain): what it sends, byte for
byte, and how it counts. Behaviour only, never its speed. The server is a plain socket that answers each request
with a fixed status after reading exactly one request's bytes."""

from __future__ import annotations

import contextlib
import socket
import threading
from collections.abc import Iterator

import pytest

from bench.loadgen import Request, closed_loop, open_loop
from bench.publish import EMAIL_REQUEST

pytestmark = pytest.mark.integration

# What the Python generator (bench/loadgen.py before the Go one) sent for POST /v1/emails, byte for byte
SENT_BEFORE = (
    b"POST /v1/emails HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 64\r\nContent-Type: application/json\r\n"
    b"Authorization: Bearer bench-key\r\n\r\n"
    b'{"to": "bench@example.com", "subject": "bench", "text": "hello"}'
)


class Server:
    """Reads one request of `size` bytes at a time on each connection and answers `status` with a small body."""

    def __init__(self, size: int, status: int) -> None:
        self.size, self.status = size, status
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.received: list[bytes] = []
        self.connections = 0
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.connections += 1
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        body = b'{"ok": true}'
        answer = f"HTTP/1.1 {self.status} X\r\ncontent-type: application/json\r\ncontent-length: {len(body)}\r\n\r\n"
        with conn, contextlib.suppress(OSError):  # the client closing its connections ends this
            while True:
                data = b""
                while len(data) < self.size:
                    chunk = conn.recv(self.size - len(data))
                    if not chunk:
                        return
                    data += chunk
                self.received.append(data)
                conn.sendall(answer.encode() + body)


@pytest.fixture
def servers() -> Iterator[list[Server]]:
    made = [Server(len(SENT_BEFORE), 202), Server(len(SENT_BEFORE), 202)]
    yield made
    for s in made:
        s.sock.close()


def test_every_request_is_the_bytes_the_python_generator_sent_and_connections_go_round_robin(servers):
    out = closed_loop([s.port for s in servers], EMAIL_REQUEST, 4, 0.5)
    received = [r for s in servers for r in s.received]
    assert received and set(received) == {SENT_BEFORE}
    assert [s.connections for s in servers] == [2, 2]  # 4 connections over 2 ports
    assert out["requests"] == out["ok"] == len(received) == out["statuses"]["202"], out
    assert out["errors"] == 0 and out["p50_ms"] <= out["p99_ms"], out


def test_an_answer_other_than_ok_counts_as_an_error_by_its_status():
    sent = b"POST /send-task HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 2\r\nContent-Type: application/json\r\n\r\n"
    sent += b"{}"
    server = Server(len(sent), 200)
    out = closed_loop(server.port, Request("/send-task", b"{}"), 1, 0.3, ok=202)
    server.sock.close()
    assert set(server.received) == {sent}
    assert out["requests"] > 0 and out["ok"] == 0 and out["errors"] == out["statuses"]["200"] == out["requests"]


def test_the_open_loop_sends_rate_times_seconds_and_a_refused_connection_is_an_error(servers):
    out = open_loop(servers[0].port, EMAIL_REQUEST, 200, 0.5)
    assert (out["requests"], out["ok"], out["errors"]) == (100, 100, 0), out
    assert len(servers[0].received) == 100
    closed = socket.create_server(("127.0.0.1", 0))
    port = closed.getsockname()[1]
    closed.close()  # nothing listens there now
    out = open_loop(port, EMAIL_REQUEST, 100, 0.2)
    assert (out["requests"], out["errors"], out["p99_ms"]) == (0, 20, None), out
