"""The real node (containerd + runc + CNI bridge + a kubelet from the pinned modules) beside kwok: what a
user relies on when our pods run for real. A pod of an image we build here (busybox-static as an OCI
archive, no registry) starts and turns Ready on its readiness probe, `kubectl logs`/`exec` work, deleting a
pod delivers SIGTERM, a PodSecurity `restricted` namespace admits and runs a hardened pod, a memory limit
OOM-kills, a pod reaches a server on the bridge gateway; with kube-proxy and CoreDNS, a pod resolves Service
names (full and short), reaches another pod through a ClusterIP Service by IP and by name, and reaches the API
server at kubernetes.default.svc with its ServiceAccount token; and stopping the node leaves the host as it was.

The node joins the session's control plane for this module only (or is the session's, under
QW_REAL_NODE=1). Figures go to bench/results/real-node.json. `make test-real` runs this file alone.
"""

from __future__ import annotations

import json
import os
import re
import socket
import statistics
import subprocess
import threading
import time
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cluster as control_plane
import pytest
import real_node

from tests.support.wait import wait_for

pytestmark = pytest.mark.e2e

REPO = Path(__file__).resolve().parents[2]
RESULTS = REPO / "bench" / "results" / "real-node.json"


# ---------------------------------------------------------------- the host, seen independently of real_node.py

VOLATILE_SYSCTL = re.compile(
    r"random/|ns_last_pid|pty/nr|_nr$|-nr$|/nr_|dentry-state|inode-state|file-nr|stat_interval|"
    r"fs/quota|tainted|sched_domain|perf_event_max|hung_task|kernel/keys/(gc_delay|persistent)|"
    r"net/ipv4/(tcp_mem|udp_mem|tcp_fastopen_key)|unprivileged_bpf|nf_conntrack_count"
)
# Another developer's podman/buildah on this machine creates its own chains, veths, netns and cgroups.
FOREIGN = re.compile(
    r"podman|buildah|libpod|NETAVARK|CNI-[0-9a-f]{20,}|CNI-FORWARD|CNI-ADMIN|netns-|/var/lib/containers"
)
COUNTERS = re.compile(r" \[\d+:\d+\]$")
WATCHED_DIRS = [
    "/run/containerd",
    "/run/netns",
    "/var/lib/cni",
    "/var/log/containers",
    "/var/log/pods",
    "/var/lib/kubelet",
    "/var/lib/containerd",
    "/etc/cni/net.d",
]


def host_fingerprint(node_dir: Path) -> dict[str, Any]:
    """What a kubelet, containerd, runc and the CNI plugins could leave on the host."""
    sysctls = {}
    tops = (
        "vm",
        "kernel",
        "net/ipv4",
        "net/ipv4/conf/all",
        "net/ipv4/conf/default",
        "net/ipv6/conf/all",
        "net/bridge",
        "net/netfilter",
    )
    for top in tops:
        # Per-interface entries come and go with veths (ours and others'): only the host-wide ones count.
        for dirpath, dirnames, filenames in os.walk(Path("/proc/sys", top)):
            dirnames[:] = (
                []
                if dirpath.endswith(("/net/ipv4/conf/all", "/default"))
                else [n for n in dirnames if n not in ("conf", "neigh", "route")]
            )
            for name in filenames:
                key = str(Path(dirpath, name).relative_to("/proc/sys"))
                if not VOLATILE_SYSCTL.search(key):
                    try:
                        sysctls[key] = Path(dirpath, name).read_text().strip()
                    except OSError:
                        pass
    iptables = []
    for tool in ("iptables-save", "ip6tables-save"):
        table = ""
        for line in subprocess.run([tool], capture_output=True, text=True).stdout.splitlines():
            if line.startswith("*"):
                table = line
            elif line.startswith((":", "-A")) and not FOREIGN.search(line):
                # Chain declarations carry counters; a table that only holds empty built-in chains is no change.
                iptables.append(f"{tool} {table} {COUNTERS.sub('', line)}")
    builtin = re.compile(r":(INPUT|OUTPUT|FORWARD|PREROUTING|POSTROUTING) ACCEPT$")
    iptables = [line for line in iptables if not builtin.search(line)]
    links = sorted(n for n in os.listdir("/sys/class/net") if not n.startswith("veth") and not FOREIGN.search(n))
    routes = sorted(
        f"{family} {line}"
        for family in ("-4", "-6")
        for line in subprocess.run(
            ["ip", family, "route", "show", "table", "all"], capture_output=True, text=True
        ).stdout.splitlines()
        if not FOREIGN.search(line) and "veth" not in line
    )
    mounts = sorted(
        point
        for line in Path("/proc/self/mountinfo").read_text().splitlines()
        if (point := line.split()[4]).startswith((str(node_dir), "/run/netns", "/run/containerd", "/var/lib/kubelet"))
        or "kubepods" in point
    )
    cgroups = sorted(str(p) for p in Path("/sys/fs/cgroup").glob("*/kube*"))
    files = sorted(
        str(p)
        for d in WATCHED_DIRS
        if Path(d).exists()
        for p in [Path(d), *Path(d).rglob("*")]
        if not FOREIGN.search(str(p))
    )
    procs = sorted(
        cmd
        for p in Path("/proc").iterdir()
        if p.name.isdigit()
        and str(node_dir).encode() in (cmd_b := _cmdline(p))
        and (cmd := cmd_b.decode(errors="replace"))
    )
    return {
        "sysctls": sysctls,
        "iptables": iptables,
        "links": links,
        "routes": routes,
        "mounts": mounts,
        "cgroups": cgroups,
        "files": files,
        "procs": procs,
    }


