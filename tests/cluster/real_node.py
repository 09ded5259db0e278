"""A real node beside kwok: Debian's containerd + runc + CNI plugins and a kubelet built from the same pinned
Kubernetes modules as the control plane. Opt-in (`cluster.py up --real-node`, `start(..., real_node=True)`,
or `start_node(cluster_dir)` on a running control plane). Standard library only.

Everything it runs keeps its files under DIR/node (containerd's root, state and socket, runc's root, the
netns mounts, the CNI config and IPAM state, the kubelet's root dir and pod logs), never /etc/containerd,
/run/containerd's socket or /var/lib/kubelet. What it cannot keep there, it records before and restores
after (`stop_node`, also run by `cluster.stop`):

- a bridge `qwbr0` with 10.123.0.1/16 (outside podman's 10.88/16 and the service CIDR 10.96/16): the node
  IP, and the gateway address pods use to reach servers on the host. Deleted at stop.
- a route `10.96.0.0/16 dev qwbr0`: the Service CIDR stays on the bridge, so a packet to a Service IP that
  kube-proxy has not DNAT-ed (yet) never takes the default route. Deleted at stop.
- net.ipv4.ip_forward=1 (pod -> Service IP -> pod is routed through the host), and two FORWARD rules that
  keep that forwarding on the bridge (nothing from a pod leaves through another interface, nothing from
  elsewhere reaches the pods). Put back / deleted at stop.
- sysctls the kubelet sets at start (vm.overcommit_memory, kernel.panic, kernel.panic_on_oops, ...): each is
  put back to its value from before the node started, unless someone else changed it since.
- iptables/ip6tables chains and rules the kubelet, kube-proxy or the CNI plugins add (KUBE-*, CNI-HOSTPORT-*,
  rules naming our network): deleted; anything else in the tables is left alone.
- cgroups /sys/fs/cgroup/<controller>/kubepods (cgroupfs driver): their processes killed, then removed.
- /var/log/containers symlinks to our pod logs (the kubelet hard-codes that path), /var/lib/cni (libcni's
  cache) and /run/containerd/s (the shims' sockets, hard-coded in containerd 1.6): ours removed, and the
  directories too if they did not exist before.

One real node per host at a time (the sysctls, iptables chains and cgroup names are host-wide): an owner
record in /run/queueworker-real-node serialises them, and a node whose processes died without a stop (a
SIGKILLed test run) is cleaned up, from the record's host snapshot, by the next start or stop.

Cluster networking on the node: kube-proxy (iptables mode, masquerading all Service traffic, so it works with
or without br_netfilter) makes Service IPs work for pods and for the host; CoreDNS, a host process on the
gateway IP :53 (udp+tcp), answers for cluster.local behind the Service kube-system/kube-dns (10.96.0.10, the
kubelet's clusterDNS); pods reach the API server at `kubernetes.default.svc` (10.96.0.1:443 -> the API
server on the gateway IP). Both start with the node and stop with it.

Pods go to the real node only when they ask: it has the label `queueworker.dev/node=real` and the taint
`queueworker.dev/real-node=true:NoSchedule`, so kwok's tests never land there (see POD_PLACEMENT).
"""

from __future__ import annotations

import ctypes
import errno
import fcntl
import hashlib
import io
import json
import os
import re
import secrets
import shlex
import shutil
import signal
import socket
import ssl
import struct
import subprocess
import tarfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from cluster_pki import make_client_cert, make_node_pki, write_kubeconfig
from procs import free_port, kill_with_parent, tail

NODE_NAME = "qw-node-0"
BRIDGE = "qwbr0"
SUBNET = "10.123.0.0/16"
GATEWAY_IP = "10.123.0.1"
SERVICE_CIDR = "10.96.0.0/16"  # the cluster's (cluster.py's --service-cluster-ip-range)
KUBERNETES_SERVICE_IP = "10.96.0.1"  # default/kubernetes, the first address of SERVICE_CIDR
DNS_SERVICE_IP = "10.96.0.10"  # kube-system/kube-dns -> CoreDNS on GATEWAY_IP:53
CLUSTER_DOMAIN = "cluster.local"
CNI_NETWORK = "qw-pods"
NODE_LABEL = ("queueworker.dev/node", "real")
NODE_TAINT = {"key": "queueworker.dev/real-node", "value": "true", "effect": "NoSchedule"}
# Merge into a pod spec to run it on the real node.
POD_PLACEMENT: dict[str, Any] = {
    "nodeSelector": {NODE_LABEL[0]: NODE_LABEL[1]},
    "tolerations": [{**{k: NODE_TAINT[k] for k in ("key", "value", "effect")}, "operator": "Equal"}],
}
PAUSE_IMAGE = "queueworker.local/pause:1"
BUSYBOX_IMAGE = "queueworker.local/busybox:1"
HOST_RECORD = Path("/run/queueworker-real-node")  # owner + host snapshot; outlives a removed cluster dir
CNI_BIN = Path("/usr/lib/cni")
SYSCTLS = [
    "vm/overcommit_memory",
    "vm/panic_on_oom",
    "kernel/panic",
    "kernel/panic_on_oops",
    "kernel/keys/root_maxkeys",
    "kernel/keys/root_maxbytes",
    "net/ipv4/ip_forward",
    "net/ipv6/conf/all/forwarding",
    "net/ipv4/conf/all/route_localnet",
    "net/bridge/bridge-nf-call-iptables",
    "net/bridge/bridge-nf-call-ip6tables",
    # kube-proxy's conntrack settings: its configuration leaves them alone (all 0), restored all the same.
    "net/netfilter/nf_conntrack_max",
    "net/netfilter/nf_conntrack_tcp_timeout_established",
    "net/netfilter/nf_conntrack_tcp_timeout_close_wait",
    "net/netfilter/nf_conntrack_tcp_be_liberal",
    "net/netfilter/nf_conntrack_udp_timeout",
    "net/netfilter/nf_conntrack_udp_timeout_stream",
]
# FORWARD rules (inserted first, deleted at stop): with ip_forward on, the host routes pod -> Service IP -> pod
# on the bridge, and nothing else to or from the pods.
FORWARD_GUARDS = [
    [
        "-i",
        BRIDGE,
        "!",
        "-o",
        BRIDGE,
        "-m",
        "comment",
        "--comment",
        "queueworker real node: pods stay on the bridge",
        "-j",
        "DROP",
    ],
    [
        "!",
        "-i",
        BRIDGE,
        "-o",
        BRIDGE,
        "-m",
        "comment",
        "--comment",
        "queueworker real node: pods stay on the bridge",
        "-j",
        "DROP",
    ],
]
HOST_PATHS = ["/run/netns", "/run/containerd", "/var/lib/cni", "/var/log/containers", "/var/log/pods"]
CGROUP_ROOT = Path("/sys/fs/cgroup")


