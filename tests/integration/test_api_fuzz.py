"""Fuzz the API's own OpenAPI description with schemathesis (a real HTTP server, real broker): never a 5xx."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration


def test_no_server_errors_from_schema_driven_fuzzing(api, tmp_path):
    base = api[0]
    cmd = [
        str(Path(sys.executable).with_name("schemathesis")), "run", f"{base}/openapi.json",
        "--checks", "not_a_server_error",
        # An event stream stays open until its task ends (no worker runs here); it has its own tests.
        "--exclude-path-regex", "/events$",
        "--max-examples", "30", "--seed", "1",
        "--phases", "examples,coverage,fuzzing",
        "-H", "Authorization: Bearer key-acme",
        "--generation-database", "none",
        "--report-dir", str(tmp_path),
    ]  # fmt: skip
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stdout[-6000:] + r.stderr[-2000:]
