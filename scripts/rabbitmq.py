#!/usr/bin/env python3
"""Start, stop and inspect a local RabbitMQ bound to 127.0.0.1: Debian bookworm's 3.10 from the host, or 4.x.

    python3 scripts/rabbitmq.py start [--name qw --port 5672 --mgmt-port 15672 --prom-port 15692] [--version 4]
    python3 scripts/rabbitmq.py stop  [--name qw] [--version 4]
    python3 scripts/rabbitmq.py status [--name qw]
    python3 scripts/rabbitmq.py prepare --version 4   # make the 4.x root now (make test does)

`--version 4` (`Broker4`) runs Debian trixie's RabbitMQ 4.x from a root of its own (built once with mmdebstrap
into ~/.cache/queueworker, QW_RABBITMQ4_ROOT to move it), in a private mount and PID namespace, configured as
the official `rabbitmq:4` image ships it: management metrics collector off, so `/api/queues` has no depth.

Idempotent: `start` reuses a broker that already answers on the port (and then `stop` leaves it
alone); `stop` only stops a node this script started (it keeps a marker in the node's directory).
Stdlib only, so tests import it (`Broker`) to run private brokers for fault tests.
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import random
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

SBIN = Path("/usr/lib/rabbitmq/bin")
ROOT = Path(__file__).resolve().parent.parent
PLUGINS = "[rabbitmq_management,rabbitmq_prometheus]."


def port_open(port: int, host: str = "127.0.0.1") -> bool:
    with socket.socket() as s:
        s.settimeout(0.5)
        return s.connect_ex((host, port)) == 0


def _bindable(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


def free_broker_ports() -> tuple[int, int, int]:
    """(amqp, management, prometheus) ports free now, for a private throwaway broker. The AMQP port stays below
    45536: Erlang distribution listens on AMQP port + 20000, which must be a valid port too (and a 4.x broker's
    own port mapper on + 20001)."""
    rnd = random.Random()
    for _ in range(200):
        base = rnd.randrange(20000, 45000)
        ports = (base, base + 1, base + 2)
        if all(_bindable(p) for p in (*ports, base + 20000, base + 20001)):
            return ports
    raise RuntimeError("no free ports for a private broker")


@dataclass
class Broker:
    name: str = "qw"
    port: int = 5672
    mgmt_port: int = 15672
    prom_port: int = 15692
    base: Path = field(default_factory=lambda: ROOT / ".run")
    extra_config: str = ""
    # Another local address to serve on besides 127.0.0.1 (e.g. a real node's bridge gateway, for pods): AMQP
    # listens on both; the management and Prometheus listeners take one address each in RabbitMQ, so they move
    # there (this host reaches it all the same). guest only logs in over loopback, so api() and management_url
    # then use an administrator made with rabbitmqctl at start (password in DIR/admin-password); add_user()
    # makes the users pods log in as.
    extra_ip: str = ""

    @property
    def dir(self) -> Path:
        return self.base / f"rabbitmq-{self.name}"

    @property
    def nodename(self) -> str:
        return f"{self.name}@localhost"

    @property
    def url(self) -> str:
        return f"amqp://guest:guest@127.0.0.1:{self.port}/%2F"

    @property
    def management_url(self) -> str:
        user, password = self._api_login()
        return f"http://{user}:{password}@{self.http_ip}:{self.mgmt_port}"

    def _api_login(self) -> tuple[str, str]:
        if not self.extra_ip:
            return ("guest", "guest")
        return ("qw-admin", (self.dir / "admin-password").read_text().strip())

    def _ensure_admin(self) -> None:
        """The administrator api() uses when guest cannot log in (extra_ip), through rabbitmqctl (no HTTP)."""
        pw_file = self.dir / "admin-password"
        if not pw_file.exists():
            pw_file.write_text(secrets.token_hex(16))
            pw_file.chmod(0o600)
        password = pw_file.read_text().strip()
        self.ctl("await_startup", timeout=120)
        if self.ctl("add_user", "qw-admin", password).returncode != 0:  # there already: same password
            self.ctl("change_password", "qw-admin", password)
        self.ctl("set_user_tags", "qw-admin", "administrator")
        self.ctl("set_permissions", "-p", "/", "qw-admin", ".*", ".*", ".*")

    @property
    def http_ip(self) -> str:
        """Where the management and Prometheus listeners are."""
        return self.extra_ip or "127.0.0.1"

    @property
    def _marker(self) -> Path:
        return self.dir / "started-by-queueworker"

    def env(self) -> dict[str, str]:
        d = self.dir
        return {
            **os.environ,
            "RABBITMQ_NODENAME": self.nodename,
            "RABBITMQ_NODE_IP_ADDRESS": "127.0.0.1",
            "RABBITMQ_NODE_PORT": str(self.port),
            "RABBITMQ_DIST_PORT": str(self.port + 20000),
            "RABBITMQ_MNESIA_BASE": str(d / "mnesia"),
            "RABBITMQ_LOG_BASE": str(d / "log"),
            "RABBITMQ_CONFIG_FILE": str(d / "rabbitmq"),
            "RABBITMQ_ENABLED_PLUGINS_FILE": str(d / "enabled_plugins"),
            "RABBITMQ_PID_FILE": str(d / "pid"),
            "RABBITMQ_ADVANCED_CONFIG_FILE": str(d / "advanced.config"),
        }

    def _config_lines(self) -> list[str]:
        return []

    def _write_config(self) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        (self.dir / "enabled_plugins").write_text(PLUGINS + "\n")
        (self.dir / "rabbitmq.conf").write_text(
            "\n".join(
                [
                    *self._config_lines(),
                    f"listeners.tcp.default = 127.0.0.1:{self.port}",
                    *([f"listeners.tcp.extra = {self.extra_ip}:{self.port}"] if self.extra_ip else []),
                    f"management.tcp.ip = {self.http_ip}",
                    f"management.tcp.port = {self.mgmt_port}",
                    f"prometheus.tcp.ip = {self.http_ip}",
                    f"prometheus.tcp.port = {self.prom_port}",
                    # Rates in /api/queues: sample often so the operator sees fresh rates.
                    "collect_statistics_interval = 1000",
                    "management.rates_mode = basic",
                    # Longer than any task the workers run (the worker acks after the work).
                    "consumer_timeout = 3600000",
                    "log.console = false",
                    "log.file.level = warning",
                    self.extra_config,
                ]
            )
            + "\n"
        )
        # Quorum queues publish their stats once per tick (5 s by default in 3.10): the operator would see a
        # burst up to 5 s late. 1 s ticks cut that to about 1 s on the Prometheus endpoint and ~3.5 s on the
        # management API (measured; see the README's scaling reaction notes). Not settable in rabbitmq.conf.
        (self.dir / "advanced.config").write_text("[{rabbit, [{quorum_tick_interval, 1000}]}].\n")

    def ctl(self, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [*self._cli("rabbitmqctl"), "-n", self.nodename, *args],
            env=self.env(),
            capture_output=True,
            text=True,
            timeout=timeout,
        )

    def api(self, path: str, method: str = "GET", body: object | None = None) -> object:
        req = urllib.request.Request(
            f"http://{self.http_ip}:{self.mgmt_port}{path}",
            method=method,
            data=None if body is None else json.dumps(body).encode(),
            headers={
                "Authorization": "Basic " + base64.b64encode(":".join(self._api_login()).encode()).decode(),
                "Content-Type": "application/json",
            },
        )
        with urllib.request.urlopen(req, timeout=10) as resp:  # noqa: S310 - loopback or extra_ip only
            raw = resp.read()
        return json.loads(raw) if raw else None

    def _cli(self, tool: str) -> list[str]:
        """The command line that runs one of this node's CLI tools (rabbitmqctl, rabbitmq-queues, ...)."""
        return [str(SBIN / tool)]

    def _server_argv(self) -> list[str]:
        if not (SBIN / "rabbitmq-server").exists():
            raise SystemExit("rabbitmq-server is not installed: apt-get install rabbitmq-server")
        return [str(SBIN / "rabbitmq-server")]

    def ours(self) -> bool:
        return self._marker.exists()

    def running(self) -> bool:
        return port_open(self.port)

    def start(self, timeout: float = 120) -> bool:
        """Start the node unless one answers already. Returns True if this call started it."""
        if self.running():
            self.wait_ready(timeout)
            return False
        argv = self._server_argv()
        self._write_config()
        log = open(self.dir / "server.out", "ab")  # noqa: SIM115 - handed to the child
        proc = subprocess.Popen(
            argv,
            env=self.env(),
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
        self._marker.write_text(str(proc.pid))
        try:
            self.wait_ready(timeout)
        except TimeoutError:
            tail = (self.dir / "server.out").read_text(errors="replace")[-3000:]
            raise TimeoutError(f"RabbitMQ {self.name} did not start in {timeout}s:\n{tail}") from None
        return True

    def wait_ready(self, timeout: float = 120) -> None:
        deadline = time.monotonic() + timeout
        admin = not self.extra_ip
        while time.monotonic() < deadline:
            if self.running() and port_open(self.mgmt_port, self.http_ip):
                if not admin:
                    self._ensure_admin()
                    admin = True
                try:
                    self.api("/api/overview")
                    return
                except OSError:
                    pass
            time.sleep(0.3)
        raise TimeoutError(f"RabbitMQ {self.name} not ready after {timeout}s")

    def add_user(self, user: str, password: str, vhost: str = "/", tags: str = "monitoring") -> str:
        """A user with full permissions on vhost (and the management `tags`, monitoring by default: the operator
        reads every queue's depth); returns its AMQP URL on extra_ip (or 127.0.0.1), user and password quoted."""
        quote = urllib.parse.quote
        self.api(f"/api/users/{quote(user, safe='')}", "PUT", {"password": password, "tags": tags})
        perms = {"configure": ".*", "write": ".*", "read": ".*"}
        self.api(f"/api/permissions/{quote(vhost, safe='')}/{quote(user, safe='')}", "PUT", perms)
        auth = f"{quote(user, safe='')}:{quote(password, safe='')}"
        return f"amqp://{auth}@{self.extra_ip or '127.0.0.1'}:{self.port}/{quote(vhost, safe='')}"

    def _pid(self) -> int | None:
        for f in (self.dir / "pid", self._marker):
            try:
                return int(f.read_text().strip())
            except (OSError, ValueError):
                continue
        return None

    def stop(self, timeout: float = 60) -> None:
        """Stop the node if this script started it; leave anything else alone."""
        if not self.ours():
            return
        pid = self._pid()
        deadline = time.monotonic() + timeout
        if self.running():
            try:
                self.ctl("shutdown", timeout=timeout)
            except subprocess.TimeoutExpired:  # a node that does not answer still goes: SIGKILL below
                pass
        while self.running() and time.monotonic() < deadline:
            time.sleep(0.2)
        if pid and self.running():
            os.kill(pid, signal.SIGKILL)
        self._marker.unlink(missing_ok=True)

    def kill9(self) -> None:
        """Crash the node the hard way (the Erlang VM gets SIGKILL), keeping its data directory."""
        pid = self._pid()
        if pid is None:
            raise RuntimeError("no pid for the broker")
        os.kill(pid, signal.SIGKILL)
        deadline = time.monotonic() + 30
        while self.running() and time.monotonic() < deadline:
            time.sleep(0.1)

    def restart_after_crash(self, timeout: float = 120) -> None:
        self._marker.unlink(missing_ok=True)
        self.start(timeout)

    def destroy(self) -> None:
        """Stop (if ours) and delete the node's directory: for throwaway test brokers."""
        self.stop()
        shutil.rmtree(self.dir, ignore_errors=True)


RABBITMQ4_ROOT = Path(os.environ.get("QW_RABBITMQ4_ROOT") or Path.home() / ".cache/queueworker/rabbitmq4-trixie")
RABBITMQ4_SUITE = "trixie"  # Debian 13: rabbitmq-server 4.0.5
# The official image turns the management metrics collector off; 4.x then also lets us deny every deprecated
# feature, which proves the platform uses none of them.
DEPRECATED_4 = ["classic_queue_mirroring", "global_qos", "ram_node_type", "transient_nonexcl_queues",
                "management_metrics_collection"]  # fmt: skip


def ensure_rabbitmq4_root(root: Path = RABBITMQ4_ROOT) -> Path:
    """A Debian trixie root holding rabbitmq-server 4.x, made once with mmdebstrap (~40 s, 255 MB) and cached.
    Concurrent callers wait on a lock; a half-made root is never used (built aside, then renamed)."""
    import fcntl

    if (root / "usr/lib/rabbitmq/bin/rabbitmq-server").exists():
        return root
    if shutil.which("mmdebstrap") is None:
        raise SystemExit("mmdebstrap is not installed: apt-get install mmdebstrap (scripts/install-system-deps.sh)")
    root.parent.mkdir(parents=True, exist_ok=True)
    with open(root.parent / (root.name + ".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if (root / "usr/lib/rabbitmq/bin/rabbitmq-server").exists():
            return root
        tmp = root.parent / (root.name + ".tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        out = subprocess.run(
            ["mmdebstrap", "--quiet", "--variant=minbase", "--include=rabbitmq-server", RABBITMQ4_SUITE, str(tmp)],
            capture_output=True,
            text=True,
        )
        if out.returncode != 0:
            shutil.rmtree(tmp, ignore_errors=True)
            raise SystemExit(f"mmdebstrap {RABBITMQ4_SUITE} failed:\n{out.stderr[-3000:]}")
        (tmp / "node").mkdir(exist_ok=True)  # each broker bind-mounts its own directory here
        tmp.rename(root)
    return root


@dataclass
class Broker4(Broker):
    """RabbitMQ 4.x from a trixie root, without touching the host's packages.

    `unshare --mount --pid --fork` gives the node a mount namespace where its own directory is bind-mounted at
    /node inside the root (so several 4.x brokers share one root) and a PID namespace that dies with it; then
    `chroot --userspec=rabbitmq` runs trixie's rabbitmq-server. Host networking, so ports work as for `Broker`.
    The Erlang port mapper is private too (ERL_EPMD_PORT): an epmd of another Erlang release never mixes in.
    """

    name: str = "qw4"
    port: int = 5673
    mgmt_port: int = 15673
    prom_port: int = 15693
    metrics_collector: bool = False  # False: as the official rabbitmq:4 image ships it
    root: Path = field(default_factory=lambda: RABBITMQ4_ROOT)

    @property
    def epmd_port(self) -> int:
        return self.port + 20001

    def _user(self) -> tuple[int, int]:
        for line in (self.root / "etc/passwd").read_text().splitlines():
            f = line.split(":")
            if f[0] == "rabbitmq":
                return int(f[2]), int(f[3])
        raise RuntimeError(f"no rabbitmq user in {self.root}/etc/passwd")

    def _plugins_dir(self) -> str:
        lib = sorted((self.root / "usr/lib/rabbitmq/lib").glob("rabbitmq_server-*"))
        if not lib:
            raise RuntimeError(f"no rabbitmq_server-* in {self.root}/usr/lib/rabbitmq/lib")
        return "/" + str(lib[-1].relative_to(self.root) / "plugins")

    @property
    def version(self) -> str:
        return self._plugins_dir().split("rabbitmq_server-")[1].split("/")[0]

    def _inner_env(self) -> list[str]:
        """The node's environment as seen inside the root (paths under /node)."""
        return [
            "HOME=/node",  # the Erlang cookie lives here
            "LANG=C.UTF-8",
            "PATH=/usr/lib/rabbitmq/bin:/usr/sbin:/usr/bin:/sbin:/bin",
            f"RABBITMQ_NODENAME={self.nodename}",
            "RABBITMQ_NODE_IP_ADDRESS=127.0.0.1",
            f"RABBITMQ_NODE_PORT={self.port}",
            f"RABBITMQ_DIST_PORT={self.port + 20000}",
            f"ERL_EPMD_PORT={self.epmd_port}",
            "ERL_EPMD_ADDRESS=127.0.0.1",
            "RABBITMQ_MNESIA_BASE=/node/mnesia",
            "RABBITMQ_LOG_BASE=/node/log",
            "RABBITMQ_CONFIG_FILE=/node/rabbitmq",
            "RABBITMQ_ENABLED_PLUGINS_FILE=/node/enabled_plugins",
            "RABBITMQ_PID_FILE=/node/pid",
            "RABBITMQ_ADVANCED_CONFIG_FILE=/node/advanced.config",
            # Without it, enabling plugins fails with plugins_dir_does_not_exist.
            f"RABBITMQ_PLUGINS_DIR={self._plugins_dir()}",
        ]

    def _config_lines(self) -> list[str]:
        if self.metrics_collector:
            return []
        return ["management_agent.disable_metrics_collector = true"] + [
            f"deprecated_features.permit.{f} = false" for f in DEPRECATED_4
        ]

    def _chroot(self, *argv: str) -> list[str]:
        uid, gid = self._user()
        return ["chroot", f"--userspec={uid}:{gid}", str(self.root), "env", "-i", *self._inner_env(), *argv]

    def _server_argv(self) -> list[str]:
        ensure_rabbitmq4_root(self.root)  # the node's directory is made and handed to its user by _write_config
        r, d = str(self.root), str(self.dir)
        inner = (
            "set -e; mount --make-rprivate /; "
            f'mount --bind "{d}" "{r}/node"; mount -t proc proc "{r}/proc"; '
            f'mount --rbind /dev "{r}/dev"; mount --rbind /sys "{r}/sys"; '
            'exec "$@"'
        )
        return ["unshare", "--mount", "--pid", "--fork", "--kill-child", "sh", "-c", inner, "sh",
                *self._chroot("/usr/lib/rabbitmq/bin/rabbitmq-server")]  # fmt: skip

    def _write_config(self) -> None:
        super()._write_config()
        uid, gid = self._user()
        for path in (self.dir, *self.dir.rglob("*")):
            os.chown(path, uid, gid)

    def _beam_pid(self) -> int | None:
        """The node's Erlang VM as the host sees it (the pid file holds its PID inside the namespace)."""
        needle = f"RABBITMQ_NODENAME={self.nodename}\0".encode()
        for proc in Path("/proc").iterdir():
            if not proc.name.isdigit():
                continue
            try:
                if (
                    b"beam" in (proc / "cmdline").read_bytes().split(b"\0", 1)[0]
                    and needle in (proc / "environ").read_bytes()
                ):
                    return int(proc.name)
            except OSError:
                continue
        return None

    def _pid(self) -> int | None:
        return self._beam_pid()

    def _cli(self, tool: str) -> list[str]:
        pid = self._beam_pid()
        if pid is None:
            raise RuntimeError(f"RabbitMQ {self.name} is not running")
        return ["nsenter", f"--target={pid}", "--mount", "--pid", *self._chroot(f"/usr/lib/rabbitmq/bin/{tool}")]

    def stop(self, timeout: float = 60) -> None:
        """SIGTERM to the VM is a clean shutdown in 4.x; the namespace and its mounts go with it."""
        if not self.ours():
            return
        pid = self._beam_pid()
        if pid is not None:
            os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + timeout
        while (self.running() or self._beam_pid()) and time.monotonic() < deadline:
            time.sleep(0.2)
        pid = self._beam_pid()
        if pid is not None:
            os.kill(pid, signal.SIGKILL)
        self._marker.unlink(missing_ok=True)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("action", choices=["start", "stop", "status", "prepare"])
    p.add_argument("--name", default=os.environ.get("QW_RMQ_NAME", "qw"))
    p.add_argument("--port", type=int, default=int(os.environ.get("QW_RMQ_PORT", 5672)))
    p.add_argument("--mgmt-port", type=int, default=int(os.environ.get("QW_RMQ_MGMT_PORT", 15672)))
    p.add_argument("--prom-port", type=int, default=int(os.environ.get("QW_RMQ_PROM_PORT", 15692)))
    p.add_argument("--version", choices=["3", "4"], default=os.environ.get("QW_RMQ_VERSION", "3"))
    a = p.parse_args(argv)
    b = (Broker4 if a.version == "4" else Broker)(a.name, a.port, a.mgmt_port, a.prom_port)
    if a.action == "prepare":  # only 4.x needs anything made: its root
        if a.version == "4":
            print(f"RabbitMQ 4.x root ready: {ensure_rabbitmq4_root()}")
        return 0
    if a.action == "start":
        started = b.start()
        print(f"rabbitmq {'started' if started else 'already running'}: {b.url} management {b.management_url}")
    elif a.action == "stop":
        if b.ours():
            b.stop()
            print("rabbitmq stopped")
        else:
            print("rabbitmq: not started by this script; left alone")
    else:
        print("running" if b.running() else "stopped")
        return 0 if b.running() else 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
