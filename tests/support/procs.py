"""Child processes a test starts in their own session: stopped as a group (SIGTERM, then SIGKILL), so nothing they
spawned (make's children, uvicorn's workers) outlives the test."""

from __future__ import annotations

import os
import signal
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def stop_group(proc: subprocess.Popen, grace: float = 15) -> None:
    """SIGTERM to the process's group, SIGKILL after `grace` seconds; waits for the process either way."""
    if proc.poll() is not None:
        return
    os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(grace)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


@contextmanager
def background(cmd: str, env: dict[str, str], log: Path) -> Iterator[subprocess.Popen[bytes]]:
    """`bash -c cmd` from the repository root, output appended to `log`, stopped as a group at the end."""
    with open(log, "ab") as out:
        proc = subprocess.Popen(["bash", "-c", cmd], cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, start_new_session=True)  # fmt: skip
    try:
        yield proc
    finally:
        stop_group(proc, 20)