class NodeError(RuntimeError):
    """The real node did not come up, or cleaning up after it failed; the message says where to look."""


@dataclass
class RealNode:
    name: str
    gateway_ip: str  # the node IP: pods reach servers on the host at this address
    subnet: str
    containerd_address: str  # the node's own containerd socket (for ctr)
    dir: str

    def load_image(self, archive: Path) -> list[str]:
        return load_image(self, archive)


# ---------------------------------------------------------------- images


def load_image(node: RealNode, archive: Path) -> list[str]:
    """Imports a docker (`podman save`) or OCI archive into the node's containerd, in the namespace the
    kubelet uses; returns the image names now present. Pods use them with imagePullPolicy IfNotPresent/Never."""
    proc = subprocess.run(
        ["ctr", "--address", node.containerd_address, "-n", "k8s.io", "images", "import", str(archive)],
        capture_output=True,
        text=True,
    )
    if proc.returncode != 0:
        raise NodeError(f"ctr images import {archive} exited {proc.returncode}:\n{proc.stdout}{proc.stderr}")
    listing = subprocess.run(
        ["ctr", "--address", node.containerd_address, "-n", "k8s.io", "images", "list", "-q"],
        capture_output=True,
        text=True,
        check=True,
    )
    return listing.stdout.split()


def _tar_add(tar: tarfile.TarFile, name: str, kind: bytes, mode: int, data: bytes = b"", link: str = "") -> None:
    info = tarfile.TarInfo(name)
    info.type, info.mode, info.mtime, info.uid, info.gid = kind, mode, 0, 0, 0
    info.linkname = link
    info.size = len(data) if kind == tarfile.REGTYPE else 0
    tar.addfile(info, io.BytesIO(data) if kind == tarfile.REGTYPE else None)


def busybox_layer() -> bytes:
    """A root filesystem of Debian's busybox-static (every applet as a symlink) and a user app (10001)."""
    busybox = Path("/bin/busybox")
    if not busybox.exists():
        raise NodeError("/bin/busybox missing: apt-get install busybox-static (scripts/install-system-deps.sh)")
    applets = subprocess.run([str(busybox), "--list"], capture_output=True, text=True, check=True).stdout.split()
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for d, mode in (("bin", 0o755), ("etc", 0o755), ("tmp", 0o1777), ("proc", 0o555), ("sys", 0o555)):
            _tar_add(tar, d, tarfile.DIRTYPE, mode)
        for d in ("dev", "home", "home/app", "var", "var/run"):
            _tar_add(tar, d, tarfile.DIRTYPE, 0o755)
        _tar_add(tar, "bin/busybox", tarfile.REGTYPE, 0o755, busybox.read_bytes())
        for applet in sorted(set(applets) - {"busybox"}):
            _tar_add(tar, f"bin/{applet}", tarfile.SYMTYPE, 0o777, link="busybox")
        passwd = b"root:x:0:0:root:/root:/bin/sh\napp:x:10001:10001:app:/home/app:/bin/sh\n"
        _tar_add(tar, "etc/passwd", tarfile.REGTYPE, 0o644, passwd)
        _tar_add(tar, "etc/group", tarfile.REGTYPE, 0o644, b"root:x:0:\napp:x:10001:\n")
    return buf.getvalue()


def write_oci_archive(path: Path, images: dict[str, list[str]], layer: bytes | None = None) -> Path:
    """Writes an OCI image-layout tar (what `ctr images import` reads) with one image per name -> command,
    all sharing one busybox layer. No registry, no podman: tarfile + json."""
    layer = busybox_layer() if layer is None else layer
    blobs: dict[str, bytes] = {}

    def blob(data: bytes) -> dict[str, Any]:
        digest = "sha256:" + hashlib.sha256(data).hexdigest()
        blobs[digest] = data
        return {"digest": digest, "size": len(data)}

    layer_desc = {"mediaType": "application/vnd.oci.image.layer.v1.tar", **blob(layer)}
    manifests = []
    for name, cmd in images.items():
        config = {
            "architecture": "amd64",
            "os": "linux",
            "config": {"Env": ["PATH=/bin"], "Cmd": cmd, "WorkingDir": "/"},
            "rootfs": {"type": "layers", "diff_ids": [layer_desc["digest"]]},
        }
        manifest = {
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "config": {"mediaType": "application/vnd.oci.image.config.v1+json", **blob(json.dumps(config).encode())},
            "layers": [layer_desc],
        }
        desc = {"mediaType": "application/vnd.oci.image.manifest.v1+json", **blob(json.dumps(manifest).encode())}
        tag = name.rsplit(":", 1)[1]
        desc["annotations"] = {"io.containerd.image.name": name, "org.opencontainers.image.ref.name": tag}
        desc["platform"] = {"architecture": "amd64", "os": "linux"}
        manifests.append(desc)
    index = {"schemaVersion": 2, "mediaType": "application/vnd.oci.image.index.v1+json", "manifests": manifests}
    with tarfile.open(path, "w", format=tarfile.PAX_FORMAT) as tar:
        _tar_add(tar, "oci-layout", tarfile.REGTYPE, 0o644, b'{"imageLayoutVersion":"1.0.0"}')
        _tar_add(tar, "index.json", tarfile.REGTYPE, 0o644, json.dumps(index).encode())
        for digest, data in blobs.items():
            _tar_add(tar, f"blobs/sha256/{digest.split(':')[1]}", tarfile.REGTYPE, 0o644, data)
    return path


# ---------------------------------------------------------------- host state


def _read(path: str | Path) -> str | None:
    try:
        return Path(path).read_text().strip()
    except OSError:
        return None


