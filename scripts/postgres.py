#!/usr/bin/env python3
"""Start/stop a throwaway PostgreSQL (Debian's postgresql) on 127.0.0.1 for tests and `make dev`.

    python3 scripts/postgres.py start [--port 55432]   # prints the QW_DATABASE_URL to use
    python3 scripts/postgres.py stop  [--port 55432]

Idempotent like scripts/rabbitmq.py: reuses a server already answering on the port, stops only its own.
PostgreSQL refuses to run as root, so when run as root the cluster belongs to the `postgres` user.
"""

from __future__ import annotations

import argparse
import glob
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.parse
from pathlib import Path


def _bin(name: str) -> str:
    found = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"))
    if not found:
        raise SystemExit("PostgreSQL is not installed: apt-get install postgresql")
    return found[-1]


def _port_open(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(0.5)
        return s.connect_ex(("127.0.0.1", port)) == 0


class Postgres:
    """`extra_ip` (with `allow_subnet`): also listen on that local address (e.g. a real node's bridge gateway,
    for pods) and accept password (scram-sha-256) logins from that subnet; add_user() makes such a login. Local
    connections stay `trust` as before."""

    def __init__(self, port: int = 55432, base: Path | None = None, extra_ip: str = "", allow_subnet: str = "") -> None:
        self.port = port
        self.extra_ip = extra_ip
        self.allow_subnet = allow_subnet
        self.dir = (base or Path("/tmp")) / f"qw-postgres-{port}"
        self.data = self.dir / "data"
        self.marker = self.dir / "started-by-queueworker"

    @property
    def url(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    def _run(self, *cmd: str) -> subprocess.CompletedProcess[str]:
        if os.geteuid() == 0:
            cmd = ("runuser", "-u", "postgres", "--", *cmd)
        return subprocess.run(cmd, capture_output=True, text=True, timeout=120, check=False)

    def start(self) -> bool:
        if _port_open(self.port):
            return False
        self.dir.mkdir(parents=True, exist_ok=True)
        if os.geteuid() == 0:
            shutil.chown(self.dir, "postgres", "postgres")
        if not (self.data / "PG_VERSION").exists():
            r = self._run(_bin("initdb"), "-D", str(self.data), "-U", "postgres", "--auth=trust", "-E", "UTF8")
            if r.returncode:
                raise SystemExit(f"initdb failed: {r.stderr}")
        if self.allow_subnet:
            hba = self.data / "pg_hba.conf"
            line = f"host all all {self.allow_subnet} scram-sha-256"
            if line not in hba.read_text().splitlines():
                self._run("sh", "-c", f"echo '{line}' >> {hba}")
        r = self._run(
            _bin("pg_ctl"), "-D", str(self.data), "-l", str(self.dir / "server.log"), "-w", "-t", "60",
            "-o", f"-c listen_addresses={','.join(['127.0.0.1', *([self.extra_ip] if self.extra_ip else [])])} "
            f"-p {self.port} -k {self.dir} -c fsync=off "
            "-c max_connections=200",
            "start",
        )  # fmt: skip
        if r.returncode:
            log = (self.dir / "server.log").read_text(errors="replace")[-2000:]
            raise SystemExit(f"pg_ctl start failed: {r.stderr}\n{log}")
        self.marker.write_text("1")
        deadline = time.monotonic() + 30
        while not _port_open(self.port) and time.monotonic() < deadline:
            time.sleep(0.2)
        return True

    def psql(self, sql: str) -> str:
        r = self._run(_bin("psql"), "-h", str(self.dir), "-p", str(self.port), "-U", "postgres", "-v",
                      "ON_ERROR_STOP=1", "-Atc", sql)  # fmt: skip
        if r.returncode:
            raise RuntimeError(f"psql failed: {r.stderr}")
        return r.stdout

    def add_user(self, user: str, password: str, database: str) -> str:
        """A password login owning a new database; returns its URL on extra_ip (or 127.0.0.1). `user`,
        `database` are plain identifiers, `password` has no single quote."""
        if not (user.isidentifier() and database.isidentifier()) or "'" in password:
            raise ValueError("plain identifiers and a password without quotes, please")
        self.psql(f"CREATE ROLE {user} LOGIN PASSWORD '{password}'")
        self.psql(f"CREATE DATABASE {database} OWNER {user}")
        host = self.extra_ip or "127.0.0.1"
        return f"postgresql://{user}:{urllib.parse.quote(password, safe='')}@{host}:{self.port}/{database}"

    def stop(self) -> None:
        if not self.marker.exists():
            return
        self._run(_bin("pg_ctl"), "-D", str(self.data), "-m", "fast", "-w", "stop")
        self.marker.unlink(missing_ok=True)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("action", choices=["start", "stop"])
    p.add_argument("--port", type=int, default=int(os.environ.get("QW_PG_PORT", 55432)))
    a = p.parse_args(argv)
    pg = Postgres(a.port)
    if a.action == "start":
        started = pg.start()
        print(f"postgres {'started' if started else 'already running'}: {pg.url}")
    else:
        pg.stop()
        print("postgres stopped (if it was ours)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
