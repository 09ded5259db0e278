#!/usr/bin/env python3
"""A three-node RabbitMQ cluster of the host's binaries (Debian's 3.10) on 127.0.0.1, for failover tests.

    python3 scripts/rabbitmq_cluster.py up     # start, join, print the URLs; Ctrl-C destroys it

Each node is a `Broker` from scripts/rabbitmq.py with its own AMQP, management, Prometheus and Erlang
distribution ports. What makes them a cluster, and keeps them apart from the session broker (`qw@localhost`
on the default epmd):

- one private epmd for the three nodes (`ERL_EPMD_PORT`, listening on 127.0.0.1 only), run in the foreground
  as this process's child so `destroy()` can kill it (`epmd -kill` refuses while killed nodes are still listed);
- one shared cookie: every node and every CLI call runs with HOME set to the cluster's directory, which holds
  `.erlang.cookie`;
- node names `qwc<id>n<i>@localhost`, distinct per cluster;
- nodes 2 and 3 `stop_app`, `join_cluster` node 1, `start_app`.

Erlang's busy-waiting schedulers are turned off (`+sbwt none`): three VMs on two shared cores otherwise burn
CPU spinning. Stdlib only, so tests import it (`Cluster`).
"""

from __future__ import annotations

import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from rabbitmq import SBIN, Broker, free_broker_ports, port_open  # noqa: E402


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class ClusterNode(Broker):
    """A `Broker` that registers with the cluster's own epmd and reads the cluster's cookie."""

    epmd_port: int = 0
    home: Path = field(default_factory=Path)

    def env(self) -> dict[str, str]:
        return {
            **super().env(),
            "HOME": str(self.home),
            "ERL_EPMD_PORT": str(self.epmd_port),
            "ERL_EPMD_ADDRESS": "127.0.0.1",
            "RABBITMQ_SCHEDULER_BUSY_WAIT_THRESHOLD": "none",
            # Distribution listens on 127.0.0.1 only (the AMQP, management and Prometheus listeners are set
            # in rabbitmq.conf by Broker).
            "RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS": "-kernel inet_dist_use_interface {127,0,0,1}",
            "RABBITMQ_CTL_ERL_ARGS": "-kernel inet_dist_use_interface {127,0,0,1}",
        }

    @property
    def prometheus_url(self) -> str:
        return f"http://127.0.0.1:{self.prom_port}"