def _sysctls() -> dict[str, str | None]:
    return {key: _read(f"/proc/sys/{key}") for key in SYSCTLS}


def _iptables_save(tool: str) -> str:
    try:
        return subprocess.run([f"{tool}-save"], capture_output=True, text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        return ""


def parse_iptables(save: str) -> dict[str, dict[str, list[str]]]:
    """table -> {"chains": [...], "rules": ["-A CHAIN ..."]}, from iptables-save output (counters dropped)."""
    tables: dict[str, dict[str, list[str]]] = {}
    current: dict[str, list[str]] | None = None
    for line in save.splitlines():
        if line.startswith("*"):
            current = tables.setdefault(line[1:], {"chains": [], "rules": []})
        elif current is None or line.startswith("#") or line == "COMMIT":
            continue
        elif line.startswith(":"):
            current["chains"].append(line[1:].split()[0])
        elif line.startswith("-A "):
            current["rules"].append(line)
    return tables


def _is_ours(text: str) -> bool:
    return any(mark in text for mark in ("KUBE-", "CNI-HOSTPORT-", CNI_NETWORK, BRIDGE, SUBNET))


def snapshot_host() -> dict[str, Any]:
    return {
        "sysctls": _sysctls(),
        "iptables": {tool: _iptables_save(tool) for tool in ("iptables", "ip6tables")},
        "paths": {p: os.path.lexists(p) for p in HOST_PATHS},
        "cgroups": sorted(str(p) for p in CGROUP_ROOT.glob("*/kubepods")),
        "bridge": os.path.exists(f"/sys/class/net/{BRIDGE}"),
        "service_route": _service_route(),
    }


def _service_route() -> str:
    """The main table's route for exactly SERVICE_CIDR, if any ("" when none)."""
    proc = subprocess.run(["ip", "-4", "route", "show", "exact", SERVICE_CIDR], capture_output=True, text=True)
    return proc.stdout.strip()


def _restore_iptables(before: dict[str, str], log: Callable[[str], None]) -> None:
    for tool, saved in before.items():
        old = parse_iptables(saved)
        now = parse_iptables(_iptables_save(tool))
        for table, content in now.items():
            was = old.get(table, {"chains": [], "rules": []})
            chains = [c for c in content["chains"] if c not in was["chains"] and _is_ours(c)]
            # Rules of ours in chains we do not delete (e.g. PREROUTING -> KUBE-SERVICES); the rest go with -F.
            rules = [
                r
                for r in reversed(content["rules"])
                if r not in was["rules"] and _is_ours(r) and r.split()[1] not in chains
            ]
            if not rules and not chains:
                continue
            # One iptables-restore per table (kube-proxy leaves hundreds of rules: one call each takes seconds).
            # All chains are flushed before any is deleted: kube-proxy's chains jump to one another.
            batch = [f"*{table}", *("-D" + r[2:] for r in rules), *(f"-F {c}" for c in chains)]
            batch += [*(f"-X {c}" for c in chains), "COMMIT", ""]
            proc = subprocess.run(
                [f"{tool}-restore", "--noflush"], input="\n".join(batch), capture_output=True, text=True
            )
            if proc.returncode == 0:
                log(f"{tool} -t {table}: deleted {len(rules)} rules and chains {' '.join(chains) or '-'}")
                continue
            # One by one, as far as it goes (someone changed the table meanwhile, or holds the legacy lock).
            log(f"{tool}-restore -t {table}: {proc.stderr.strip()}; deleting one by one")
            for rule in rules:
                spec = shlex.split(rule)[1:]
                subprocess.run([tool, "-w", "-t", table, "-D", *spec], capture_output=True)
                log(f"{tool} -t {table}: deleted {rule}")
            for chain in chains:
                subprocess.run([tool, "-w", "-t", table, "-F", chain], capture_output=True)
            for chain in chains:
                proc = subprocess.run([tool, "-w", "-t", table, "-X", chain], capture_output=True, text=True)
                log(f"{tool} -t {table}: deleted chain {chain} {proc.stderr.strip()}")


def _restore_sysctls(
    before: dict[str, str | None], after_start: dict[str, str | None], log: Callable[[str], None]
) -> None:
    for key, value in before.items():
        now = _read(f"/proc/sys/{key}")
        # Put back what the node changed, but not a value someone else set after the node had set its own.
        if value is not None and now is not None and now != value and after_start.get(key) in (None, value, now):
            try:
                Path(f"/proc/sys/{key}").write_text(value)
                log(f"sysctl {key}: {now} -> {value}")
            except OSError as exc:
                log(f"sysctl {key}: could not restore {value}: {exc}")


def _cgroup_pids(top: Path) -> set[int]:
    """Every process in the cgroup tree. os.walk, not Path.rglob: a pod's cgroup may vanish mid-walk, which
    os.walk skips and rglob raises on."""
    pids: set[int] = set()
    for d, _, files in os.walk(top):
        if "cgroup.procs" in files:
            pids.update(int(p) for p in (_read(Path(d) / "cgroup.procs") or "").split())
    return pids


def _kill_cgroup_tree(top: Path) -> None:
    for _ in range(50):
        pids = _cgroup_pids(top)
        if not pids:
            return
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        time.sleep(0.1)


def _remove_cgroups(keep: list[str], log: Callable[[str], None]) -> None:
    for top in CGROUP_ROOT.glob("*/kubepods"):
        if str(top) in keep:
            continue
        _kill_cgroup_tree(top)
        for d in (Path(d) for d, _, _ in os.walk(top, topdown=False)):  # deepest first, top last
            for _ in range(20):
                try:
                    d.rmdir()
                    break
                except FileNotFoundError:
                    break
                except OSError:
                    time.sleep(0.1)
        log(f"cgroup {top}: removed" if not top.exists() else f"cgroup {top}: could not remove")


_libc = ctypes.CDLL(None, use_errno=True)


def _unmount_under(prefixes: list[str], log: Callable[[str], None]) -> None:
    for _ in range(5):
        points = []
        for line in Path("/proc/self/mountinfo").read_text().splitlines():
            point = line.split()[4].replace("\\040", " ")
            if any(point == p or point.startswith(p.rstrip("/") + "/") for p in prefixes):
                points.append(point)
        if not points:
            return
        for point in sorted(set(points), key=len, reverse=True):
            MNT_DETACH = 2
            if _libc.umount2(point.encode(), MNT_DETACH) != 0 and ctypes.get_errno() not in (
                errno.EINVAL,
                errno.ENOENT,
            ):
                log(f"umount {point}: {os.strerror(ctypes.get_errno())}")


# ---------------------------------------------------------------- processes


def _alive(pid: int, name: str) -> bool:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")[0].endswith(name.encode())
    except OSError:
        return False


def _terminate(pid: int, name: str, grace: float) -> None:
    for sig, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, 5.0)):
        try:
            os.killpg(pid, sig)
        except ProcessLookupError:
            return
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline:
            try:  # our own child: reap it; anyone else's: wait for it to go
                if os.waitpid(pid, os.WNOHANG)[0] == pid:
                    return
            except ChildProcessError:
                pass
            if not _alive(pid, name):
                return
            time.sleep(0.05)


