"""Run the project's images with podman as the chart runs them: uid 10001, read-only root, /tmp and /data/storage
the only writable paths, no capabilities, no privilege escalation. Containers use the host's network (only
127.0.0.1 is reached; no CNI bridge or iptables rule is made), so each service listens on a free port of 127.0.0.1."""

from __future__ import annotations

import os
import subprocess
import uuid
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

from images import Podman

TEST_LABEL = "dev.queueworker.test=images"
Result = subprocess.CompletedProcess[str]

CHART_LIKE = (
    "--network=host",
    "--user=10001:10001",
    "--read-only",
    "--read-only-tmpfs=false",  # podman's default tmpfs on /run and /var/tmp would hide writes the chart refuses
    "--tmpfs=/tmp:rw,size=64m,mode=1777",  # the chart's `tmp` emptyDir
    "--cap-drop=ALL",
    "--security-opt=no-new-privileges",
    f"--label={TEST_LABEL}",
)


def run(podman: Podman, image: str, *args: str, opts: Sequence[str] = (), timeout: float = 60) -> Result:
    """Run a container to its end, chart-like; what it printed and its exit code."""
    return podman("run", "--rm", *CHART_LIKE, *opts, image, *args, check=False, timeout=timeout)


@contextmanager
def container(
    podman: Podman, image: str, *args: str, env: dict[str, str], volumes: Sequence[str] = ()
) -> Iterator[str]:
    """A detached chart-like container, by name; its logs are printed and it is removed on the way out."""
    name = f"qw-test-{uuid.uuid4().hex[:10]}"
    opts = [*(f"--env={k}={v}" for k, v in env.items()), *(f"--volume={v}" for v in volumes)]
    podman("run", "--detach", f"--name={name}", *CHART_LIKE, *opts, image, *args)
    try:
        yield name
    finally:
        logs = podman("logs", name, check=False)
        print(f"--- {name} ({image}) ---\n{(logs.stdout + logs.stderr)[-3000:]}")
        podman("rm", "--force", "--time=5", name, check=False)


def stop(podman: Podman, name: str, timeout: int = 20) -> int:
    """SIGTERM, as the kubelet sends it, SIGKILL after `timeout` s; the container's exit code."""
    podman("stop", f"--time={timeout}", name, timeout=timeout + 30)
    return int(podman("inspect", "--format", "{{.State.ExitCode}}", name).stdout.strip())


def storage_volume(tmp_path: Path) -> Path:
    """The storage PVC: a directory uid 10001 can write (the chart's fsGroup)."""
    d = tmp_path / "storage"
    d.mkdir()
    os.chown(d, 10001, 10001)
    return d