class Cluster:
    """Three (or `size`) joined nodes. `urls[i]`, `management_urls[i]`, `prometheus_urls[i]` belong to `nodes[i]`."""

    def __init__(self, base: Path | None = None, size: int = 3, name: str | None = None) -> None:
        self.name = name or f"qwc{secrets.token_hex(3)}"
        self.base = base or Path(tempfile.mkdtemp(prefix=f"{self.name}-"))
        self.home = self.base / "home"
        self.epmd_port = _free_port()
        self.nodes: list[ClusterNode] = []
        taken = {self.epmd_port}
        for i in range(1, size + 1):
            while True:
                ports = free_broker_ports()
                if not taken & {*ports, ports[0] + 20000}:
                    break
            taken |= {*ports, ports[0] + 20000}
            amqp, mgmt, prom = ports
            self.nodes.append(
                ClusterNode(
                    name=f"{self.name}n{i}",
                    port=amqp,
                    mgmt_port=mgmt,
                    prom_port=prom,
                    base=self.base,
                    epmd_port=self.epmd_port,
                    home=self.home,
                )
            )
        self.start_seconds: float | None = None
        self._epmd: subprocess.Popen[bytes] | None = None

    # --- addresses -------------------------------------------------------------------------------------

    @property
    def urls(self) -> list[str]:
        return [n.url for n in self.nodes]

    @property
    def management_urls(self) -> list[str]:
        return [n.management_url for n in self.nodes]

    @property
    def prometheus_urls(self) -> list[str]:
        return [n.prometheus_url for n in self.nodes]

    def node(self, nodename: str) -> ClusterNode:
        """The node with this Erlang name (the `node` field of the management API's objects)."""
        return next(n for n in self.nodes if n.nodename == nodename)

    def running_nodes(self) -> list[ClusterNode]:
        return [n for n in self.nodes if n.running()]

    # --- life cycle ----------------------------------------------------------------------------------

    def start(self, timeout: float = 180) -> float:
        """Start every node, join them to the first; returns the seconds it took (about 25 s here).

        Nodes boot in parallel; the others' `stop_app` and `start_app` run in parallel too (each takes seconds),
        only the `join_cluster` calls go one at a time."""
        t0 = time.monotonic()
        self.home.mkdir(parents=True, exist_ok=True)
        cookie = self.home / ".erlang.cookie"
        cookie.write_text(secrets.token_hex(16))
        cookie.chmod(0o400)
        self._start_epmd()

        def boot(node: ClusterNode) -> None:
            if node.running():
                raise RuntimeError(f"port {node.port} answers already: not our node")
            node.start(timeout)

        first, others = self.nodes[0], self.nodes[1:]
        _in_parallel(boot, self.nodes)
        _in_parallel(lambda n: self._ctl(n, "stop_app"), others)
        for node in others:
            self._ctl(node, "join_cluster", first.nodename)
        _in_parallel(lambda n: self._ctl(n, "start_app"), others)
        for node in others:
            node.wait_ready(timeout)
        self.wait_clustered(timeout=60)
        self.start_seconds = time.monotonic() - t0
        return self.start_seconds

    @staticmethod
    def _ctl(node: ClusterNode, *args: str) -> None:
        r = node.ctl(*args, timeout=120)
        if r.returncode != 0:
            raise RuntimeError(f"{node.nodename}: rabbitmqctl {' '.join(args)} failed:\n{r.stdout}\n{r.stderr}")

    def wait_clustered(self, timeout: float = 60) -> None:
        """Until every node's management API lists all nodes as running."""
        want = {n.nodename for n in self.nodes}
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                if all(
                    {x["name"] for x in n.api("/api/nodes") if x.get("running")} == want  # type: ignore[attr-defined]
                    for n in self.nodes
                ):
                    return
            except OSError:
                pass
            time.sleep(0.3)
        raise TimeoutError(f"cluster {self.name} not formed after {timeout}s")

    def kill9(self, node: ClusterNode) -> float:
        """SIGKILL the node's Erlang VM (data kept); returns the monotonic time of the kill."""
        pid = node._pid()
        if pid is None:
            raise RuntimeError(f"no pid for {node.nodename}")
        t = time.monotonic()
        os.kill(pid, signal.SIGKILL)
        deadline = t + 30
        while node.running() and time.monotonic() < deadline:
            time.sleep(0.05)
        return t

    def restart(self, node: ClusterNode, timeout: float = 120) -> float:
        """Start a killed (or stopped) node again; it rejoins the cluster from its own data. Returns seconds."""
        t0 = time.monotonic()
        node.restart_after_crash(timeout)
        self.wait_clustered(timeout)
        return time.monotonic() - t0

    def destroy(self) -> None:
        """Kill every node (throwaway data: no graceful shutdown needed, and it takes 20 s less), then the
        cluster's epmd, and delete the cluster's directory. Safe to call twice, and after a failed start."""
        for node in self.nodes:
            if node.ours():
                _kill_node(node)
        deadline = time.monotonic() + 30
        while any(n.ours() and n.running() for n in self.nodes) and time.monotonic() < deadline:
            time.sleep(0.1)
        for node in self.nodes:
            node._marker.unlink(missing_ok=True)
        self._stop_epmd()
        shutil.rmtree(self.base, ignore_errors=True)

    def _start_epmd(self) -> None:
        """The nodes find it running on ERL_EPMD_PORT and do not start their own (a daemon nobody would stop)."""
        epmd = shutil.which("epmd") or str(SBIN / "epmd")
        self._epmd = subprocess.Popen(
            [epmd, "-port", str(self.epmd_port), "-address", "127.0.0.1"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
        deadline = time.monotonic() + 10
        while not port_open(self.epmd_port) and time.monotonic() < deadline:
            if self._epmd.poll() is not None:
                raise RuntimeError(f"epmd on port {self.epmd_port} exited with {self._epmd.returncode}")
            time.sleep(0.05)

    def _stop_epmd(self) -> None:
        if self._epmd is not None and self._epmd.poll() is None:
            self._epmd.kill()
            self._epmd.wait(10)


def _kill_node(node: ClusterNode) -> None:
    """SIGKILL the node's VM and its start script's process group (erl_child_setup, inet_gethost with it)."""
    try:
        wrapper = int(node._marker.read_text().strip())
    except (OSError, ValueError):
        wrapper = None
    for kill, pid in ((os.kill, node._pid()), (os.killpg, wrapper)):
        if pid:
            try:
                kill(pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass


def _in_parallel(fn: Callable[[ClusterNode], object], nodes: list[ClusterNode]) -> None:
    """fn(node) for every node at once; the first error is raised here."""
    errors: list[BaseException] = []

    def run(node: ClusterNode) -> None:
        try:
            fn(node)
        except BaseException as exc:  # reported on the calling thread
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(n,)) for n in nodes]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise errors[0]


def main() -> int:
    cluster = Cluster()
    try:
        seconds = cluster.start()
        print(f"cluster {cluster.name} up in {seconds:.1f}s")
        for n in cluster.nodes:
            print(f"  {n.nodename}: {n.url}  {n.management_url}  {n.prometheus_url}")
        print("QW_RABBITMQ_URL=" + ",".join(cluster.urls))
        signal.sigwait({signal.SIGINT, signal.SIGTERM})
    except KeyboardInterrupt:
        pass
    finally:
        cluster.destroy()
    return 0


if __name__ == "__main__":
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT, signal.SIGTERM})
    sys.exit(main())