def _cmdline(p: Path) -> bytes:
    try:
        return (p / "cmdline").read_bytes().replace(b"\0", b" ")
    except OSError:
        return b""


def fingerprint_diff(before: dict[str, Any], after: dict[str, Any]) -> list[str]:
    diffs = []
    for key in before:
        if key == "sysctls":
            for name in sorted(set(before[key]) | set(after[key])):
                if before[key].get(name) != after[key].get(name):
                    diffs.append(f"sysctl {name}: {before[key].get(name)} -> {after[key].get(name)}")
        else:
            diffs += [f"{key} gone: {x}" for x in sorted(set(before[key]) - set(after[key]))]
            diffs += [f"{key} new: {x}" for x in sorted(set(after[key]) - set(before[key]))]
    return diffs


# ---------------------------------------------------------------- fixtures


@dataclass
class Node:
    cluster: control_plane.Cluster
    node: real_node.RealNode
    namespace: str
    host_dir: Path
    host_before: dict[str, Any] | None  # None when the node was the session's, started before this module
    figures: dict[str, Any] = field(default_factory=dict)
    pod_starts: list[float] = field(default_factory=list)

    def kubectl(self, *args: str, input: str | None = None, check: bool = True) -> subprocess.CompletedProcess[str]:
        return self.cluster.kubectl("-n", self.namespace, *args, input=input, check=check)

    def pod(self, name: str, container: dict[str, Any], **spec: Any) -> dict[str, Any]:
        container = {"name": "main", "image": real_node.BUSYBOX_IMAGE, "imagePullPolicy": "Never", **container}
        return {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {"name": name},
            "spec": {**real_node.POD_PLACEMENT, "containers": [container], "terminationGracePeriodSeconds": 30, **spec},
        }

    def get(self, name: str) -> dict[str, Any]:
        out: dict[str, Any] = json.loads(self.kubectl("get", "pod", name, "-o", "json").stdout)
        return out

    def run(self, manifest: dict[str, Any], ready: bool = False) -> dict[str, Any]:
        """Creates the pod and returns it once Running (or Ready); records create -> Running."""
        start = time.monotonic()
        self.kubectl("apply", "-f", "-", input=json.dumps(manifest))
        name = manifest["metadata"]["name"]

        def running() -> dict[str, Any] | None:
            pod = self.get(name)
            return pod if pod["status"].get("phase") in ("Running", "Succeeded", "Failed") else None

        pod = wait_for(f"pod {name} Running", running, 60, 0.05)
        self.pod_starts.append(time.monotonic() - start)
        if ready:
            self.kubectl("wait", "--for=condition=Ready", f"pod/{name}", "--timeout=60s")
        assert pod["spec"]["nodeName"] == real_node.NODE_NAME
        return pod


