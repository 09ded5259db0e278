"""README's "Try it" curl block run as written against `make dev` (scripts/dev.py: real broker, API, autoscaled
workers, SMTP sink), and what `make dev` and `make lint` install.

What the test changes in the README's commands, and nothing else: the API's port (8000 -> a free one, on a machine
other suites share) and `<task_id>` -> the id the image upload answered. photo.jpg is a real JPEG in the directory
the commands run in; `KEY=dev-key` and every other line run as they are, each command through bash.
(The "On Kubernetes" block runs as written in tests/e2e/test_helm_real.py; README's facts against the code are
checked in tests/unit/test_readme.py.)
"""

from __future__ import annotations

import io
import json
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
from PIL import Image

from tests.support.util import free_port, http_ok
from tests.support.wait import wait_for

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parents[2]
README_API = "http://127.0.0.1:8000"


def try_it_commands() -> list[str]:
    """The commands of README.md's "Try it" bash block: continuation lines joined, comments and blanks dropped."""
    section = (ROOT / "README.md").read_text().split("\n## Try it\n", 1)[1].split("\n## ", 1)[0]
    block = re.search(r"```bash\n(.*?)```", section, re.S)
    assert block, "README's Try it section has no bash block"
    joined = re.sub(r"\\\n\s*", "", block.group(1))
    return [line.strip() for line in joined.splitlines() if line.strip() and not line.lstrip().startswith("#")]


def storage_command() -> str:
    """The one command of README.md's "Storage: a directory or S3" bash block."""
    section = (ROOT / "README.md").read_text().split("\n## Storage: a directory or S3\n", 1)[1].split("\n## ", 1)[0]
    block = re.search(r"```bash\n(.*?)```", section, re.S)
    assert block, "README's Storage section has no bash block"
    [command] = [line.strip() for line in block.group(1).splitlines() if line.strip()]
    return command


def _s3_objects(endpoint: str, bucket: str) -> list[str]:
    import boto3
    from botocore.config import Config
    from seaweed import ACCESS_KEY, SECRET_KEY

    s3 = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1", aws_access_key_id=ACCESS_KEY,
                      aws_secret_access_key=SECRET_KEY, config=Config(s3={"addressing_style": "path"}))  # fmt: skip
    return [o["Key"] for o in s3.list_objects_v2(Bucket=bucket).get("Contents", [])]


def _run(prelude: list[str], command: str, cwd: Path) -> str:
    """One README command through bash, after the block's variable assignments (`KEY=dev-key`)."""
    script = "\n".join([*prelude, command])
    done = subprocess.run(["bash", "-c", script], cwd=cwd, capture_output=True, text=True, timeout=180)
    assert done.returncode == 0, f"{command}\n-> {done.returncode}\n{done.stdout}\n{done.stderr}"
    return done.stdout


