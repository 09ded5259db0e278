"""Versioned task messages: the body of every AMQP message the API publishes and the workers consume."""

from __future__ import annotations

import re
import uuid
from datetime import UTC, datetime
from typing import Annotated, Any, Literal, get_args

from pydantic import (
    BaseModel,
    ConfigDict,
    Discriminator,
    EmailStr,
    Field,
    StringConstraints,
    Tag,
    field_validator,
    model_validator,
)

SCHEMA_VERSION: Literal[1] = 1
TaskKind = Literal["image", "email"]
KINDS: tuple[TaskKind, ...] = ("image", "email")
# A user kind names queues (`qw.<kind>`, `qw.<kind>.dead`) and routing keys: no dots, so one kind's queue can never be
# another's dead queue, and a kind is the last word of a delay ladder routing key. Reserved names are ours (built-ins,
# the notifications log, the delay ladder `qw.delay.*`, and `retry`, once the name of the retry queues).
KIND_PATTERN = r"^[a-z][a-z0-9_-]{0,47}$"
RESERVED_KINDS: frozenset[str] = frozenset({*KINDS, "notifications", "tasks", "retry", "dead", "delay"})
ImageFormat = Literal["JPEG", "PNG", "WEBP", "GIF"]
# The one list of image formats: what the API accepts and workers write (settings, storage and the form read it).
IMAGE_FORMATS: tuple[ImageFormat, ...] = get_args(ImageFormat)

_HEADER_BREAK = re.compile(r"[\r\n\x00]")


def new_task_id() -> str:
    return uuid.uuid4().hex


def utcnow() -> datetime:
    return datetime.now(UTC)


def _no_header_injection(v: str) -> str:
    if _HEADER_BREAK.search(v):
        raise ValueError("must not contain CR, LF or NUL characters")
    return v


HeaderText = Annotated[str, StringConstraints(max_length=998)]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ImageOptions(_Strict):
    """What to do with an uploaded image. Sizes are upper bounds; aspect ratio is always kept."""

    width: int | None = Field(default=None, ge=1, le=8192)
    height: int | None = Field(default=None, ge=1, le=8192)
    thumbnail: bool = Field(default=False, description="Shrink to fit within 256x256 (or width/height).")
    format: ImageFormat | None = Field(default=None, description="Output format; default keeps the input's.")
    watermark: str | None = Field(default=None, max_length=100)
    quality: int = Field(default=85, ge=1, le=100)

    @field_validator("watermark")
    @classmethod
    def _printable(cls, v: str | None) -> str | None:
        if v is not None and (not v.strip() or any(ord(c) < 32 for c in v)):
            raise ValueError("watermark must be printable text")
        return v


class ImageTask(_Strict):
    kind: Literal["image"] = "image"
    source_key: str
    source_format: ImageFormat
    options: ImageOptions = ImageOptions()


class EmailFields(_Strict):
    """What a client sends to queue an email (also the body of an email task)."""

    to: EmailStr = Field(description="One recipient address.")
    subject: HeaderText = Field(min_length=1, description="One line: CR, LF and NUL are refused.")
    text: str | None = Field(default=None, max_length=100_000, description="Plain-text body.")
    html: str | None = Field(default=None, max_length=200_000, description="HTML body.")
    template: str | None = Field(default=None, max_length=64, description="A named template instead of text/html.")
    context: dict[str, str | int | float | bool] = Field(default_factory=dict, description="Template values.")
    reply_to: EmailStr | None = None

    @field_validator("subject")
    @classmethod
    def _subject_one_line(cls, v: str) -> str:
        return _no_header_injection(v)

    @model_validator(mode="after")
    def _has_body(self) -> EmailFields:
        if not (self.text or self.html or self.template):
            raise ValueError("give text, html or a template")
        return self


class EmailTask(EmailFields):
    kind: Literal["email"] = "email"

    @classmethod
    def from_fields(cls, fields: EmailFields) -> EmailTask:
        """Already validated by the same validators: no second pass over the addresses (the values as they are,
        not copied through a dict: a fifth of the cost)."""
        return cls.model_construct(fields.model_fields_set | {"kind"}, **fields.__dict__, kind="email")


class UserTask(_Strict):
    """A task of a kind defined with the SDK (`queueworker.task`): its arguments, as JSON, by parameter name.

    The envelope only checks the shape; the kind's own schema (built from the task function's signature) is
    checked by the producer when it knows the kind and always by the worker, before the body runs.
    """

    kind: Annotated[str, StringConstraints(pattern=KIND_PATTERN)]
    args: dict[str, Any] = Field(default_factory=dict)


def _payload_tag(v: Any) -> str:
    """Built-in kinds by name, anything else is a user kind (a dict on the wire, a model when built in code)."""
    kind = v.get("kind") if isinstance(v, dict) else getattr(v, "kind", None)
    return kind if kind in KINDS else "user"


TaskPayload = Annotated[
    Annotated[ImageTask, Tag("image")] | Annotated[EmailTask, Tag("email")] | Annotated[UserTask, Tag("user")],
    Discriminator(_payload_tag),
]


class TaskMessage(_Strict):
    """The envelope on the wire. `v` lets workers refuse bodies from a future schema."""

    v: Literal[1] = SCHEMA_VERSION
    task_id: str
    tenant: str
    created_at: datetime
    payload: TaskPayload

    @property
    def kind(self) -> str:
        return self.payload.kind

    def to_bytes(self) -> bytes:
        return self.model_dump_json().encode()

    @classmethod
    def from_bytes(cls, body: bytes) -> TaskMessage:
        return cls.model_validate_json(body)


class Notification(_Strict):
    v: Literal[1] = SCHEMA_VERSION
    notification_id: str
    tenant: str
    topic: Annotated[str, StringConstraints(min_length=1, max_length=100, pattern=r"^[A-Za-z0-9_.:-]+$")]
    data: dict[str, Any] = Field(default_factory=dict)
    created_at: datetime