@pytest.fixture(scope="module")
def node(k8s_cluster: control_plane.Cluster, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Node]:
    host_dir = tmp_path_factory.mktemp("real-node-host")
    host_dir.chmod(0o777)  # the restricted pod's uid writes nothing here, but others may
    node_dir = k8s_cluster.dir.resolve() / "node"
    before = None
    started = time.monotonic()
    the_node = k8s_cluster.node
    if the_node is None:
        before = host_fingerprint(node_dir)
        the_node = control_plane.start_node(k8s_cluster.dir, k8s_cluster.bin_dir, die_with_parent=True)
    figures: dict[str, Any] = {"node_ready_s": round(time.monotonic() - started, 2)} if before else {}
    figures.update({k: round(v, 2) for k, v in real_node.timings_of(k8s_cluster.dir).items()})
    t = time.monotonic()
    archive = real_node.write_oci_archive(host_dir / "busybox.tar", {real_node.BUSYBOX_IMAGE: ["/bin/sh"]})
    assert real_node.BUSYBOX_IMAGE in real_node.load_image(the_node, archive)
    figures["image_build_and_import_s"] = round(time.monotonic() - t, 2)
    namespace = f"real-{uuid.uuid4().hex[:6]}"
    k8s_cluster.kubectl("create", "namespace", namespace)
    n = Node(k8s_cluster, the_node, namespace, host_dir, before, figures)
    try:
        yield n
    finally:
        k8s_cluster.kubectl("delete", "namespace", namespace, "--wait=false", check=False)
        if before is not None:
            control_plane.stop_node(k8s_cluster.dir)  # no-op when test_stop_restores_host already did
        _write_figures(n)


