"""A real Kubernetes control plane for tests: etcd, kube-apiserver, kube-controller-manager,
kube-scheduler and kwok (one fake Node that turns scheduled pods Running), all on 127.0.0.1 (the API server on
every address, so the real node's pods reach it at the bridge gateway); opt-in, a real node beside it
(containerd + kubelet + kube-proxy + CoreDNS, real_node.py).

Standard library only (certificates come from the `openssl` CLI), so it runs before any venv exists.

    python3 tests/cluster/cluster.py up   [--dir .cluster] [--real-node]  # leaves it running, kubeconfig in DIR
    python3 tests/cluster/cluster.py down [--dir .cluster]                # also stops the node, restores the host
    python3 tests/cluster/cluster.py node-up|node-down [--dir .cluster]   # the real node alone, on a running one

From Python: `start(cluster_dir, bin_dir, real_node=False)` returns a `Cluster`; `stop(cluster_dir)` ends it.
Each component logs to DIR/logs/<name>.log; a failed start raises ClusterError with the log tail.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import ssl
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import real_node
from cluster_pki import PkiError, make_pki, write_kubeconfig
from procs import free_port, kill_with_parent, tail
from real_node import NodeError, RealNode

HERE = Path(__file__).resolve().parent
REPO = HERE.parent.parent
NODE_NAME = "kwok-node-0"
# kwok manages only nodes carrying this annotation, so it never touches a real node by mistake.
KWOK_ANNOTATION = ("kwok.x-k8s.io/node", "fake")
SERVICE_CIDR = real_node.SERVICE_CIDR
NODE_GATEWAY_IP = real_node.GATEWAY_IP  # the real node's bridge address: where its pods reach the API server
SA_ISSUER = "https://kubernetes.default.svc.cluster.local"


class ClusterError(RuntimeError):
    """The control plane did not come up (or a command against it failed); the message has the log tail."""


# Components this process started, so stop() can reap them without touching anyone else's children.
_CHILDREN: dict[int, subprocess.Popen[bytes]] = {}


def pinned_k8s_version() -> str:
    """The Kubernetes release the binaries are built from; build.sh is the single source."""
    match = re.search(r"^K8S_VERSION=(\S+)$", (HERE / "build.sh").read_text(), re.MULTILINE)
    assert match, "build.sh has no K8S_VERSION= line"
    return match.group(1)


def build(bin_dir: Path | None = None) -> Path:
    """Runs the cached build (seconds when nothing changed) and returns the directory of binaries."""
    env = dict(os.environ)
    if bin_dir is not None:
        env["QW_CLUSTER_BIN"] = str(bin_dir.resolve())
    subprocess.run(["bash", str(HERE / "build.sh")], check=True, env=env)
    return bin_dir or REPO / ".cluster" / "bin"


@dataclass
class Cluster:
    kubeconfig: Path
    bin_dir: Path
    server: str
    dir: Path
    env: dict[str, str] = field(default_factory=dict)
    node: RealNode | None = None  # the real node (containerd + kubelet), when started with one

    def _run(
        self, tool: str, args: tuple[str, ...], input: str | None, check: bool
    ) -> subprocess.CompletedProcess[str]:
        cmd = [str(self.bin_dir / tool), "--kubeconfig", str(self.kubeconfig), *args]
        proc = subprocess.run(cmd, input=input, capture_output=True, text=True, env={**os.environ, **self.env})
        if check and proc.returncode != 0:
            raise ClusterError(f"{' '.join(cmd)} exited {proc.returncode}:\n{proc.stdout}{proc.stderr}")
        return proc

    def kubectl(self, *args: str, input: str | None = None, check: bool = True) -> subprocess.CompletedProcess[str]:
        return self._run("kubectl", args, input, check)

    def helm(self, *args: str, input: str | None = None, check: bool = True) -> subprocess.CompletedProcess[str]:
        return self._run("helm", args, input, check)


def attach(kubeconfig: Path, bin_dir: Path) -> Cluster:
    """A Cluster for an already running control plane (e.g. one from `make cluster-up`)."""
    kubeconfig = kubeconfig.resolve()
    probe = Cluster(kubeconfig, bin_dir, "", kubeconfig.parent, _helm_env(kubeconfig.parent))
    server = probe.kubectl("config", "view", "--minify", "-o", "jsonpath={.clusters[0].cluster.server}").stdout
    probe.server = server.strip()
    probe.node = real_node.node_of(kubeconfig.parent)
    return probe


def _helm_env(cluster_dir: Path) -> dict[str, str]:
    # Keep helm's repositories and caches inside the cluster dir, never in the user's home.
    return {f"HELM_{kind}_HOME": str(cluster_dir / "helm" / kind.lower()) for kind in ("CACHE", "CONFIG", "DATA")}


# ---------------------------------------------------------------- processes


class _Supervisor:
    """Starts components in their own process groups and records them in DIR/state.json."""

    def __init__(self, cluster_dir: Path, bin_dir: Path, die_with_parent: bool) -> None:
        self.dir, self.bin_dir, self.die_with_parent = cluster_dir, bin_dir, die_with_parent
        self.logs = cluster_dir / "logs"
        self.logs.mkdir(parents=True, exist_ok=True)
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        self.state: dict[str, Any] = {"pids": {}}

    def spawn(self, name: str, args: list[str]) -> None:
        binary = self.bin_dir / name
        if not os.access(binary, os.X_OK):
            raise ClusterError(f"{binary} missing: run tests/cluster/build.sh")
        with open(self.logs / f"{name}.log", "ab") as log:
            log.write(f"# {binary} {' '.join(args)}\n".encode())
            log.flush()
            self.procs[name] = subprocess.Popen(
                [str(binary), *args],
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
                cwd=self.dir,
                preexec_fn=kill_with_parent if self.die_with_parent else None,
            )
        self.state["pids"][name] = self.procs[name].pid
        _CHILDREN[self.procs[name].pid] = self.procs[name]
        self.save()

    def save(self) -> None:
        (self.dir / "state.json").write_text(json.dumps(self.state, indent=2))

    def check_alive(self) -> None:
        for name, proc in self.procs.items():
            if proc.poll() is not None:
                raise ClusterError(
                    f"{name} exited with {proc.returncode}; {self.logs}/{name}.log ends:\n"
                    + tail(self.logs / f"{name}.log")
                )

    def wait(self, what: str, component: str, ready: Any, deadline: float) -> None:
        last_error = ""
        while time.monotonic() < deadline:
            self.check_alive()
            try:
                if ready():
                    return
            except (OSError, ValueError, KeyError, ssl.SSLError) as exc:
                last_error = repr(exc)
            time.sleep(0.25)
        log = self.logs / f"{component}.log"
        raise ClusterError(f"timed out waiting for {what} (last error: {last_error}); {log} ends:\n{tail(log)}")


class _Api:
    """Just enough of a client to probe the API server as the admin user."""

    def __init__(self, server: str, pki: Path) -> None:
        self.server = server
        self.ctx = ssl.create_default_context(cafile=str(pki / "ca.crt"))
        self.ctx.load_cert_chain(str(pki / "admin.crt"), str(pki / "admin.key"))

    def request(self, path: str, method: str = "GET", body: dict[str, Any] | None = None) -> tuple[int, bytes]:
        data = json.dumps(body).encode() if body is not None else None
        req = urllib.request.Request(  # noqa: S310 (our https server)
            self.server + path, data=data, method=method, headers={"Content-Type": "application/json"}
        )
        try:
            with urllib.request.urlopen(req, context=self.ctx, timeout=5) as resp:  # noqa: S310 (https only)
                return resp.status, resp.read()
        except urllib.error.HTTPError as err:
            return err.code, err.read()

    def get_json(self, path: str) -> dict[str, Any] | None:
        status, body = self.request(path)
        return json.loads(body) if status == 200 else None


def _http_ok(url: str, expect: bytes) -> bool:
    ctx = ssl.create_default_context()
    ctx.check_hostname, ctx.verify_mode = False, ssl.CERT_NONE  # probing our own localhost health port
    try:
        with urllib.request.urlopen(url, context=ctx, timeout=3) as resp:  # noqa: S310
            return resp.status == 200 and expect in resp.read()
    except urllib.error.URLError:
        return False


def _fake_node() -> dict[str, Any]:
    capacity = {"cpu": "32", "memory": "256Gi", "pods": "110"}
    return {
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {
            "name": NODE_NAME,
            "annotations": {KWOK_ANNOTATION[0]: KWOK_ANNOTATION[1], "node.alpha.kubernetes.io/ttl": "0"},
            "labels": {
                "kubernetes.io/hostname": NODE_NAME,
                "kubernetes.io/os": "linux",
                "kubernetes.io/arch": "amd64",
                "type": "kwok",
            },
        },
        "status": {"capacity": capacity, "allocatable": capacity},
    }


def _node_ready(api: _Api) -> bool:
    node = api.get_json(f"/api/v1/nodes/{NODE_NAME}")
    if not node:
        return False
    ready = any(c["type"] == "Ready" and c["status"] == "True" for c in node["status"].get("conditions", []))
    # The node-lifecycle controller lifts its not-ready taint a moment after Ready; until then nothing schedules.
    tainted = any(t["key"].startswith("node.kubernetes.io/") for t in node["spec"].get("taints", []))
    return ready and not tainted


def start(
    cluster_dir: Path, bin_dir: Path, timeout: float = 180.0, die_with_parent: bool = False, real_node: bool = False
) -> Cluster:
    """Starts the control plane in cluster_dir and returns once pods can be scheduled and run.
    die_with_parent: the components are killed when this process dies (a killed test run leaks nothing).
    real_node: also a real node (containerd + kubelet, see real_node.py), Ready before this returns."""
    started = time.monotonic()
    deadline = started + timeout
    cluster_dir = cluster_dir.resolve()
    bin_dir = bin_dir.resolve()
    if _running(cluster_dir):
        raise ClusterError(f"a cluster is already running in {cluster_dir}: stop it first")
    for stale in ("pki", "etcd-data", "logs", "state.json", "kubeconfig"):
        shutil.rmtree(cluster_dir / stale, ignore_errors=True)
        (cluster_dir / stale).unlink(missing_ok=True)
    pki = cluster_dir / "pki"
    # The real node's pods reach the API server at the bridge gateway (the `kubernetes` Service's endpoint).
    make_pki(pki, extra_sans=[f"IP:{NODE_GATEWAY_IP}"])
    sup = _Supervisor(cluster_dir, bin_dir, die_with_parent)
    ports = {name: free_port() for name in ("etcd", "etcd-peer", "apiserver", "kcm", "scheduler", "kwok")}
    server = f"https://127.0.0.1:{ports['apiserver']}"
    sup.state.update(ports=ports, server=server)
    for user in ("admin", "controller-manager", "scheduler", "kwok"):
        write_kubeconfig(cluster_dir / f"{user}.kubeconfig", pki, server, user)
    node = None
    try:
        _start_components(sup, pki, ports, server, deadline)
        if real_node:
            node = start_node(cluster_dir, bin_dir, die_with_parent, max(30.0, deadline - time.monotonic()))
    except BaseException:
        stop(cluster_dir, remove=False)
        raise
    shutil.copy(cluster_dir / "admin.kubeconfig", cluster_dir / "kubeconfig")
    (cluster_dir / "kubeconfig").chmod(0o600)
    print(f"cluster: ready in {time.monotonic() - started:.1f}s at {server}", file=sys.stderr)
    return Cluster(cluster_dir / "kubeconfig", bin_dir, server, cluster_dir, _helm_env(cluster_dir), node)


def start_node(cluster_dir: Path, bin_dir: Path, die_with_parent: bool = False, timeout: float = 120.0) -> RealNode:
    """Adds the real node to the control plane running in cluster_dir (see real_node.py)."""
    cluster_dir = cluster_dir.resolve()
    server = json.loads((cluster_dir / "state.json").read_text())["server"]
    return real_node.start_node(cluster_dir, server, bin_dir, die_with_parent, timeout)


def stop_node(cluster_dir: Path) -> list[str]:
    """Stops the real node of cluster_dir and restores the host (the control plane keeps running)."""
    return real_node.stop_node(cluster_dir)


def _start_components(sup: _Supervisor, pki: Path, ports: dict[str, int], server: str, deadline: float) -> None:
    d = sup.dir
    etcd_url, peer_url = f"http://127.0.0.1:{ports['etcd']}", f"http://127.0.0.1:{ports['etcd-peer']}"
    sup.spawn(
        "etcd",
        [
            "--name=default",
            f"--data-dir={d}/etcd-data",
            f"--listen-client-urls={etcd_url}",
            f"--advertise-client-urls={etcd_url}",
            f"--listen-peer-urls={peer_url}",
            f"--initial-advertise-peer-urls={peer_url}",
            f"--initial-cluster=default={peer_url}",
            "--unsafe-no-fsync=true",  # throwaway data: skipping fsync makes every API write much faster
        ],
    )
    sup.wait("etcd /health", "etcd", lambda: _http_ok(f"{etcd_url}/health", b'"health":"true"'), deadline)

    sup.spawn(
        "kube-apiserver",
        [
            f"--etcd-servers={etcd_url}",
            # All addresses: 127.0.0.1 for us, and the real node's bridge gateway (once a node creates it) for
            # pods. The advertised address is that gateway: the `kubernetes` Service's endpoint (reconciled by
            # the API server's lease reconciler), where kube-proxy sends 10.96.0.1:443. Unused without a node.
            "--bind-address=0.0.0.0",
            f"--advertise-address={NODE_GATEWAY_IP}",
            f"--secure-port={ports['apiserver']}",
            f"--tls-cert-file={pki}/apiserver.crt",
            f"--tls-private-key-file={pki}/apiserver.key",
            f"--client-ca-file={pki}/ca.crt",
            "--authorization-mode=Node,RBAC",
            "--enable-admission-plugins=NodeRestriction",
            f"--service-account-issuer={SA_ISSUER}",
            f"--service-account-key-file={pki}/sa.pub",
            f"--service-account-signing-key-file={pki}/sa.key",
            f"--service-cluster-ip-range={SERVICE_CIDR}",
            "--allow-privileged=true",
            f"--requestheader-client-ca-file={pki}/front-proxy-ca.crt",
            "--requestheader-allowed-names=front-proxy-client",
            "--requestheader-username-headers=X-Remote-User",
            "--requestheader-group-headers=X-Remote-Group",
            "--requestheader-extra-headers-prefix=X-Remote-Extra-",
            f"--proxy-client-cert-file={pki}/front-proxy-client.crt",
            f"--proxy-client-key-file={pki}/front-proxy-client.key",
            # logs/exec/port-forward on a real node: its InternalIP is the node IP on the pod bridge.
            f"--kubelet-client-certificate={pki}/apiserver-kubelet-client.crt",
            f"--kubelet-client-key={pki}/apiserver-kubelet-client.key",
            f"--kubelet-certificate-authority={pki}/ca.crt",
            "--kubelet-preferred-address-types=InternalIP,Hostname",
        ],
    )
    api = _Api(server, pki)
    sup.wait("kube-apiserver /readyz", "kube-apiserver", lambda: api.request("/readyz")[0] == 200, deadline)

    sup.spawn(
        "kube-controller-manager",
        [
            f"--kubeconfig={d}/controller-manager.kubeconfig",
            f"--authentication-kubeconfig={d}/controller-manager.kubeconfig",
            f"--authorization-kubeconfig={d}/controller-manager.kubeconfig",
            "--bind-address=127.0.0.1",
            f"--secure-port={ports['kcm']}",
            "--leader-elect=false",
            "--controllers=*",
            "--use-service-account-credentials=true",
            f"--service-account-private-key-file={pki}/sa.key",
            f"--root-ca-file={pki}/ca.crt",
            f"--cluster-signing-cert-file={pki}/ca.crt",
            f"--cluster-signing-key-file={pki}/ca.key",
        ],
    )
    sup.spawn(
        "kube-scheduler",
        [
            f"--kubeconfig={d}/scheduler.kubeconfig",
            f"--authentication-kubeconfig={d}/scheduler.kubeconfig",
            f"--authorization-kubeconfig={d}/scheduler.kubeconfig",
            "--bind-address=127.0.0.1",
            f"--secure-port={ports['scheduler']}",
            "--leader-elect=false",
        ],
    )
    stages = sorted((sup.bin_dir / "kwok-stages").glob("*.yaml"))
    if not stages:
        raise ClusterError(f"no kwok stage files in {sup.bin_dir / 'kwok-stages'}: run tests/cluster/build.sh")
    sup.spawn(
        "kwok",
        [
            f"--kubeconfig={d}/kwok.kubeconfig",
            *[f"--config={s}" for s in stages],
            "--manage-all-nodes=false",
            f"--manage-nodes-with-annotation-selector={'='.join(KWOK_ANNOTATION)}",
            f"--server-address=127.0.0.1:{ports['kwok']}",
            "--node-ip=127.0.0.1",
            "--cidr=10.244.0.1/16",
            "--node-lease-duration-seconds=40",
        ],
    )
    status, body = api.request("/api/v1/nodes", "POST", _fake_node())
    if status not in (201, 409):
        raise ClusterError(f"creating node {NODE_NAME}: HTTP {status} {body[:500]!r}")
    sup.wait(
        "kube-scheduler /healthz",
        "kube-scheduler",
        lambda: _http_ok(f"https://127.0.0.1:{ports['scheduler']}/healthz", b"ok"),
        deadline,
    )
    sup.wait(f"node {NODE_NAME} Ready and untainted", "kwok", lambda: _node_ready(api), deadline)
    sup.wait(
        "default ServiceAccount and kube-root-ca.crt",
        "kube-controller-manager",
        lambda: bool(
            api.get_json("/api/v1/namespaces/default/serviceaccounts/default")
            and api.get_json("/api/v1/namespaces/default/configmaps/kube-root-ca.crt")
        ),
        deadline,
    )


def _running(cluster_dir: Path) -> dict[str, int]:
    """Components recorded in state.json whose process still runs the binary it was started as."""
    try:
        pids: dict[str, int] = json.loads((cluster_dir / "state.json").read_text())["pids"]
    except (OSError, ValueError, KeyError):
        return {}
    alive = {}
    for name, pid in pids.items():
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")[0]
        except OSError:
            continue
        if cmdline.endswith(f"/{name}".encode()):  # not a recycled pid
            alive[name] = pid
    return alive


def stop(cluster_dir: Path, remove: bool = True, grace: float = 10.0) -> None:
    """Ends every component, newest first and one at a time (the API server shuts down cleanly only while
    etcd still answers), each as a whole process group. Removes the state; keeps logs/ unless remove."""
    cluster_dir = cluster_dir.resolve()
    real_node.stop_node(cluster_dir)  # first, while the API server still answers; restores the host
    for name, pid in reversed(list(_running(cluster_dir).items())):
        for sig, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, grace)):
            try:
                os.killpg(pid, sig)
            except ProcessLookupError:
                break
            deadline = time.monotonic() + wait
            while name in _running(cluster_dir) and time.monotonic() < deadline:
                _reap()
                time.sleep(0.05)
            if name not in _running(cluster_dir):
                break
    _reap()
    for item in (
        "etcd-data",
        "pki",
        "helm",
        "state.json",
        "kubeconfig",
        *[f"{u}.kubeconfig" for u in ("admin", "controller-manager", "scheduler", "kwok")],
        *(["logs", "node"] if remove else ["node/containerd", "node/kubelet"]),
    ):
        path = cluster_dir / item
        shutil.rmtree(path, ignore_errors=True) if path.is_dir() else path.unlink(missing_ok=True)


def _reap() -> None:
    """Collects the exited components this process started (the fixture's case): no zombies left behind."""
    for pid, proc in list(_CHILDREN.items()):
        if proc.poll() is not None:
            del _CHILDREN[pid]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("command", choices=["up", "down", "status", "node-up", "node-down"])
    parser.add_argument("--dir", type=Path, default=REPO / ".cluster", help="cluster state, logs and kubeconfig")
    parser.add_argument("--bin-dir", type=Path, default=None, help="binaries (default DIR/bin, built if needed)")
    parser.add_argument("--no-build", action="store_true", help="do not run build.sh first")
    parser.add_argument("--timeout", type=float, default=180.0)
    parser.add_argument("--real-node", action="store_true", help="also a real node: containerd + kubelet (root)")
    args = parser.parse_args(argv)
    bin_dir = args.bin_dir or args.dir / "bin"
    if args.command == "down":
        stop(args.dir)
        print(f"cluster: stopped, {args.dir} cleaned (binaries kept)")
        return 0
    if args.command == "node-down":
        for line in stop_node(args.dir):
            print(f"node: {line}")
        return 0
    if args.command == "node-up":
        try:
            node = start_node(args.dir, bin_dir)
        except NodeError as exc:
            print(f"node: failed to start: {exc}", file=sys.stderr)
            return 1
        print(f"node: {node.name} Ready, node IP / pod gateway {node.gateway_ip}, containerd {node.containerd_address}")
        return 0
    if args.command == "status":
        alive = _running(args.dir.resolve())
        print(json.dumps(alive) if alive else "cluster: not running")
        return 0 if alive else 1
    if _running(args.dir.resolve()):
        print(f"cluster: already running in {args.dir} (`down` first for a fresh one)")
        return 0
    if not args.no_build:
        build(bin_dir)
    try:
        cluster = start(args.dir, bin_dir, args.timeout, real_node=args.real_node)
    except (ClusterError, PkiError, NodeError) as exc:
        print(f"cluster: failed to start: {exc}", file=sys.stderr)
        return 1
    print(
        f"cluster: up at {cluster.server}\n  kubectl --kubeconfig {cluster.kubeconfig} get nodes\n"
        f"  export PATH={bin_dir.resolve()}:$PATH KUBECONFIG={cluster.kubeconfig}\n"
        f"  logs in {cluster.dir}/logs; stop with: python3 {Path(__file__)} down --dir {args.dir}"
    )
    if cluster.node:
        print(
            f"  real node {cluster.node.name}: node IP / pod gateway {cluster.node.gateway_ip}, "
            f"containerd {cluster.node.containerd_address} (ctr -n k8s.io images import ARCHIVE), "
            f"logs in {cluster.dir}/node/logs"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
