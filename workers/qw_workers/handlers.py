"""The task bodies, registered by kind."""

from __future__ import annotations

from qw_workers import images, mail
from qw_workers.context import Handler

HANDLERS: dict[str, Handler] = {"image": images.handle, "email": mail.handle}
