#!/usr/bin/env python3
"""Storage on S3 (a local SeaweedFS `weed` server, scripts/seaweed.py) beside the local directory, same run.

    python bench/bench_s3.py [--images 200] [--rounds 2]

1. The image worker (bench_workers.worker_path: consume, decode, fit, encode, store, status, ack) on each backend,
   rounds alternating directory / S3 so a busy minute hits both: images/s (median of the rounds) and the ratio
   S3 over directory. The directory is the ceiling: a local rename never costs more than an HTTP PUT.
2. The API (`python -m qw_api`) taking one upload of the largest accepted PNG (just under the 20 MiB
   QW_MAX_UPLOAD_BYTES) on each backend: its peak RSS (VmHWM) before and after, in a fresh process each, after a
   small warm-up upload (lazy imports and first-call set-up are not the upload's). Baseline:
   the same route with the file read whole into memory and written as bytes (what the route did before it
   streamed), on the directory.
Prints one JSON object.
"""

from __future__ import annotations

import argparse
import atexit
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "scripts"))
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from bench_uploads import vm_hwm_mib  # noqa: E402
from bench_workers import make_images, worker_path  # noqa: E402
from pydantic import SecretStr  # noqa: E402
from qw_core.settings import ApiSettings, WorkerSettings  # noqa: E402
from qw_core.storage import open_storage  # noqa: E402
from rabbitmq import Broker  # noqa: E402
from seaweed import Seaweed  # noqa: E402

from bench.publish import _drop_vhost, _serve, _vhost  # noqa: E402
from tests.support.images import image_bytes, largest_accepted_png  # noqa: E402
from tests.support.util import free_port  # noqa: E402

AUTH = {"Authorization": "Bearer bench-key"}
# The baseline route: the spooled file read whole into memory, then written as bytes (the route before streaming).
WHOLE_FILE_API = """
import runpy
import qw_api.routes.images as route
def whole(storage, key, file):
    file.seek(0)
    storage.write(key, file.read())
route._store = whole
runpy.run_module("qw_api", run_name="__main__")
"""


def s3_settings(server: Seaweed, prefix: str) -> WorkerSettings:
    env = server.env(prefix)
    return WorkerSettings(
        storage_url=env["QW_STORAGE_URL"],
        s3_endpoint_url=env["QW_S3_ENDPOINT_URL"],
        s3_access_key_id=SecretStr(env["QW_S3_ACCESS_KEY_ID"]),
        s3_secret_access_key=SecretStr(env["QW_S3_SECRET_ACCESS_KEY"]),
    )


def workers(server: Seaweed, broker: Broker, n: int, rounds: int, tmp: Path) -> dict[str, Any]:
    images = make_images(n, (1024, 768))
    rates: dict[str, list[float]] = {"directory": [], "s3": []}
    for r in range(rounds):
        for backend in ("directory", "s3"):
            work = tmp / f"w-{backend}-{r}"
            work.mkdir()
            storage = open_storage(s3_settings(server, f"bench-{r}")) if backend == "s3" else None
            rates[backend].append(worker_path(images, 256, 1, broker, work, storage))
    d, s = statistics.median(rates["directory"]), statistics.median(rates["s3"])
    return {
        "images": n,
        "rounds": rounds,
        "directory_images_per_s": round(d, 1),
        "s3_images_per_s": round(s, 1),
        "all_runs": {k: [round(x, 1) for x in v] for k, v in rates.items()},
        "ratio_s3_over_directory": round(s / d, 3),
    }


def api_upload(broker: Broker, tmp: Path, png: bytes, env_extra: dict[str, str], whole_file: bool) -> dict[str, Any]:
    vhost, url = _vhost(broker)
    port = free_port()
    env = {
        "QW_RABBITMQ_URL": url, "QW_API_PORT": str(port), "QW_API_KEYS": "bench-key:bench",
        "QW_DATABASE_URL": f"sqlite:///{tmp}/bench-{port}.db", "QW_STORAGE_DIR": str(tmp / f"storage-{port}"),
        "QW_LOG_LEVEL": "WARNING", "QW_TENANT_RATE": "0", **env_extra,
    }  # fmt: skip
    cmd = [sys.executable, "-c", WHOLE_FILE_API] if whole_file else [sys.executable, "-m", "qw_api"]
    proc = _serve(cmd, env, port)

    def upload(data: bytes) -> httpx.Response:
        files = {"file": ("big.png", data, "image/png")}
        return httpx.post(f"http://127.0.0.1:{port}/v1/images", headers=AUTH, files=files, timeout=300)

    try:
        assert upload(image_bytes("PNG", (64, 64))).status_code == 202  # warm-up: lazy imports are not the upload
        idle = vm_hwm_mib(proc.pid)
        start = time.perf_counter()
        r = upload(png)
        seconds = time.perf_counter() - start
        peak = vm_hwm_mib(proc.pid)
        return {
            "status": r.status_code,
            "peak_rss_before_mib": round(idle, 1),
            "peak_rss_mib": round(peak, 1),
            "added_by_the_upload_mib": round(peak - idle, 1),
            "seconds": round(seconds, 2),
        }
    finally:
        proc.terminate()
        proc.wait(30)
        _drop_vhost(broker, vhost)


def uploads(server: Seaweed, broker: Broker, tmp: Path) -> dict[str, Any]:
    defaults = {name: f.default for name, f in ApiSettings.model_fields.items()}
    png = largest_accepted_png(defaults["max_image_pixels"], defaults["max_upload_bytes"] - 64 * 1024)
    s3 = server.env("bench-api")
    runs = {
        "directory": api_upload(broker, tmp, png, {}, False),
        "s3": api_upload(broker, tmp, png, s3, False),
        "directory_whole_file_baseline": api_upload(broker, tmp, png, {}, True),
    }
    base = runs["directory_whole_file_baseline"]["added_by_the_upload_mib"]
    return {
        "file_mib": round(len(png) / 2**20, 1),
        **runs,
        "ratios": {
            f"{k}_added_over_whole_file": round(runs[k]["added_by_the_upload_mib"] / max(base, 0.1), 3)
            for k in ("directory", "s3")
        },
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--images", type=int, default=200)
    ap.add_argument("--rounds", type=int, default=2)
    a = ap.parse_args()
    broker = Broker()
    if broker.start():  # a node this run started stops with it; one already running is left
        atexit.register(broker.stop)
    with tempfile.TemporaryDirectory(prefix="qw-bench-s3-") as d:
        tmp = Path(d)
        server = Seaweed(tmp / "seaweed", bucket="bench")
        server.start()
        try:
            result = {
                "benchmark": "s3",
                "workers": workers(server, broker, a.images, a.rounds, tmp),
                "uploads": uploads(server, broker, tmp),
            }
        finally:
            server.stop()
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