@pytest.mark.parametrize("storage", ["directory", "s3"])
def test_the_try_it_block_runs_as_written_against_make_dev(broker, amqp_url, tmp_path, storage):
    """Both backends: the directory (make dev), and S3 as README's Storage section starts it (a local weed server
    that make dev starts and stops; the README's bucket, on a free port and in this test's directory)."""
    commands = try_it_commands()
    prelude = [c for c in commands if re.fullmatch(r"[A-Z_]+=\S+", c)]
    curls = [c for c in commands if c not in prelude]
    assert prelude == ["KEY=dev-key"] and all(c.startswith("curl ") for c in curls), commands
    # The upload sends its text values with --form-string: -F would make "(c) me" a nested multipart part.
    upload = next(c for c in curls if "/v1/images" in c)
    assert "--form-string watermark='(c) me'" in upload and "-F watermark" not in upload

    photo = io.BytesIO()
    Image.new("RGB", (640, 480), (200, 120, 40)).save(photo, "JPEG")
    (tmp_path / "photo.jpg").write_bytes(photo.getvalue())
    api_port = free_port()
    env = {
        **os.environ,
        "QW_RABBITMQ_URL": amqp_url,  # a private vhost on the session broker; dev.py reuses a running broker
        "QW_RABBITMQ_MANAGEMENT_URL": broker.management_url,
        "QW_DATABASE_URL": f"sqlite:///{tmp_path}/dev.db",
        "QW_STORAGE_DIR": str(tmp_path / "storage"),
        "QW_API_PORT": str(api_port),
        "QW_SMTP_PORT": str(free_port()),
        "QW_LOCAL_BASE_PORT": str(free_port()),
        "QW_LOCAL_INTERVAL": "1",
    }
    env.pop("QW_API_KEYS", None)  # make dev's own key, dev-key, which the block uses
    s3_port = free_port()
    if storage == "s3":
        make, target, setting = storage_command().split()
        assert (make, target) == ("make", "dev") and setting.startswith("QW_STORAGE_URL=s3://"), setting
        name, _, value = setting.partition("=")
        env.update({name: value, "QW_DEV_S3_PORT": str(s3_port), "QW_DEV_S3_DIR": str(tmp_path / "seaweed")})
        for k in ("QW_S3_ENDPOINT_URL", "QW_S3_ACCESS_KEY_ID", "QW_S3_SECRET_ACCESS_KEY"):
            env.pop(k, None)
    dev = subprocess.Popen([sys.executable, "scripts/dev.py"], cwd=ROOT, env=env, stdout=subprocess.PIPE,
                           stderr=subprocess.STDOUT, text=True)  # fmt: skip
    api = f"http://127.0.0.1:{api_port}"
    outputs: list[tuple[str, str]] = []
    task_id = ""
    try:
        wait_for("make dev's API", lambda: http_ok(f"{api}/readyz") or dev.poll() is not None, 90, 0.3)
        assert dev.poll() is None, "make dev exited"
        for command in curls:
            assert README_API in command, command
            command = command.replace(README_API, api)
            if "<task_id>" in command:
                command = command.replace("<task_id>", task_id)
            out = _run(prelude, command, tmp_path)
            outputs.append((command, out))
            if "/v1/images" in command:
                task_id = json.loads(out)["task_id"]
        email_id = json.loads(next(o for c, o in outputs if "/v1/emails" in c))["task_id"]
        key = {"Authorization": "Bearer dev-key"}
        wait_for(
            "the README's email sent",
            lambda: httpx.get(f"{api}/v1/tasks/{email_id}", headers=key).json()["status"] == "succeeded",
            60,
            0.3,
        )
        if storage == "s3":  # the result is in make dev's bucket, and nothing went to the directory
            objects = _s3_objects(f"http://127.0.0.1:{s3_port}", "queueworker")
            assert f"results/dev/{task_id}.webp" in objects, objects
            assert not (tmp_path / "storage" / "results").exists()
    finally:
        dev.send_signal(signal.SIGTERM)
        dev_out = dev.communicate(timeout=60)[0]

    by_path = {re.search(r"/v1/\S*", c).group(0): o for c, o in outputs}  # type: ignore[union-attr]
    accepted = {"task_id": task_id, "status": "queued", "status_url": f"{api}/v1/tasks/{task_id}"}
    assert json.loads(by_path["/v1/images"]) == accepted  # a 202; "(c) me" sent with -F would have been a 422
    view = json.loads(by_path[f"/v1/tasks/{task_id}"])
    assert view["task_id"] == task_id and view["kind"] == "image", view
    assert set(view) >= {"created_at", "updated_at"}, view
    events = by_path[f"/v1/tasks/{task_id}/events"]
    last = json.loads(re.findall(r"^data: (.*)$", events, re.M)[-1])
    assert last["status"] == "succeeded", events
    result = Image.open(tmp_path / "result.webp")
    assert (result.format, result.width) == ("WEBP", 320)
    assert "API key: dev-key" in dev_out, dev_out[-3000:]
    assert "Subject: Hello" in dev_out and "Hi Ann" in dev_out, dev_out[-3000:]  # the SMTP sink printed the email


def test_make_dev_installs_only_what_it_runs_and_make_lint_only_the_venv():
    def packages(*groups: str) -> set[str]:
        out = subprocess.run(["bash", "scripts/install-system-deps.sh", "--list", *groups], cwd=ROOT,
                             capture_output=True, text=True, check=True).stdout  # fmt: skip
        return set(out.split())

    assert packages("dev") == {"rabbitmq-server"}
    assert packages() == packages("test")
    assert packages("test") >= packages("dev") | packages("images") | {"chromium", "prometheus", "postgresql"}

    def plan(target: str) -> str:
        return subprocess.run(["make", "-n", target], cwd=ROOT, capture_output=True, text=True, check=True).stdout

    assert "install-system-deps.sh dev" in plan("dev")
    assert "install-system-deps.sh" not in plan("lint")
    assert "install-system-deps.sh test" in plan("test")