def _shims_of(address: str) -> list[int]:
    pids = []
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            try:
                args = (proc / "cmdline").read_bytes().split(b"\0")
            except OSError:
                continue
            if args and args[0].endswith(b"containerd-shim-runc-v2") and address.encode() in args:
                pids.append(int(proc.name))
    return pids


# ---------------------------------------------------------------- owner record


class _HostLock:
    def __enter__(self) -> _HostLock:
        HOST_RECORD.mkdir(parents=True, exist_ok=True)
        self.fd = os.open(HOST_RECORD / ".lock", os.O_RDWR | os.O_CREAT, 0o600)
        fcntl.flock(self.fd, fcntl.LOCK_EX)
        return self

    def __exit__(self, *exc: object) -> None:
        os.close(self.fd)


def _owner() -> dict[str, Any] | None:
    try:
        owner: dict[str, Any] = json.loads((HOST_RECORD / "owner.json").read_text())
        return owner
    except (OSError, ValueError):
        return None


def _owner_alive(owner: dict[str, Any]) -> bool:
    return any(_alive(pid, name) for name, pid in owner.get("pids", {}).items())


def _save_owner(owner: dict[str, Any]) -> None:
    tmp = HOST_RECORD / "owner.json.tmp"
    tmp.write_text(json.dumps(owner, indent=2))
    tmp.replace(HOST_RECORD / "owner.json")
    node_dir = Path(owner["dir"])
    if node_dir.is_dir():
        (node_dir / "state.json").write_text(json.dumps(owner, indent=2))


# ---------------------------------------------------------------- start / stop


def _check_host() -> None:
    missing = [t for t in ("containerd", "runc", "ctr", "ip", "iptables") if not shutil.which(t)]
    missing += [str(CNI_BIN / p) for p in ("bridge", "host-local", "loopback", "portmap") if not (CNI_BIN / p).exists()]
    if missing:
        raise NodeError(
            f"missing {', '.join(missing)}: apt-get install containerd runc containernetworking-plugins "
            "busybox-static iptables (scripts/install-system-deps.sh)"
        )
    if os.geteuid() != 0:
        raise NodeError("the real node needs root (bridge, cgroups, mounts)")


def _containerd_config(d: Path) -> str:
    cri = 'plugins."io.containerd.grpc.v1.cri"'
    return f"""version = 2
root = "{d}/containerd/root"
state = "{d}/containerd/state"
disabled_plugins = ["io.containerd.snapshotter.v1.aufs", "io.containerd.snapshotter.v1.btrfs",
  "io.containerd.snapshotter.v1.devmapper", "io.containerd.snapshotter.v1.zfs"]
[grpc]
  address = "{d}/containerd.sock"
[ttrpc]
  address = "{d}/containerd.sock.ttrpc"
[debug]
  address = ""
[metrics]
  address = ""
[plugins."io.containerd.internal.v1.opt"]
  path = "{d}/containerd/opt"
[{cri}]
  sandbox_image = "{PAUSE_IMAGE}"
  # No CAP_SYS_RESOURCE here: runc cannot give a container a lower OOM score than containerd's.
  restrict_oom_score_adj = true
  netns_mounts_under_state_dir = true
  disable_apparmor = true
  stream_server_address = "127.0.0.1"
  stream_server_port = "0"
  [{cri}.containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    [{cri}.containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [{cri}.containerd.runtimes.runc.options]
        SystemdCgroup = false
        Root = "{d}/runc"
  [{cri}.cni]
    bin_dir = "{CNI_BIN}"
    conf_dir = "{d}/cni/net.d"
    max_conf_num = 1
"""


def _cni_config(d: Path) -> dict[str, Any]:
    return {
        "cniVersion": "0.4.0",
        "name": CNI_NETWORK,
        "plugins": [
            {
                "type": "bridge",
                "bridge": BRIDGE,
                # The bridge already has GATEWAY_IP; not isGateway, which would also turn on ip_forward.
                "isGateway": False,
                "ipMasq": False,
                "hairpinMode": True,
                "ipam": {
                    "type": "host-local",
                    "ranges": [[{"subnet": SUBNET, "rangeStart": "10.123.1.1", "gateway": GATEWAY_IP}]],
                    "routes": [{"dst": "0.0.0.0/0", "gw": GATEWAY_IP}],
                    "dataDir": str(d / "cni" / "ipam"),
                },
            },
            {"type": "portmap", "capabilities": {"portMappings": True}},
        ],
    }


