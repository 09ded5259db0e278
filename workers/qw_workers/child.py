"""Sync bodies with a hard time limit: each worker slot runs them in a long-lived child process of its own.

A thread cannot be stopped from outside, so a plain function with `time_limit` runs in a child process: one per
worker thread (slot), started on the slot's first task, importing the task's module once and reused for every later
task. The slot's thread waits on the pipe for at most the limit; on overrun it stops the child (SIGTERM, SIGKILL
after a short grace), reaps it and raises TimeLimitExceeded; a child that died on its own (a crash, os._exit, the
OOM killer) fails the attempt with TaskProcessDied. Either way the slot's next task gets a fresh child. The worker
process never runs such a body, so its I/O thread (heartbeats, acks) is untouched by a body that hangs or holds the
GIL.

What crosses the pipe (multiprocessing.connection framing, pickle): in, the payload's JSON arguments (the child
validates them again, so no user object is pickled); out, the result as JSON text (encoded in the child, with the
same size limit), or an exception as its type name, message, traceback and whether the kind retries it. The parent
raises an exception carrying that name which is permanent or retryable accordingly, so the retry policy decides
exactly as for an in-thread body. The child is `python -m qw_workers.child FD`: a plain subprocess (no
multiprocessing start method, no resource tracker); it ignores SIGINT (a Ctrl-C is the worker's to handle) and
exits when the worker does.
"""

from __future__ import annotations

import atexit
import importlib
import logging
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import traceback
import weakref
from multiprocessing.connection import Connection
from typing import Any

from qw_core.registry import InvalidPayload, TaskSpec, default_registry

from qw_workers.errors import PermanentError, RetryableError, TaskProcessDied, TimeLimitExceeded

log = logging.getLogger("qw_workers.child")

TERM_GRACE = 1.0  # seconds a child has to end after SIGTERM before SIGKILL
START_TIMEOUT = 60.0  # seconds a new child may take to import the task's module
_slots = threading.local()  # this thread's children, by kind
_alive: weakref.WeakSet[ChildProcess] = weakref.WeakSet()


class ChildRetryableError(RetryableError):
    """An exception the body raised in its child that the kind retries; `type_name` is the original class name."""

    def __init__(self, type_name: str, message: str) -> None:
        super().__init__(message)
        self.type_name = type_name


class ChildPermanentError(PermanentError):
    """An exception the body raised in its child that the kind does not retry (PermanentError, or not `retry_on`)."""

    def __init__(self, type_name: str, message: str) -> None:
        super().__init__(message)
        self.type_name = type_name


def run_in_child(spec: TaskSpec, args: dict[str, Any], max_result_bytes: int) -> str | None:
    """Run `spec`'s sync body with JSON `args` in this thread's child; the result as JSON text (see module doc)."""
    children: dict[str, ChildProcess] | None = getattr(_slots, "children", None)
    if children is None:
        children = _slots.children = {}
    child = children.get(spec.kind)
    if child is None:
        child = children[spec.kind] = ChildProcess(spec)
    return child.run(args, max_result_bytes)


