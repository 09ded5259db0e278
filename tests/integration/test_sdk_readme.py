"""README.md's "Your own tasks" section, run as written: its Python block is examples/shop/tasks.py, and its bash
blocks' commands run in order from the repository root, long-running ones (the worker, the API) in the background.

What the test changes, and nothing else: the broker, store and storage come from QW_* variables set around the
commands (the README relies on the defaults of `make services-up`), the shop's own tables from SHOP_DATABASE_URL
(a file of the test's), the API listens on a free port (QW_API_PORT, and `127.0.0.1:8000` in the curl lines),
the worker's metrics port is free, `python` is this venv's, and `<task_id>` is the id the command before printed.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from contextlib import ExitStack
from pathlib import Path

import pytest

from tests.support.procs import background
from tests.support.util import free_port, http_ok
from tests.support.wait import wait_for

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parents[2]
BACKGROUND = ("python -m qw_workers", "python -m qw_api")


def section() -> str:
    text = (ROOT / "README.md").read_text()
    found = re.search(r"^## Your own tasks\n(.*?)^## ", text, re.S | re.M)
    assert found, "README.md has no '## Your own tasks' section"
    return found.group(1)


def commands() -> list[str]:
    """The bash blocks' commands, continuation lines joined."""
    out = []
    for block in re.findall(r"```bash\n(.*?)```", section(), re.S):
        out += [c.strip() for c in block.replace("\\\n", " ").splitlines() if c.strip() and not c.startswith("#")]
    return out


def test_the_python_block_is_the_example_module():
    [block] = re.findall(r"```python\n(.*?)```", section(), re.S)
    assert block == (ROOT / "examples/shop/tasks.py").read_text()


def run(cmd: str, env: dict[str, str]) -> str:
    out = subprocess.run(["bash", "-c", cmd], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)  # noqa: S603
    assert out.returncode == 0, f"{cmd}\n{out.stdout}\n{out.stderr}"
    return out.stdout


def test_the_tutorial_commands_run_as_written(amqp_url, tmp_path):
    api_port, metrics_port = free_port(), free_port()
    env = {
        **os.environ,
        "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}",
        "QW_ENV": "test", "QW_LOG_FORMAT": "text", "QW_RABBITMQ_URL": amqp_url,
        "QW_DATABASE_URL": f"sqlite:///{tmp_path}/qw.db", "QW_STORAGE_DIR": str(tmp_path / "storage"),
        "QW_API_PORT": str(api_port), "QW_METRICS_PORT": str(metrics_port),
        "SHOP_DATABASE_URL": f"sqlite:///{tmp_path}/shop.db",  # the shop's own tables (examples/shop/db.py)
    }  # fmt: skip
    cmds = commands()
    assert [c for c in cmds if c.startswith(BACKGROUND) or " python -m " in c], "no worker or API command"
    task_id, outputs, ran = "", [], []
    with ExitStack() as stack:
        for cmd in cmds:
            cmd = cmd.replace("127.0.0.1:8000", f"127.0.0.1:{api_port}").replace("<task_id>", task_id)
            ran.append(cmd)
            if any(b in cmd for b in BACKGROUND):
                log = tmp_path / f"bg-{len(outputs)}.log"
                proc = stack.enter_context(background(cmd, env, log))
                url = f"http://127.0.0.1:{api_port if 'qw_api' in cmd else metrics_port}/readyz"
                wait_for(f"ready: {cmd}", lambda p=proc, u=url: p.poll() is not None or http_ok(u), 60, 0.1)
                assert proc.poll() is None, log.read_text()
                outputs.append("")
                continue
            out = run(cmd, env)
            outputs.append(out)
            task_id = _task_id(out) or task_id
        _check(outputs, cmds)
        # The task posted over HTTP is run by the worker too: its status ends succeeded, with its result.
        probe = lambda: (v := json.loads(run(ran[-1], env)))["status"] == "succeeded" and v  # noqa: E731
        done = wait_for("the task posted over HTTP to succeed", probe, 30, 0.2)
        assert done["result"] == {"order_id": "o-2", "reserved": 1}


def _task_id(out: str) -> str | None:
    m = re.fullmatch(r"([0-9a-f]{32})\n?", out) or re.search(r'"task_id":\s*"([0-9a-f]{32})"', out)
    return m.group(1) if m else None


def _check(outputs: list[str], cmds: list[str]) -> None:
    """What each command must have said: a task id from send(), the task succeeded with its result, 202s, kinds."""
    sent = next(o for c, o in zip(cmds, outputs, strict=True) if ".send(" in c)
    assert _task_id(sent), sent
    waited = next(o for c, o in zip(cmds, outputs, strict=True) if ".wait(" in c)
    assert "status='succeeded'" in waited and "'reserved': 2" in waited, waited
    posted = next(o for c, o in zip(cmds, outputs, strict=True) if "/v1/tasks/inventory" in c)
    assert json.loads(posted)["status"] == "queued"
    kinds = json.loads(next(o for c, o in zip(cmds, outputs, strict=True) if "/v1/kinds" in c))
    by_kind = {k["kind"]: k for k in kinds}
    assert set(by_kind) == {"image", "email", "inventory", "confirmation", "analytics"}
    assert by_kind["inventory"]["payload_schema"]["required"] == ["order_id", "items"]
    status = json.loads(outputs[-1])
    assert status["task_id"] == _task_id(posted) and status["kind"] == "inventory"