def _kubelet_config(d: Path, pki: Path, port: int, healthz_port: int) -> dict[str, Any]:
    return {
        "apiVersion": "kubelet.config.k8s.io/v1beta1",
        "kind": "KubeletConfiguration",
        "address": GATEWAY_IP,
        "port": port,
        "readOnlyPort": 0,
        "healthzBindAddress": "127.0.0.1",
        "healthzPort": healthz_port,
        "tlsCertFile": str(pki / "kubelet-serving.crt"),
        "tlsPrivateKeyFile": str(pki / "kubelet-serving.key"),
        "authentication": {
            "anonymous": {"enabled": False},
            "webhook": {"enabled": True},
            "x509": {"clientCAFile": str(pki / "ca.crt")},
        },
        "authorization": {"mode": "Webhook"},
        "containerRuntimeEndpoint": f"unix://{d}/containerd.sock",
        # This host: cgroup v1 and no systemd as PID 1.
        "cgroupDriver": "cgroupfs",
        "failCgroupV1": False,
        "failSwapOn": False,
        # Images come from `ctr images import`, never from a registry: never garbage-collect them.
        "imageGCHighThresholdPercent": 100,
        "imageGCLowThresholdPercent": 99,
        "evictionHard": {"memory.available": "100Mi", "nodefs.available": "1%", "imagefs.available": "1%"},
        "makeIPTablesUtilChains": False,
        "resolvConf": "",  # pods get the cluster's DNS only: nothing upstream of it
        "clusterDNS": [DNS_SERVICE_IP],
        "clusterDomain": CLUSTER_DOMAIN,
        "podLogsDir": str(d / "pod-logs"),
        "registerWithTaints": [NODE_TAINT],
        "maxPods": 50,
        "serializeImagePulls": False,
        "shutdownGracePeriod": "0s",
        "syncFrequency": "10s",
    }


def _kube_proxy_config(d: Path, healthz_port: int, metrics_port: int) -> dict[str, Any]:
    return {
        "apiVersion": "kubeproxy.config.k8s.io/v1alpha1",
        "kind": "KubeProxyConfiguration",
        "clientConnection": {"kubeconfig": str(d / "kube-proxy.kubeconfig")},
        "hostnameOverride": NODE_NAME,
        "bindAddress": GATEWAY_IP,
        "healthzBindAddress": f"127.0.0.1:{healthz_port}",
        "metricsBindAddress": f"127.0.0.1:{metrics_port}",
        "mode": "iptables",
        "clusterCIDR": SUBNET,
        # NodePorts on the bridge only, never on the host's other addresses (nor 127.0.0.1: that would set
        # route_localnet=1 host-wide).
        "nodePortAddresses": [f"{GATEWAY_IP}/32"],
        "iptables": {
            # SNAT all Service traffic to the gateway: a backend's reply then comes back through the host's
            # conntrack whether or not bridged traffic passes iptables (br_netfilter), which we leave alone.
            "masqueradeAll": True,
            "localhostNodePorts": False,
            "syncPeriod": "30s",
            "minSyncPeriod": "0s",  # a test's new Service or endpoint is programmed at once
        },
        # 0 = leave the host's conntrack sysctls as they are (kube-proxy would otherwise raise them).
        "conntrack": {"maxPerCore": 0, "min": 0, "tcpEstablishedTimeout": "0s", "tcpCloseWaitTimeout": "0s"},
        "oomScoreAdj": 0,
    }


def _corefile(d: Path, health_port: int, ready_port: int) -> str:
    # No forward plugin: names outside the cluster's zones are REFUSED, nothing is ever sent upstream.
    return f"""{CLUSTER_DOMAIN}:53 in-addr.arpa:53 ip6.arpa:53 {{
    bind {GATEWAY_IP}
    errors
    log
    health 127.0.0.1:{health_port}
    ready 127.0.0.1:{ready_port}
    kubernetes {CLUSTER_DOMAIN} in-addr.arpa ip6.arpa {{
        kubeconfig {d}/coredns.kubeconfig queueworker-test
        fallthrough in-addr.arpa ip6.arpa
        ttl 5
    }}
    cache 5
}}
"""


COREDNS_USER = "system:coredns"
COREDNS_RBAC: list[tuple[str, dict[str, Any]]] = [
    (
        "/apis/rbac.authorization.k8s.io/v1/clusterroles",
        {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "ClusterRole",
            "metadata": {"name": "queueworker:coredns"},
            "rules": [
                {
                    "apiGroups": [""],
                    "resources": ["endpoints", "services", "pods", "namespaces"],
                    "verbs": ["list", "watch"],
                },
                {"apiGroups": ["discovery.k8s.io"], "resources": ["endpointslices"], "verbs": ["list", "watch"]},
            ],
        },
    ),
    (
        "/apis/rbac.authorization.k8s.io/v1/clusterrolebindings",
        {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "ClusterRoleBinding",
            "metadata": {"name": "queueworker:coredns"},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "queueworker:coredns"},
            "subjects": [{"apiGroup": "rbac.authorization.k8s.io", "kind": "User", "name": COREDNS_USER}],
        },
    ),
]
DNS_PORTS = [("dns", "UDP"), ("dns-tcp", "TCP")]
# The Service pods' resolv.conf names, and its endpoint: CoreDNS on the host, at the gateway. Selectorless, so
# the EndpointSlice is ours (a managed-by label no controller claims).
KUBE_DNS: list[tuple[str, dict[str, Any]]] = [
    (
        "/api/v1/namespaces/kube-system/services",
        {
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": {"name": "kube-dns", "namespace": "kube-system", "labels": {"k8s-app": "kube-dns"}},
            "spec": {
                "clusterIP": DNS_SERVICE_IP,
                "ports": [{"name": n, "protocol": p, "port": 53, "targetPort": 53} for n, p in DNS_PORTS],
            },
        },
    ),
    (
        "/apis/discovery.k8s.io/v1/namespaces/kube-system/endpointslices",
        {
            "apiVersion": "discovery.k8s.io/v1",
            "kind": "EndpointSlice",
            "metadata": {
                "name": "kube-dns-host",
                "namespace": "kube-system",
                "labels": {
                    "kubernetes.io/service-name": "kube-dns",
                    "endpointslice.kubernetes.io/managed-by": "real-node.queueworker.dev",
                },
            },
            "addressType": "IPv4",
            "endpoints": [{"addresses": [GATEWAY_IP], "conditions": {"ready": True}, "nodeName": NODE_NAME}],
            "ports": [{"name": n, "protocol": p, "port": 53} for n, p in DNS_PORTS],
        },
    ),
]


