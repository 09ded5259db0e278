"""examples/shop/README.md's commands run as written: `make dev` with the shop's module, the shop's service, an
order by curl, then what the README says the reader sees (the order's three effects, the stock, the task, the mail
printed by `make dev`'s SMTP sink).

What the test changes, and nothing else: `make dev`'s broker, store, ports and SMTP port come from QW_* variables
set around the commands (a private vhost of the session's broker, files of the test's, free ports), the shop's
tables from SHOP_DATABASE_URL, so the shop's `QW_DATABASE_URL=sqlite:///.run/dev.db` becomes the test's store and
ports 8000/8001 free ones; `python` is this venv's; `<order_id>` and `<task_id>` are the ids the order answered.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.procs import background
from tests.support.util import free_port, http_ok
from tests.support.wait import wait_for

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parents[2]
README = ROOT / "examples" / "shop" / "README.md"


def commands() -> list[str]:
    out = []
    for block in re.findall(r"```bash\n(.*?)```", README.read_text(), re.S):
        out += [c.strip() for c in block.replace("\\\n", " ").splitlines() if c.strip() and not c.startswith("#")]
    return out


def run(cmd: str, env: dict[str, str]) -> str:
    out = subprocess.run(["bash", "-c", cmd], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)  # noqa: S603
    assert out.returncode == 0, f"{cmd}\n{out.stdout}\n{out.stderr}"
    return out.stdout


def test_the_shop_readme_runs_as_written(broker, amqp_url, tmp_path):
    api_port, shop_port = free_port(), free_port()
    store = f"sqlite:///{tmp_path}/dev.db"
    env = {
        **os.environ,
        "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}",
        "QW_RABBITMQ_URL": amqp_url, "QW_RABBITMQ_MANAGEMENT_URL": broker.management_url,
        "QW_DATABASE_URL": store, "QW_STORAGE_DIR": str(tmp_path / "storage"),
        "QW_API_PORT": str(api_port), "QW_SMTP_PORT": str(free_port()),
        "QW_LOCAL_BASE_PORT": str(free_port()), "QW_LOCAL_INTERVAL": "1",
        "SHOP_DATABASE_URL": f"sqlite:///{tmp_path}/shop.db",
    }  # fmt: skip
    env.pop("QW_API_KEYS", None)  # make dev's own dev-key, which the README uses
    make_dev, shop, *curls = commands()
    assert make_dev == "make dev QW_APP=shop.tasks PYTHONPATH=examples" and "--port 8001" in shop
    shop = shop.replace("sqlite:///.run/dev.db", store).replace("--port 8001", f"--port {shop_port}")
    base = f"http://127.0.0.1:{shop_port}"
    log = tmp_path / "make-dev.log"
    with background(make_dev, env, log) as dev:
        wait_for("make dev's API", lambda: http_ok(f"http://127.0.0.1:{api_port}/readyz") or dev.poll() is not None,
                 120, 0.3)  # fmt: skip
        assert dev.poll() is None, log.read_text()[-3000:]
        with background(shop, env, tmp_path / "shop.log") as service:
            wait_for("the shop", lambda: http_ok(f"{base}/stock") or service.poll() is not None, 60, 0.2)
            assert service.poll() is None, (tmp_path / "shop.log").read_text()[-3000:]
            fix = lambda c: c.replace("127.0.0.1:8001", f"127.0.0.1:{shop_port}").replace(  # noqa: E731
                "127.0.0.1:8000", f"127.0.0.1:{api_port}")  # fmt: skip
            placed = json.loads(run(fix(curls[0]), env))
            order_id, task_id = placed["order_id"], placed["tasks"]["confirmation"]
            view_cmd = fix(curls[1]).replace("<order_id>", order_id)
            done = lambda: (v := json.loads(run(view_cmd, env)))["sale_recorded"] and v["confirmation_sent"] and (  # noqa: E731
                v["units_reserved"] and v)  # fmt: skip
            view = wait_for("the order's three tasks done", done, 90, 0.5)
            stock = json.loads(run(fix(curls[2]), env))
            task = json.loads(run(fix(curls[3]).replace("<task_id>", task_id), env))
            wait_for("the mail printed", lambda: f"Subject: Your order {order_id}" in log.read_text(), 10, 0.2)
    assert placed["status"] == "confirmed" and set(placed["tasks"]) == {"confirmation", "inventory", "analytics"}
    assert (view["confirmation_sent"], view["units_reserved"], view["sale_recorded"]) == (True, 3, True)
    assert stock == {"A": 100_000 - 2, "B": 100_000, "C": 100_000 - 1}
    assert (task["kind"], task["status"], task["result"]) == ("confirmation", "succeeded",
                                                               {"order_id": order_id, "sent": True})  # fmt: skip