class ChildProcess:
    """One slot's child for one kind: started on first use, replaced after it was stopped or died."""

    def __init__(self, spec: TaskSpec) -> None:
        assert spec.time_limit is not None
        self.spec = spec
        self.limit: float = spec.time_limit
        self.proc: subprocess.Popen[bytes] | None = None
        self._conn: Connection | None = None
        _alive.add(self)

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc is not None else None

    def run(self, args: dict[str, Any], max_result_bytes: int) -> str | None:
        conn = self._started()
        try:
            conn.send(("run", args, max_result_bytes))
            finished = conn.poll(self.limit)  # True also when the child died (EOF)
        except OSError:
            finished = True
        if not finished:
            self.stop()
            raise TimeLimitExceeded(f"the task ran longer than its time limit of {self.limit:g}s and was stopped")
        try:
            reply = conn.recv()
        except (EOFError, OSError):
            raise TaskProcessDied(f"the task's process {self._died()}") from None
        if reply[0] == "ok":
            result: str | None = reply[1]
            return result
        _, type_name, message, retried, remote_tb = reply
        error = (ChildRetryableError if retried else ChildPermanentError)(type_name, message)
        error.add_note(f"in the task's child process:\n{remote_tb}")
        raise error

    def stop(self) -> None:
        """SIGTERM, then SIGKILL after TERM_GRACE; reaped (no zombie stays behind)."""
        proc, conn, self.proc, self._conn = self.proc, self._conn, None, None
        if conn is not None:
            conn.close()
        if proc is None:
            return
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(TERM_GRACE)
            except subprocess.TimeoutExpired:
                proc.kill()
        proc.wait()

    def _started(self) -> Connection:
        if self.proc is not None and self.proc.poll() is not None:  # died while idle: not this task's doing
            log.warning("the task process for %s %s; starting another", self.spec.kind, self._died())
        if self.proc is not None and self._conn is not None:
            return self._conn
        ours, theirs = socket.socketpair()
        try:
            self.proc = subprocess.Popen(  # noqa: S603 - our own interpreter and module
                [sys.executable, "-m", "qw_workers.child", str(theirs.fileno())],
                pass_fds=(theirs.fileno(),),
                stdin=subprocess.DEVNULL,
            )
        finally:
            theirs.close()
        conn = self._conn = Connection(ours.detach())
        fn = self.spec.fn
        conn.send(("init", list(sys.path), fn.__module__, getattr(fn, "__qualname__", ""), self.spec.kind))
        if not conn.poll(START_TIMEOUT):
            self.stop()
            raise TaskProcessDied(f"the task's process did not start within {START_TIMEOUT:g}s")
        try:
            reply = conn.recv()
        except (EOFError, OSError):
            raise TaskProcessDied(f"the task's process {self._died()} while starting") from None
        if reply[0] != "ready":
            self.stop()
            raise TaskProcessDied(f"the task's process could not load the task: {reply[1]}")
        return conn

    def _died(self) -> str:
        """How the child ended (it is reaped here), for the error text."""
        proc, conn, self.proc, self._conn = self.proc, self._conn, None, None
        if conn is not None:
            conn.close()
        if proc is None:
            return "is gone"
        try:
            code = proc.wait(TERM_GRACE)
        except subprocess.TimeoutExpired:  # the pipe broke but the process lingers: make sure it is gone
            proc.kill()
            code = proc.wait()
        if code < 0:
            name = signal.Signals(-code).name
            hint = " (out of memory?)" if name == "SIGKILL" else ""
            return f"was killed by {name}{hint}"
        return f"exited with code {code}"


@atexit.register
def _stop_all() -> None:
    """The worker is exiting: its children go too (a child also exits on its own once its parent is gone)."""
    for child in list(_alive):
        child.stop()


# --- the child's side -----------------------------------------------------------------------------------------


def _find_spec(module: str, qualname: str, kind: str) -> TaskSpec:
    """The kind's spec after importing its module: the process's registry, else the module's attribute."""
    mod = importlib.import_module(module)
    spec = default_registry.get(kind)
    if spec is None:
        found = getattr(getattr(mod, qualname, None), "spec", None)
        spec = found if isinstance(found, TaskSpec) and found.kind == kind else None
    if spec is None:
        raise LookupError(f"task kind {kind!r} is not defined by importing module {module!r}")
    return spec


def _outcome(spec: TaskSpec, args: dict[str, Any], max_result_bytes: int) -> tuple[Any, ...]:
    from qw_workers.handlers import encode_result  # here: the parent imports this module from there

    try:
        value = spec.fn(**dict(spec.validate(args)))
        return ("ok", encode_result(value, max_result_bytes))
    except Exception as exc:
        permanent = isinstance(exc, (PermanentError, InvalidPayload))
        retried = not permanent and isinstance(exc, (RetryableError, *spec.policy.retry_on))
        return ("raised", type(exc).__name__, str(exc), retried, traceback.format_exc())


def _watch_parent(parent: int) -> None:
    """Exit once the worker is gone (it may have exited without stopping us, e.g. after its grace period)."""
    while os.getppid() == parent:
        time.sleep(0.5)
    os._exit(1)


def main(fd: int) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    threading.Thread(target=_watch_parent, args=(os.getppid(),), name="qw-watch-parent", daemon=True).start()
    conn = Connection(fd)
    _, path, module, qualname, kind = conn.recv()
    sys.path[:] = path
    try:
        spec = _find_spec(module, qualname, kind)
    except Exception as exc:
        conn.send(("error", f"{type(exc).__name__}: {exc}"))
        return
    conn.send(("ready",))
    while True:
        try:
            _, args, max_result_bytes = conn.recv()
        except EOFError:
            return
        conn.send(_outcome(spec, args, max_result_bytes))


if __name__ == "__main__":
    main(int(sys.argv[1]))