def _write_figures(n: Node) -> None:
    starts = sorted(n.pod_starts)
    figures = dict(n.figures)
    if starts:
        figures["pod_start_s"] = {
            "what": "kubectl apply -> phase Running, image present locally",
            "n": len(starts),
            "median": round(statistics.median(starts), 2),
            "max": round(starts[-1], 2),
        }
    info = (REPO / ".cluster" / "bin" / "kubelet").resolve().parent.parent / "BUILDINFO"
    match = re.search(r"kubelet_build_seconds=(\d+)", info.read_text()) if info.exists() else None
    if match:
        figures["kubelet_build_s"] = {
            "seconds": int(match.group(1)),
            "what": "go build of cmd/kubelet in build.sh's last uncached build (warm Go caches)",
        }
    for component in ("kube_proxy", "coredns"):
        match = re.search(rf"{component}_build_seconds=(\d+)", info.read_text()) if info.exists() else None
        if match:
            figures[f"{component}_build_s"] = {
                "seconds": int(match.group(1)),
                "what": f"go build of {component.replace('_', '-')} in build.sh's last uncached build",
            }
    figures["measured"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    print("\nreal node figures:", json.dumps(figures, indent=2))
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    # Merged: other suites (the chart on the real node, ...) keep their keys in the same file.
    try:
        merged = json.loads(RESULTS.read_text())
    except (OSError, ValueError):
        merged = {}
    merged.update(figures)
    RESULTS.write_text(json.dumps(merged, indent=2) + "\n")


# ---------------------------------------------------------------- tests


def test_pod_turns_ready_on_its_probe_and_logs_exec_work(node: Node) -> None:
    script = "echo started as $(id -u); mkdir -p /tmp/www; exec httpd -f -p 8080 -h /tmp/www"
    probe = {"httpGet": {"path": "/ready", "port": 8080}, "periodSeconds": 1, "failureThreshold": 1}
    pod = node.run(node.pod("web", {"command": ["sh", "-c", script], "readinessProbe": probe}))
    assert pod["status"]["podIP"].startswith("10.123.")
    # The probe is real: until /ready exists the kubelet's GET fails and the pod stays unready.
    time.sleep(2.5)
    conds = {c["type"]: c["status"] for c in node.get("web")["status"]["conditions"]}
    assert conds["Ready"] == "False", conds
    assert (
        node.kubectl("exec", "web", "--", "sh", "-c", "echo ok > /tmp/www/ready && cat /tmp/www/ready").stdout == "ok\n"
    )
    node.kubectl("wait", "--for=condition=Ready", "pod/web", "--timeout=30s")
    assert "started as 0" in node.kubectl("logs", "web").stdout
    node.kubectl("delete", "pod", "web", "--grace-period=1", "--wait=false")


def test_deleting_a_pod_delivers_sigterm(node: Node) -> None:
    out = node.host_dir / "sigterm"
    out.mkdir()
    script = "trap 'echo got SIGTERM > /out/term; exit 0' TERM; echo waiting; while true; do sleep 1 & wait $!; done"
    manifest = node.pod(
        "term",
        {"command": ["sh", "-c", script], "volumeMounts": [{"name": "out", "mountPath": "/out"}]},
        volumes=[{"name": "out", "hostPath": {"path": str(out), "type": "Directory"}}],
    )
    node.run(manifest)
    wait_for("the trap to be set", lambda: "waiting" in node.kubectl("logs", "term").stdout, 20)
    start = time.monotonic()
    node.kubectl("delete", "pod", "term", "--timeout=60s")  # waits until the pod is gone
    took = time.monotonic() - start
    assert (out / "term").read_text() == "got SIGTERM\n"
    assert took < 20, f"the pod took {took:.1f}s to go: it was killed at the 30s grace period, not on SIGTERM"


def test_restricted_namespace_admits_and_runs_a_hardened_pod(node: Node) -> None:
    ns = f"restricted-{uuid.uuid4().hex[:6]}"
    node.cluster.kubectl("create", "namespace", ns)
    node.cluster.kubectl("label", "namespace", ns, "pod-security.kubernetes.io/enforce=restricted")
    try:
        loose = node.pod("loose", {"command": ["true"]})
        denied = node.cluster.kubectl("-n", ns, "apply", "-f", "-", input=json.dumps(loose), check=False)
        assert denied.returncode != 0 and "violates PodSecurity" in denied.stderr, denied.stderr
        script = (
            "id -u; grep -E '^(CapEff|Seccomp):' /proc/self/status; "
            "touch /written 2>/dev/null && echo root-writable || echo root-read-only"
        )
        hardened = node.pod(
            "hardened",
            {
                "command": ["sh", "-c", script],
                "securityContext": {
                    "allowPrivilegeEscalation": False,
                    "capabilities": {"drop": ["ALL"]},
                    "readOnlyRootFilesystem": True,
                },
            },
            restartPolicy="Never",
            securityContext={
                "runAsNonRoot": True,
                "runAsUser": 10001,
                "runAsGroup": 10001,
                "seccompProfile": {"type": "RuntimeDefault"},
            },
        )
        node.cluster.kubectl("-n", ns, "apply", "-f", "-", input=json.dumps(hardened))

        def done() -> str:
            pod = json.loads(node.cluster.kubectl("-n", ns, "get", "pod", "hardened", "-o", "json").stdout)
            return str(pod["status"].get("phase")) if pod["status"].get("phase") in ("Succeeded", "Failed") else ""

        assert wait_for("the hardened pod to finish", done, 60) == "Succeeded"
        logs = node.cluster.kubectl("-n", ns, "logs", "hardened").stdout.split("\n")
        assert logs[0] == "10001"
        assert "CapEff:\t0000000000000000" in logs
        assert "Seccomp:\t2" in logs  # 2 = filter mode: the runtime's default profile is applied
        assert "root-read-only" in logs
    finally:
        node.cluster.kubectl("delete", "namespace", ns, "--wait=false", check=False)


def test_memory_limit_is_enforced(node: Node) -> None:
    # awk doubles a string until the kernel's OOM killer stops it at the cgroup limit.
    hog = {
        "command": ["awk", 'BEGIN { s = "x"; while (1) s = s s }'],
        "resources": {"limits": {"memory": "32Mi", "cpu": "500m"}, "requests": {"memory": "32Mi"}},
    }
    node.run(node.pod("hog", hog, restartPolicy="Never"))

    def terminated() -> dict[str, Any] | None:
        statuses = node.get("hog")["status"].get("containerStatuses", [])
        state = statuses[0].get("state", {}) if statuses else {}
        return state.get("terminated")

    term = wait_for("the memory hog to be stopped", terminated, 60)
    assert term["reason"] == "OOMKilled" and term["exitCode"] == 137, term
    node.kubectl("delete", "pod", "hog", "--wait=false")


def test_pod_reaches_a_server_on_the_bridge_gateway(node: Node) -> None:
    seen: list[str] = []
    server = socket.create_server((node.node.gateway_ip, 0))
    port = server.getsockname()[1]
    server.settimeout(60)

    def serve() -> None:
        try:
            conn, peer = server.accept()
        except OSError:
            return
        with conn:
            seen.append(peer[0])
            conn.sendall(b"pong from the host\n")

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        script = f"echo ping | nc -w 5 {node.node.gateway_ip} {port}"
        node.run(node.pod("client", {"command": ["sh", "-c", script]}, restartPolicy="Never"))
        thread.join(30)
        assert seen and seen[0].startswith("10.123."), seen  # the pod's own address on the bridge
        wait_for(
            "the reply in the pod's log", lambda: "pong from the host" in node.kubectl("logs", "client").stdout, 20
        )
    finally:
        server.close()
    node.kubectl("delete", "pod", "client", "--wait=false")


# busybox 1.35's wget (Debian's busybox-static) segfaults with -q or -T; `timeout` bounds it instead. Its TLS
# cannot talk to the API server (handshake failure), so the API test uses a Go client.
WGET = "timeout 10 wget -O -"


def _exec(node: Node, pod: str, script: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return node.kubectl("exec", pod, "--", "sh", "-c", script, check=check)


def test_pods_resolve_and_reach_a_service_by_ip_and_name(node: Node) -> None:
    """kube-proxy (iptables) and CoreDNS: the kubelet points pods at kube-dns, CoreDNS answers for the Service,
    and the Service IP leads to the pod behind it, from a pod and from the host."""
    ns, domain = node.namespace, real_node.CLUSTER_DOMAIN
    script = "mkdir -p /tmp/www && hostname > /tmp/www/index.html && exec httpd -f -p 8080 -h /tmp/www"
    probe = {"tcpSocket": {"port": 8080}, "periodSeconds": 1}
    web = node.pod("web", {"command": ["sh", "-c", script], "readinessProbe": probe})
    web["metadata"]["labels"] = {"app": "web"}
    service = {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": "web"},
        "spec": {"selector": {"app": "web"}, "ports": [{"name": "http", "port": 80, "targetPort": 8080}]},
    }
    node.kubectl("apply", "-f", "-", input=json.dumps(service))
    node.run(web, ready=True)
    node.run(node.pod("toolbox", {"command": ["sleep", "3600"]}))
    cluster_ip = node.kubectl("get", "service", "web", "-o", "jsonpath={.spec.clusterIP}").stdout
    assert cluster_ip.startswith("10.96.") and cluster_ip != real_node.DNS_SERVICE_IP, cluster_ip

    resolv = _exec(node, "toolbox", "cat /etc/resolv.conf").stdout
    assert f"nameserver {real_node.DNS_SERVICE_IP}" in resolv, resolv
    assert f"search {ns}.svc.{domain} svc.{domain} {domain}" in resolv, resolv

    fqdn = f"web.{ns}.svc.{domain}"
    start = time.monotonic()
    answer = _exec(node, "toolbox", f"nslookup {fqdn}").stdout
    node.figures["pod_dns_lookup_s"] = {
        "what": "kubectl exec nslookup <svc>.<ns>.svc.cluster.local in a running pod (exec included)",
        "seconds": round(time.monotonic() - start, 2),
    }
    assert re.search(rf"Address:\s+{re.escape(cluster_ip)}\b", answer), answer
    # The Service IP, the full name and the short names all reach the pod behind it (names through getaddrinfo
    # and the search path, as client libraries resolve them; busybox's nslookup does not apply the search path).
    for host in (cluster_ip, fqdn, "web", f"web.{ns}"):
        got = _exec(node, "toolbox", f"{WGET} http://{host}/ 2>/dev/null").stdout
        assert got == "web\n", (host, got)
    # The host reaches it too: the Service CIDR routes onto the bridge, kube-proxy's OUTPUT rules DNAT it.
    with urllib.request.urlopen(f"http://{cluster_ip}/", timeout=5) as resp:  # noqa: S310 (our Service IP)
        assert resp.read() == b"web\n"

    # CoreDNS answers the cluster's zone only: unknown names NXDOMAIN, anything outside it REFUSED (no upstream).
    assert real_node.dns_query(f"nothere.{ns}.svc.{domain}") == (3, [])
    assert real_node.dns_query("example.com")[0] == 5


def test_pod_reaches_the_api_server_at_kubernetes_default_svc(node: Node) -> None:
    """A pod's client (kubectl, mounted from the host: a static Go binary) talks to kubernetes.default.svc with
    the pod's ServiceAccount token, verifying the API server's certificate against the mounted cluster CA."""
    kubectl = (node.cluster.bin_dir / "kubectl").resolve()
    pod = node.pod(
        "api-client",
        {
            "command": ["sleep", "3600"],
            "env": [{"name": "HOME", "value": "/tmp"}],
            "volumeMounts": [{"name": "kubectl", "mountPath": "/opt/kubectl", "readOnly": True}],
        },
        volumes=[{"name": "kubectl", "hostPath": {"path": str(kubectl), "type": "File"}}],
    )
    node.run(pod)
    sa = "/var/run/secrets/kubernetes.io/serviceaccount"
    by_name = (
        f"/opt/kubectl --server=https://kubernetes.default.svc --certificate-authority={sa}/ca.crt "
        f'--token="$(cat {sa}/token)"'
    )
    version = json.loads(_exec(node, "api-client", f"{by_name} get --raw /version").stdout)
    assert version["gitVersion"] == control_plane.pinned_k8s_version()
    # The token is what the API server authenticates: the pod's own ServiceAccount, with its (lack of) rights.
    whoami = json.loads(_exec(node, "api-client", f"{by_name} auth whoami -o json").stdout)
    assert whoami["status"]["userInfo"]["username"] == f"system:serviceaccount:{node.namespace}:default"
    denied = _exec(node, "api-client", f"{by_name} get pods 2>&1", check=False)
    assert denied.returncode != 0 and "forbidden" in denied.stdout.lower(), denied.stdout
    # In-cluster config as client libraries use it: KUBERNETES_SERVICE_HOST/PORT (the Service IP) + token + CA.
    env = _exec(node, "api-client", "env").stdout
    assert f"KUBERNETES_SERVICE_HOST={real_node.KUBERNETES_SERVICE_IP}" in env, env
    assert "KUBERNETES_SERVICE_PORT=443" in env, env
    in_cluster = json.loads(_exec(node, "api-client", "/opt/kubectl auth whoami -o json").stdout)
    assert in_cluster["status"]["userInfo"]["username"] == whoami["status"]["userInfo"]["username"]


def test_stop_restores_the_host(node: Node) -> None:
    """Last in the module: stop the node (pods still on it) and compare with the host before it started.
    Under QW_REAL_NODE=1 the node predates this module: then a fresh node runs a pod and is stopped again,
    compared with the host between the two, and the session's node is started again afterwards."""
    cluster_dir = node.cluster.dir
    node_dir = cluster_dir.resolve() / "node"
    node.run(node.pod("left-running", {"command": ["sleep", "3600"]}))
    start = time.monotonic()
    did = control_plane.stop_node(cluster_dir)
    node.figures["node_stop_s"] = round(time.monotonic() - start, 2)
    print("stop_node:", *did, sep="\n  ")
    before = node.host_before
    if before is None:  # the session's node: a cycle of our own, then give the session its node back
        before = host_fingerprint(node_dir)
        again = control_plane.start_node(cluster_dir, node.cluster.bin_dir, die_with_parent=True)
        real_node.load_image(again, node.host_dir / "busybox.tar")
        node.run(node.pod("cycle", {"command": ["sleep", "3600"]}))
        control_plane.stop_node(cluster_dir)
    after = host_fingerprint(node_dir)
    diffs = fingerprint_diff(before, after)
    bridge_left = os.path.exists(f"/sys/class/net/{real_node.BRIDGE}")
    if node.host_before is None:
        node.cluster.node = control_plane.start_node(cluster_dir, node.cluster.bin_dir, die_with_parent=True)
    assert not diffs, "the host differs from before the node started:\n" + "\n".join(diffs)
    assert not bridge_left
