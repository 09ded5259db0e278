"""Process helpers the control plane (cluster.py) and the real node (real_node.py) share. Standard library only."""

from __future__ import annotations

import ctypes
import signal
import socket
from pathlib import Path


def kill_with_parent() -> None:
    """Runs in the child before exec: the kernel kills it when the test process dies, however that dies.
    SIGKILL, not SIGTERM: the API server's graceful shutdown hangs while etcd is going away too."""
    PR_SET_PDEATHSIG = 1
    ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def tail(path: Path, lines: int = 40) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"