def _api(server: str, pki: Path, method: str, path: str, body: dict[str, Any] | None = None) -> tuple[int, bytes]:
    """One request to the API server as the admin user; (status, body), or (0, b"") when it did not answer."""
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(  # noqa: S310 (our API server)
        server + path, data=data, method=method, headers={"Content-Type": "application/json"}
    )
    try:
        with urllib.request.urlopen(req, context=_admin_ctx(pki), timeout=5) as resp:  # noqa: S310
            return resp.status, resp.read()
    except urllib.error.HTTPError as err:
        return err.code, err.read()
    except (OSError, ssl.SSLError):
        return 0, b""


def _create_objects(server: str, pki: Path) -> None:
    for path, obj in COREDNS_RBAC + KUBE_DNS:
        status, body = _api(server, pki, "POST", path, obj)
        if status not in (201, 409):  # 409: left by an earlier node of this control plane; same content
            raise NodeError(f"creating {obj['kind']} {obj['metadata']['name']}: HTTP {status} {body[:300]!r}")


def _delete_objects(server: str, pki: Path, log: Callable[[str], None]) -> None:
    for path, obj in reversed(COREDNS_RBAC + KUBE_DNS):
        if _api(server, pki, "DELETE", f"{path}/{obj['metadata']['name']}")[0] == 200:
            log(f"deleted {obj['kind']} {obj['metadata']['name']} from the API")


def dns_query(name: str, server: str = GATEWAY_IP, qtype: int = 1, timeout: float = 2.0) -> tuple[int, list[str]]:
    """One DNS question over UDP (stdlib): (rcode, addresses of the A (1) or AAAA (28) answers)."""
    qid = secrets.randbits(16)
    question = b"".join(bytes([len(p)]) + p.encode() for p in name.rstrip(".").split(".")) + b"\0"
    packet = struct.pack(">HHHHHH", qid, 0x0100, 1, 0, 0, 0) + question + struct.pack(">HH", qtype, 1)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.settimeout(timeout)
        sock.sendto(packet, (server, 53))
        while True:
            reply = sock.recv(4096)
            if reply[:2] == packet[:2]:
                break

    def skip_name(off: int) -> int:
        while reply[off] != 0:
            if reply[off] & 0xC0 == 0xC0:
                return off + 2
            off += reply[off] + 1
        return off + 1

    _, flags, qdcount, ancount, _, _ = struct.unpack(">HHHHHH", reply[:12])
    off = 12
    for _ in range(qdcount):
        off = skip_name(off) + 4
    addresses = []
    for _ in range(ancount):
        off = skip_name(off)
        rtype, _, _, rdlen = struct.unpack(">HHIH", reply[off : off + 10])
        off += 10
        if rtype == qtype and rdlen in (4, 16):
            family = socket.AF_INET if rdlen == 4 else socket.AF_INET6
            addresses.append(socket.inet_ntop(family, reply[off : off + rdlen]))
        off += rdlen
    return flags & 0xF, addresses


def _http_status(url: str) -> int:
    try:
        with urllib.request.urlopen(url, timeout=3) as resp:  # noqa: S310 (our components' 127.0.0.1 ports)
            return int(resp.status)
    except urllib.error.HTTPError as err:
        return err.code
    except OSError:
        return 0


def service_rules_present(service_ips: dict[str, str]) -> bool:
    """Whether kube-proxy's nat rules send each ClusterIP -> protocol (e.g. {"10.96.0.1": "tcp"}) to endpoints."""
    nat = subprocess.run(["iptables-save", "-t", "nat"], capture_output=True, text=True).stdout
    return all(
        re.search(rf"^-A KUBE-SERVICES -d {re.escape(ip)}/32 -p {proto} .*-j KUBE-SVC-", nat, re.MULTILINE)
        for ip, proto in service_ips.items()
    )


def start_node(
    cluster_dir: Path,
    server: str,
    bin_dir: Path,
    die_with_parent: bool = False,
    timeout: float = 120.0,
    lock_wait: float = 600.0,
) -> RealNode:
    """Adds the real node to the control plane in cluster_dir (its pki/ signs the node's certificates) and
    returns once the node is Ready. On failure everything started is stopped and the host restored."""
    _check_host()
    cluster_dir = cluster_dir.resolve()
    d = cluster_dir / "node"
    pki = cluster_dir / "pki"
    _claim_host(d, server, lock_wait)
    # The start's own deadline counts from here: waiting for another run's node must not eat it (a 5 min wait
    # left containerd a second to open its socket).
    started = time.monotonic()
    try:
        return _start(d, pki, server, bin_dir.resolve(), die_with_parent, started + timeout, started)
    except BaseException:
        stop_node(cluster_dir)
        raise


def _claim_host(d: Path, server: str, lock_wait: float) -> None:
    deadline = time.monotonic() + lock_wait
    while True:
        with _HostLock():
            owner = _owner()
            if owner and owner["dir"] != str(d) and _owner_alive(owner) and time.monotonic() < deadline:
                pass  # another live node on this host: wait for it below
            else:
                if owner and owner["dir"] == str(d) and _owner_alive(owner):
                    raise NodeError(f"a real node is already running from {d}")
                if owner and owner["dir"] != str(d) and _owner_alive(owner):
                    raise NodeError(f"another real node ({owner['dir']}) still runs on this host after {lock_wait}s")
                if owner:  # its processes died without a stop (a killed test run): clean up after it
                    _cleanup(owner, print)
                shutil.rmtree(d, ignore_errors=True)
                (d / "logs").mkdir(parents=True)
                _save_owner({"dir": str(d), "pids": {}, "host_before": snapshot_host(), "server": server})
                return
        time.sleep(1.0)


