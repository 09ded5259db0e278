"""The built-in kinds are tasks like any other (issue 14): defined with the decorator under `queueworker.task`, found
in the registry, run by the one `make_handler` path; messages queued by earlier versions still run."""

from __future__ import annotations

import io
import logging

import pytest
import queueworker
from PIL import Image
from qw_core.messages import EmailTask, ImageTask, TaskMessage
from qw_core.registry import Registry, RetryPolicy, default_registry, define_task
from qw_core.settings import WorkerSettings
from qw_core.storage import LocalStorage
from qw_core.store import SqliteStore
from qw_workers import images, mail
from qw_workers.__main__ import resolve_kind
from qw_workers.builtins import BUILTINS, worker_registry
from qw_workers.context import Output, TaskContext
from qw_workers.handlers import make_handler

# An image task exactly as the API published it before the built-ins were tasks: the wire form they keep.
OLD_IMAGE_MESSAGE = (
    b'{"v":1,"task_id":"0123456789abcdef0123456789abcdef","tenant":"acme","created_at":"2025-06-01T12:00:00Z",'
    b'"payload":{"kind":"image","source_key":"uploads/acme/in.png","source_format":"PNG",'
    b'"options":{"width":8,"height":null,"thumbnail":false,"format":"JPEG","watermark":null,"quality":85}}}'
)


def _context(tmp_path, task_id: str, tenant: str) -> TaskContext:
    log = logging.LoggerAdapter(logging.getLogger("t"), {})
    return TaskContext(WorkerSettings(), SqliteStore(":memory:"), LocalStorage(tmp_path), 1, log, task_id, tenant)


def _png(width: int, height: int) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (width, height), (200, 30, 30)).save(out, "PNG")
    return out.getvalue()


@pytest.mark.parametrize(
    ("kind", "model", "body"), [("image", ImageTask, images.process), ("email", EmailTask, mail.send)]
)
def test_each_built_in_kind_is_a_registry_entry_with_its_wire_model_and_the_workers_retry_settings(kind, model, body):
    spec = BUILTINS.get(kind)
    assert spec is not None and spec.builtin and spec.fn is body and spec.model is model
    assert spec.policy == RetryPolicy() and spec.time_limit is None  # QW_MAX_ATTEMPTS, QW_RETRY_DELAYS: as before
    assert spec.json_schema()["properties"]["kind"]["const"] == kind
    assert BUILTINS.kinds() == ("email", "image")


def test_the_worker_finds_a_built_in_kind_in_the_registry_and_runs_it_through_make_handler(tmp_path):
    """Given a message in the form earlier versions queued, when the worker's entry point resolves `image` and builds
    its handler the one way it builds any, then the image body runs and its result is stored under the task."""
    spec = resolve_kind("image", "")
    assert spec is BUILTINS.get("image")
    task = TaskMessage.from_bytes(OLD_IMAGE_MESSAGE)
    ctx = _context(tmp_path, task.task_id, task.tenant)
    ctx.storage.write("uploads/acme/in.png", _png(40, 20))

    key = make_handler(spec)(task, ctx)

    assert key == ctx.storage.task_key("results", "acme", task.task_id, "JPEG")
    with Image.open(io.BytesIO(ctx.storage.read(key))) as out:
        assert (out.format, out.size) == ("JPEG", (8, 4))


def test_make_handler_gives_a_built_in_body_its_payload_model_and_the_context(tmp_path):
    seen = []
    reg = Registry()

    @define_task("email", payload=EmailTask, registry=reg)
    def body(payload: EmailTask, ctx: TaskContext) -> Output:
        seen.append((payload, ctx.task_id, ctx.tenant))
        return Output(result_key="k")

    task = TaskMessage.model_validate(
        {"task_id": "t1", "tenant": "acme", "created_at": "2025-06-01T12:00:00Z",
         "payload": {"kind": "email", "to": "a@example.com", "subject": "hi", "text": "x"}}
    )  # fmt: skip
    assert make_handler(body)(task, _context(tmp_path, "t1", "acme")) == Output(result_key="k")
    assert seen == [(task.payload, "t1", "acme")] and isinstance(seen[0][0], EmailTask)


@pytest.mark.parametrize("kind", ["image", "email"])
def test_a_user_module_cannot_define_a_built_in_kind(kind):
    with pytest.raises(ValueError, match=f"task kind '{kind}' is reserved by queueworker"):
        queueworker.task(kind, registry=Registry())(lambda x: x)
    # Not even through the core decorator: the worker's registry refuses a second definition of the name.
    theirs = Registry()
    define_task(kind, payload=BUILTINS.get(kind).model, registry=theirs)(lambda payload, ctx: None)
    with pytest.raises(ValueError, match=f"task kind '{kind}' is already defined by qw_workers"):
        Registry([*BUILTINS, *theirs])


def test_only_a_kind_the_envelope_carries_can_be_built_in_and_its_body_has_no_time_limit():
    with pytest.raises(ValueError, match="'thumbnail' is not a built-in kind"):
        define_task("thumbnail", payload=ImageTask, registry=Registry())(images.process)
    with pytest.raises(ValueError, match="takes no time_limit"):
        define_task("image", payload=ImageTask, time_limit=5, registry=Registry())


def test_a_workers_registry_holds_the_built_ins_and_the_apps_kinds():
    reg = worker_registry("tests.support.sdk_tasks")
    assert {"image", "email", "inventory", "flaky"} <= set(reg.kinds())
    assert [s.kind for s in reg if s.builtin] == ["email", "image"]
    assert "image" not in default_registry  # importing the built-ins defines nothing in the process's own registry
