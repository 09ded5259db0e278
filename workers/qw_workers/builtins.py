"""The built-in kinds, defined like any other: `define_task`, the decorator under `queueworker.task`.

They are kept in their own registry, not the process's: importing them (the API does, to list them) must not change
which user kinds a process defines. Their payload models are the envelope's own (ImageTask, EmailTask), so messages
queued by any earlier version run unchanged; their retry policy is the workers' settings (QW_MAX_ATTEMPTS,
QW_RETRY_DELAYS, QW_RETRY_JITTER), their bodies raise PermanentError / RetryableError / Deferred to steer it.
Their producers are the API's own routes (POST /v1/images uploads the file, POST /v1/emails), never
POST /v1/tasks/{kind}: a client must not name storage keys.
"""

from __future__ import annotations

from qw_core.messages import EmailTask, ImageTask
from qw_core.registry import Registry, define_task, load_app

from qw_workers import images, mail

BUILTINS = Registry()

image = define_task("image", payload=ImageTask, registry=BUILTINS)(images.process)
email = define_task("email", payload=EmailTask, registry=BUILTINS)(mail.send)


def worker_registry(app: str) -> Registry:
    """Every kind a worker can run: the built-ins, then those `app` (QW_APP / --app) defines once imported.

    Raises AppNotFound for a module that is not importable, ValueError if it (re)defines a built-in kind.
    """
    return Registry([*BUILTINS, *load_app(app)])
