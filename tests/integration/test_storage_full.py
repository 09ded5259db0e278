"""Uploads on a REAL full volume: a 1 MiB tmpfs mounted for the test as QW_STORAGE_DIR (root needed; unmounted
after), filled to the last byte. The API answers 507 with a clear message and Retry-After, queues nothing, records
no task and leaves no partial file; the storage gauges show the volume full; freeing room brings uploads back."""

from __future__ import annotations

import errno
import os
import shutil
import subprocess
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families
from qw_core.topology import queue_name

from tests.conftest import _need
from tests.support.images import image_bytes

pytestmark = pytest.mark.integration


@pytest.fixture
def small_volume(tmp_path: Path):
    mnt = tmp_path / "volume"
    mnt.mkdir()
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=1m,mode=0755", "qw-test-full", str(mnt)], capture_output=True, text=True
    )
    if mounted.returncode != 0:
        _need("a tmpfs mount (run as root)", OSError(mounted.stderr.strip()))
    try:
        yield mnt
    finally:
        subprocess.run(["umount", str(mnt)], check=True)


@pytest.fixture
def api_settings(api_settings, small_volume):
    return api_settings.model_copy(update={"storage_dir": small_volume})


def _fill(volume: Path) -> Path:
    """Write until the volume says ENOSPC: not one byte is left."""
    filler = volume / "filler"
    with filler.open("wb") as f:
        try:
            while True:
                f.write(b"\0" * 65536)
                f.flush()
        except OSError as exc:
            assert exc.errno == errno.ENOSPC
    assert shutil.disk_usage(volume).free == 0
    return filler


def _gauges(http) -> dict[str, float]:
    text = http.get("/metrics").text
    return {
        s.name: s.value
        for fam in text_string_to_metric_families(text)
        for s in fam.samples
        if s.name.startswith("queueworker_api_storage_") or s.labels.get("reason") == "storage-full"
    }


def test_an_upload_to_a_full_volume_is_507_and_leaves_nothing(api, http, peek, small_volume):
    filler = _fill(small_volume)
    image = image_bytes("PNG", size=(256, 256))  # bigger than the nothing that is left

    r = http.post("/v1/images", files={"file": ("a.png", image, "image/png")})

    assert r.status_code == 507, r.text
    assert r.json()["detail"] == "the server's upload storage is full; nothing was stored or queued, try again later"
    assert int(r.headers["retry-after"]) > 0
    assert peek.depth(queue_name("image")) == 0
    assert api[1].state.services.store.counts() == {}
    left = [p for p in small_volume.rglob("*") if p.is_file()]
    assert left == [filler], left  # no .tmp- file, no partial upload
    gauges = _gauges(http)
    assert gauges["queueworker_api_storage_free_bytes"] == 0
    assert gauges["queueworker_api_storage_used_bytes"] == shutil.disk_usage(small_volume).used
    assert gauges["queueworker_api_rejected_uploads_total"] == 1

    os.unlink(filler)  # room again: the same upload is accepted
    again = http.post("/v1/images", files={"file": ("a.png", image, "image/png")})
    assert again.status_code == 202, again.text
    assert peek.depth(queue_name("image")) == 1
    assert _gauges(http)["queueworker_api_storage_free_bytes"] > 0