def _start(
    d: Path, pki: Path, server: str, bin_dir: Path, die_with_parent: bool, deadline: float, started: float
) -> RealNode:
    owner = json.loads((HOST_RECORD / "owner.json").read_text())
    timings: dict[str, float] = {}

    def spawn(name: str, args: list[str]) -> subprocess.Popen[bytes]:
        with open(d / "logs" / f"{name}.log", "ab") as log:
            log.write(f"# {' '.join(args)}\n".encode())
            log.flush()
            proc = subprocess.Popen(
                args,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
                cwd=d,
                preexec_fn=kill_with_parent if die_with_parent else None,
            )
        owner["pids"][name] = proc.pid
        _save_owner(owner)
        return proc

    def wait(what: str, proc: subprocess.Popen[bytes], name: str, ready: Callable[[], bool]) -> None:
        wait_all({what: (proc, name, ready)})

    def wait_all(checks: dict[str, tuple[subprocess.Popen[bytes], str, Callable[[], bool]]]) -> dict[str, float]:
        """Polls every check until each has passed once; returns when each first passed (monotonic)."""
        passed: dict[str, float] = {}
        while time.monotonic() < deadline:
            for what, (proc, name, ready) in checks.items():
                if proc.poll() is not None:
                    log = d / "logs" / f"{name}.log"
                    raise NodeError(f"{name} exited with {proc.returncode}; {log} ends:\n{tail(log)}")
                if what in passed:
                    continue
                try:
                    if ready():
                        passed[what] = time.monotonic()
                except (OSError, ValueError, KeyError, ssl.SSLError):
                    pass
            if len(passed) == len(checks):
                return passed
            time.sleep(0.05)
        what, (_, name, _) = next((w, c) for w, c in checks.items() if w not in passed)
        raise NodeError(f"timed out waiting for {what}; {d}/logs/{name}.log ends:\n{tail(d / 'logs' / f'{name}.log')}")

    # The bridge first: its address is the node IP the kubelet binds to.
    for cmd in (
        ["ip", "link", "add", BRIDGE, "type", "bridge"],
        ["ip", "addr", "add", f"{GATEWAY_IP}/{SUBNET.split('/')[1]}", "dev", BRIDGE],
        ["ip", "link", "set", BRIDGE, "up"],
    ):
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode != 0:
            raise NodeError(f"{' '.join(cmd)}: {proc.stderr.strip()}")
    _route_services_and_forward()
    (d / "cni" / "net.d").mkdir(parents=True)
    (d / "cni" / "net.d" / "10-qw-pods.conflist").write_text(json.dumps(_cni_config(d), indent=2))
    (d / "containerd.toml").write_text(_containerd_config(d))
    sock = str(d / "containerd.sock")
    if len(sock) > 100:
        raise NodeError(f"containerd socket path too long for a unix socket ({len(sock)} chars): {sock}")
    containerd = spawn("containerd", ["containerd", "--config", str(d / "containerd.toml")])
    wait(
        "containerd's socket",
        containerd,
        "containerd",
        lambda: subprocess.run(["ctr", "--address", sock, "version"], capture_output=True).returncode == 0,
    )
    timings["containerd_ready_s"] = time.monotonic() - started
    node = RealNode(NODE_NAME, GATEWAY_IP, SUBNET, sock, str(d))
    load_image(node, write_oci_archive(d / "pause.tar", {PAUSE_IMAGE: ["/bin/sleep", "2147483647"]}))

    # A Node object left by an earlier kubelet may still read Ready: this one must register it anew.
    _delete_node_object(server, pki)
    make_node_pki(pki, NODE_NAME, GATEWAY_IP)
    write_kubeconfig(d / "kubelet.kubeconfig", pki, server, "kubelet")
    config = _kubelet_config(d, pki, free_port(), free_port())
    (d / "kubelet.json").write_text(json.dumps(config, indent=2))
    kubelet = spawn(
        "kubelet",
        [
            str(bin_dir / "kubelet"),
            f"--config={d}/kubelet.json",
            f"--kubeconfig={d}/kubelet.kubeconfig",
            f"--root-dir={d}/kubelet",
            f"--cert-dir={d}/kubelet-pki",
            f"--hostname-override={NODE_NAME}",
            f"--node-ip={GATEWAY_IP}",
            f"--node-labels={'='.join(NODE_LABEL)}",
            "--v=1",
        ],
    )

    def ready() -> bool:
        try:
            with urllib.request.urlopen(f"{server}/api/v1/nodes/{NODE_NAME}", context=ctx, timeout=5) as resp:  # noqa: S310
                node_obj = json.loads(resp.read())
        except urllib.error.HTTPError:
            return False
        conds = node_obj["status"].get("conditions", [])
        taints = node_obj["spec"].get("taints", [])
        return any(c["type"] == "Ready" and c["status"] == "True" for c in conds) and not any(
            t["key"].startswith("node.kubernetes.io/") for t in taints
        )

    ctx = _admin_ctx(pki)
    wait(f"node {NODE_NAME} Ready", kubelet, "kubelet", ready)
    timings["node_ready_s"] = time.monotonic() - started

    # Cluster networking: kube-proxy and CoreDNS, started together once the Node (kube-proxy's node IP) exists.
    for binary in ("kube-proxy", "coredns"):
        if not os.access(bin_dir / binary, os.X_OK):
            raise NodeError(f"{bin_dir / binary} missing: run tests/cluster/build.sh")
    _create_objects(server, pki)
    make_client_cert(pki, "kube-proxy", "system:kube-proxy")  # the bootstrap policy's system:node-proxier
    write_kubeconfig(d / "kube-proxy.kubeconfig", pki, server, "kube-proxy")
    make_client_cert(pki, "coredns", COREDNS_USER)
    write_kubeconfig(d / "coredns.kubeconfig", pki, server, "coredns")
    proxy_healthz = free_port()
    (d / "kube-proxy.json").write_text(json.dumps(_kube_proxy_config(d, proxy_healthz, free_port()), indent=2))
    dns_health, dns_ready = free_port(), free_port()
    (d / "Corefile").write_text(_corefile(d, dns_health, dns_ready))
    net_started = time.monotonic()
    kube_proxy = spawn("kube-proxy", [str(bin_dir / "kube-proxy"), f"--config={d}/kube-proxy.json", "--v=1"])
    coredns = spawn("coredns", [str(bin_dir / "coredns"), "-conf", str(d / "Corefile")])
    kubernetes_svc = f"kubernetes.default.svc.{CLUSTER_DOMAIN}"
    passed = wait_all(
        {
            # Healthy and both Services programmed: no pod can use a Service IP before its DNAT rule exists.
            "kube_proxy_ready_s": (
                kube_proxy,
                "kube-proxy",
                lambda: (
                    _http_status(f"http://127.0.0.1:{proxy_healthz}/healthz") == 200
                    and service_rules_present({KUBERNETES_SERVICE_IP: "tcp", DNS_SERVICE_IP: "udp"})
                ),
            ),
            "coredns_ready_s": (
                coredns,
                "coredns",
                lambda: _http_status(f"http://127.0.0.1:{dns_ready}/ready") == 200,
            ),
            "first_dns_answer_s": (
                coredns,
                "coredns",
                lambda: dns_query(kubernetes_svc, timeout=0.5) == (0, [KUBERNETES_SERVICE_IP]),
            ),
        }
    )
    timings.update({what: at - net_started for what, at in passed.items()})
    timings["network_ready_s"] = time.monotonic() - started
    owner["sysctls_after_start"] = _sysctls()
    owner["node"] = asdict(node)
    owner["timings"] = timings
    _save_owner(owner)
    return node


