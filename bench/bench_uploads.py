#!/usr/bin/env python3
"""What validating an upload costs the API: the bounded check (qw_core.images.check) against the full decode the
API used to do (qw_core.images.open_image, what the workers still do), same images, same run.

    python bench/bench_uploads.py [--parallel 16]

1. Per format, a 40-megapixel image (the default QW_MAX_IMAGE_PIXELS): seconds and peak RSS added, each measured
   in a fresh process (Pillow allocates outside Python's allocator) from its VmHWM: exact, no sampling.
2. The API itself (`python -m qw_api` on a throwaway vhost of the local RabbitMQ) taking `--parallel` uploads at
   once of the largest accepted PNG (40 MP RGBA, just under QW_MAX_UPLOAD_BYTES): the process's peak RSS (VmHWM)
   and the answers, with the shipped check and with the old full decode swapped back in (baseline), both under
   the default budgets, and both with the budgets out of the way (what the check itself costs, 16 at once).
Prints one JSON object.
"""

from __future__ import annotations

import argparse
import atexit
import io
import json
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
from PIL import Image

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "scripts"))
sys.path.insert(0, str(ROOT))

from qw_core.settings import ApiSettings  # noqa: E402
from rabbitmq import Broker  # noqa: E402

from bench.publish import _drop_vhost, _serve, _vhost  # noqa: E402
from tests.support.images import largest_accepted_png  # noqa: E402
from tests.support.util import free_port  # noqa: E402

FORMATS = ["PNG", "JPEG", "WEBP", "GIF"]
ONE = """
import sys, time
from qw_core.images import check, inspect, open_image
data = open(sys.argv[1], "rb").read()
def peak():  # this process's own high-water mark (ru_maxrss starts at the parent's RSS after a fork)
    return int(next(ln for ln in open("/proc/self/status") if ln.startswith("VmHWM:")).split()[1]) * 1024
before = peak()
start = time.perf_counter()
if sys.argv[2] == "check":
    check(data, inspect(data, {formats}, {pixels}), {pixels})
else:
    open_image(data, {formats}, {pixels}).close()
print(time.perf_counter() - start, peak() - before)
"""
# The baseline API: the route's check swapped for the full decode, weighed as the old budget did (decoded size).
OLD_API = """
import dataclasses, runpy
import qw_api.routes.images as route
from qw_core import images
def old_inspect(d, f, p):
    info = images.inspect(d, f, p)
    return dataclasses.replace(info, check_bytes=info.decoded_bytes)
route.inspect = old_inspect
route.check = lambda d, info, p: images.open_image(d, [info.format], p).close()
runpy.run_module("qw_api", run_name="__main__")
"""


def sample_images(pixels: int, max_bytes: int) -> dict[str, bytes]:
    """The largest accepted PNG, and the same 40 MP canvas (a noisy band over a flat rest) in the other formats."""
    png = largest_accepted_png(pixels, max_bytes)
    img = Image.open(io.BytesIO(png)).convert("RGB")
    out = {"PNG": png}
    for name, fmt, params in [
        ("JPEG", "JPEG", {"quality": 90}),
        ("JPEG progressive", "JPEG", {"quality": 90, "progressive": True}),
        ("WEBP", "WEBP", {"quality": 80, "method": 0}),
        ("GIF", "GIF", {}),
    ]:
        buf = io.BytesIO()
        (img.convert("P") if fmt == "GIF" else img).save(buf, fmt, **params)
        out[name] = buf.getvalue()
    return out


def per_format(samples: dict[str, bytes], pixels: int, tmp: Path) -> dict[str, Any]:
    code = ONE.format(formats=FORMATS, pixels=pixels)
    results: dict[str, Any] = {}
    for name, data in samples.items():
        path = tmp / "sample"
        path.write_bytes(data)
        row: dict[str, Any] = {"file_mb": round(len(data) / 1e6, 1)}
        for how in ("check", "full_decode"):
            out = subprocess.run(
                [sys.executable, "-c", code, str(path), how], capture_output=True, text=True, check=True
            )
            seconds, peak = out.stdout.split()
            row[how] = {"seconds": round(float(seconds), 3), "peak_rss_added_mib": round(int(peak) / 2**20, 1)}
        row["ratio_check_over_full"] = {
            k: round(row["check"][k] / max(row["full_decode"][k], 1e-3), 3) for k in ("seconds", "peak_rss_added_mib")
        }
        results[name] = row
    return results


def vm_hwm_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmHWM")


def api_run(broker: Broker, tmp: Path, png: bytes, parallel: int, old: bool, budgets: bool) -> dict[str, Any]:
    vhost, url = _vhost(broker)
    port = free_port()
    env = {
        "QW_RABBITMQ_URL": url, "QW_API_PORT": str(port), "QW_API_KEYS": "bench-key:bench",
        "QW_DATABASE_URL": f"sqlite:///{tmp}/bench-{port}.db", "QW_STORAGE_DIR": str(tmp / f"storage-{port}"),
        "QW_LOG_LEVEL": "WARNING", "QW_TENANT_RATE": "0", "QW_UPLOAD_WAIT_SECONDS": "60",
    }  # fmt: skip
    if not budgets:
        env |= {"QW_UPLOAD_BODY_BUDGET_BYTES": str(2**40), "QW_DECODE_BUDGET_BYTES": str(2**40)}
    cmd = [sys.executable, "-c", OLD_API] if old else [sys.executable, "-m", "qw_api"]
    proc = _serve(cmd, env, port)
    try:
        idle = vm_hwm_mib(proc.pid)

        def one(_: int) -> tuple[int, float]:
            start = time.perf_counter()
            r = httpx.post(
                f"http://127.0.0.1:{port}/v1/images",
                headers={"Authorization": "Bearer bench-key"},
                files={"file": ("big.png", png, "image/png")},
                timeout=300,
            )
            return r.status_code, time.perf_counter() - start

        start = time.perf_counter()
        with ThreadPoolExecutor(parallel) as pool:
            answers = list(pool.map(one, range(parallel)))
        wall = time.perf_counter() - start
        latencies = sorted(s for _, s in answers)
        return {
            "statuses": {str(c): sum(1 for s, _ in answers if s == c) for c in sorted({s for s, _ in answers})},
            "peak_rss_mib": round(vm_hwm_mib(proc.pid), 1),
            "idle_rss_mib": round(idle, 1),
            "all_answered_s": round(wall, 2),
            "median_answer_s": round(latencies[len(latencies) // 2], 2),
        }
    finally:
        proc.terminate()
        proc.wait(30)
        _drop_vhost(broker, vhost)


def run(parallel: int) -> dict[str, Any]:
    defaults = {name: f.default for name, f in ApiSettings.model_fields.items()}
    pixels = defaults["max_image_pixels"]
    max_bytes = defaults["max_upload_bytes"] - 64 * 1024  # room for the form's other parts
    samples = sample_images(pixels, max_bytes)
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        formats = per_format(samples, pixels, tmp)
        broker = Broker()
        if broker.start():  # a node this run started stops with it; one already running is left
            atexit.register(broker.stop)
        api = {
            f"{'full_decode' if old else 'check'}{'' if budgets else '_no_budgets'}": api_run(
                broker, tmp, samples["PNG"], parallel, old, budgets
            )
            for budgets in (True, False)
            for old in (False, True)
            if budgets or not old  # the old path without budgets is the 2.4 GiB the budgets were made for
        }
    check, full = api["check"], api["full_decode"]
    return {
        "benchmark": "uploads",
        "pixels": pixels,
        "parallel": parallel,
        "formats": formats,
        "api": api,
        "ratios": {
            "api_peak_rss_check_over_full_decode": round(check["peak_rss_mib"] / full["peak_rss_mib"], 3),
            "api_all_answered_check_over_full_decode": round(check["all_answered_s"] / full["all_answered_s"], 3),
            "png_check_seconds_over_full_decode": formats["PNG"]["ratio_check_over_full"]["seconds"],
        },
    }


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("--parallel", type=int, default=16)
    args = ap.parse_args()
    print(json.dumps(run(args.parallel), indent=2))