def _route_services_and_forward() -> None:
    """The Service CIDR onto the bridge, the FORWARD guards, then ip_forward (in that order: no pod packet is
    ever forwarded beyond the bridge)."""
    cmds = [["ip", "route", "add", SERVICE_CIDR, "dev", BRIDGE, "scope", "link"]]
    cmds += [["iptables", "-w", "-I", "FORWARD", "1", *rule] for rule in FORWARD_GUARDS]
    for cmd in cmds:
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode != 0:
            raise NodeError(f"{' '.join(cmd)}: {proc.stderr.strip()}")
    if _read("/proc/sys/net/ipv4/ip_forward") != "1":
        Path("/proc/sys/net/ipv4/ip_forward").write_text("1")


def _admin_ctx(pki: Path) -> ssl.SSLContext:
    ctx = ssl.create_default_context(cafile=str(pki / "ca.crt"))
    ctx.load_cert_chain(str(pki / "admin.crt"), str(pki / "admin.key"))
    return ctx


def _delete_node_object(server: str, pki: Path) -> bool:
    """Deletes the Node from the API (its pods are then garbage-collected); False if the API did not answer."""
    req = urllib.request.Request(f"{server}/api/v1/nodes/{NODE_NAME}", method="DELETE")  # noqa: S310
    try:
        with urllib.request.urlopen(req, context=_admin_ctx(pki), timeout=5):  # noqa: S310 (our API server)
            return True
    except urllib.error.HTTPError as err:
        return err.code == 404
    except (OSError, ssl.SSLError):
        return False


def node_of(cluster_dir: Path) -> RealNode | None:
    """The real node recorded for cluster_dir, if its processes still run."""
    try:
        state = json.loads((cluster_dir.resolve() / "node" / "state.json").read_text())
    except (OSError, ValueError):
        return None
    if "node" not in state or not _owner_alive(state):
        return None
    return RealNode(**state["node"])


def timings_of(cluster_dir: Path) -> dict[str, float]:
    try:
        timings: dict[str, float] = json.loads((cluster_dir.resolve() / "node" / "state.json").read_text())["timings"]
        return timings
    except (OSError, ValueError, KeyError):
        return {}


def stop_node(cluster_dir: Path, grace: float = 5.0) -> list[str]:
    """Stops the real node of cluster_dir (if this host's record says it owns the node) and restores the
    host; returns what it did. Safe to call when no node runs."""
    d = cluster_dir.resolve() / "node"
    done: list[str] = []
    with _HostLock():
        owner = _owner()
        if owner is None or owner["dir"] != str(d):
            return done
        _cleanup(owner, done.append, grace)
    return done


def _cleanup(owner: dict[str, Any], log: Callable[[str], None], grace: float = 5.0) -> None:
    """Stops a node's processes and puts the host back as its snapshot says; then drops the owner record."""
    d = Path(owner["dir"])
    before = owner["host_before"]
    pids = owner.get("pids", {})
    for name in ("kube-proxy", "coredns", "kubelet"):
        if name in pids:
            _terminate(pids[name], name, grace)
    pki = d.parent / "pki"
    if owner.get("server") and (pki / "admin.crt").exists() and _delete_node_object(owner["server"], pki):
        log(f"deleted Node {NODE_NAME} from the API")
        _delete_objects(owner["server"], pki, log)
    # The containers: every process in the kubelet's cgroups (the shims are not in them).
    for top in CGROUP_ROOT.glob("*/kubepods"):
        if str(top) not in before["cgroups"]:
            _kill_cgroup_tree(top)
    if "containerd" in pids:
        _terminate(pids["containerd"], "containerd", grace)
    for pid in _shims_of(str(d / "containerd.sock")):
        try:
            os.kill(pid, signal.SIGKILL)
            log(f"killed shim {pid}")
        except ProcessLookupError:
            pass
    _unmount_under([str(d)], log)
    _remove_cgroups(before["cgroups"], log)
    if not before.get("service_route") and _service_route():
        subprocess.run(["ip", "route", "del", SERVICE_CIDR], capture_output=True)
        log(f"deleted route {SERVICE_CIDR}")
    if not before["bridge"] and os.path.exists(f"/sys/class/net/{BRIDGE}"):
        subprocess.run(["ip", "link", "del", BRIDGE], capture_output=True)
        log(f"deleted bridge {BRIDGE}")
    _restore_iptables(before["iptables"], log)
    _restore_sysctls(before["sysctls"], owner.get("sysctls_after_start", {}), log)
    # Paths outside DIR that the kubelet, libcni and the shims write to whatever their configuration.
    logs = Path("/var/log/containers")
    if logs.is_dir():
        for link in logs.iterdir():
            if link.is_symlink() and os.readlink(link).startswith(str(d)):
                link.unlink()
    for path, existed in before["paths"].items():
        p = Path(path)
        if existed or not p.exists():
            continue
        if path in ("/run/containerd", "/var/lib/cni") or not any(p.iterdir()):
            shutil.rmtree(p, ignore_errors=True)
            log(f"removed {path}")
    if before["paths"].get("/var/lib/cni"):  # libcni's cache: ours name our netns, under DIR
        for f in Path("/var/lib/cni").rglob("*"):
            try:
                if f.is_file() and str(d).encode() in f.read_bytes():
                    f.unlink()
                    log(f"removed {f}")
            except OSError:
                pass
    (HOST_RECORD / "owner.json").unlink(missing_ok=True)
    owner["pids"] = {}
    if d.is_dir():
        (d / "state.json").write_text(json.dumps(owner, indent=2))
