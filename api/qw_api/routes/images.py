from __future__ import annotations

import hashlib
import logging
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from typing import Any, BinaryIO

from fastapi import APIRouter, HTTPException, Request
from fastapi.responses import Response
from pydantic import ValidationError
from qw_core.images import ImageInfo, ImageRejected, Source, check, inspect
from qw_core.messages import IMAGE_FORMATS, ImageOptions, ImageTask, TaskMessage, new_task_id, utcnow
from qw_core.storage import Storage, StorageFull, StorageUnavailable
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import UploadFile

from ..deps import DelayQuery, IdempotencyKeyHeader, ProducerDep, Services, ServicesDep
from ..limits import BodyTooLarge
from ..schemas import TaskAccepted, problems
from ..service import accepted, idempotency_key, not_before_of, submit, unavailable
from ..uploads import Busy

router = APIRouter(prefix="/v1", tags=["images"])
log = logging.getLogger("qw_api.images")

OPTION_FIELDS = tuple(ImageOptions.model_fields)
_SCHEMA_KEYS = {"type", "minimum", "maximum", "maxLength", "enum", "description"}


def _form_field(schema: dict[str, Any]) -> dict[str, Any]:
    """An ImageOptions property as a form field: never null (an empty field is left out), so drop that variant."""
    variants = [v for v in schema.get("anyOf", [schema]) if v.get("type") != "null"]
    merged = {**schema, **variants[0]}
    return {k: v for k, v in merged.items() if k in _SCHEMA_KEYS}


def _form_schema() -> dict[str, Any]:
    """The multipart form for OpenAPI, derived from ImageOptions so its limits are stated once."""
    options = ImageOptions.model_json_schema()["properties"]
    formats = f"{', '.join(IMAGE_FORMATS[:-1])} or {IMAGE_FORMATS[-1]}"
    properties = {"file": {"type": "string", "format": "binary", "description": formats}}
    properties |= {name: _form_field(options[name]) for name in OPTION_FIELDS}
    schema = {"type": "object", "required": ["file"], "properties": properties}
    return {"requestBody": {"required": True, "content": {"multipart/form-data": {"schema": schema}}}}


def _caused_by(exc: BaseException | None, kind: type[BaseException]) -> bool:
    while exc is not None:
        if isinstance(exc, kind):
            return True
        exc = exc.__cause__ or exc.__context__
    return False


def _unprocessable(msg: str) -> HTTPException:
    return HTTPException(422, msg)


@router.post(
    "/images",
    status_code=202,
    response_model=TaskAccepted,
    openapi_extra=_form_schema(),
    responses=problems(401, 413, 415, 422, 503, 507),
)
async def upload_image(
    request: Request,
    tenant: ProducerDep,
    services: ServicesDep,
    idempotency: IdempotencyKeyHeader = None,
    delay: DelayQuery = None,
) -> Response:
    """Upload an image to process (`?delay=` seconds: no earlier). The file is identified by its content (header
    and a bounded check of the data, qw_core/images.py), never by its name or content type. The file is never
    held in memory whole: the form parser spools it to /tmp, the check reads it from there, and the store gets it
    a chunk (or a multipart part) at a time."""
    settings = services.settings
    if not request.headers.get("content-type", "").startswith("multipart/form-data"):
        raise HTTPException(415, "send the image as multipart/form-data with a 'file' field")
    try:
        # The pod's memory: bodies and checks in flight are bounded (qw_api/uploads.py); past the wait, 503.
        async with services.uploads.body(request.headers.get("content-length")):
            async with _form(request, settings.max_upload_bytes) as (file, raw_options):
                options = _options(raw_options)
                info = await _identify(services, file)
                key = services.storage.new_key("uploads", tenant, info.format)
                await run_in_threadpool(_store, services.storage, key, file)
                digest = await run_in_threadpool(_sha256, file) if idempotency is not None else ""
    except Busy:
        raise unavailable(services, "too many uploads are in progress on this server") from None
    except StorageUnavailable as exc:  # the client learns that it failed, the log says where (no endpoint leaks out)
        log.warning("upload refused: %s", exc)
        services.metrics.rejected_uploads.labels("storage-unavailable").inc()
        raise unavailable(services, "the upload storage is unavailable") from None
    except StorageFull:
        services.metrics.rejected_uploads.labels("storage-full").inc()
        raise HTTPException(
            507,
            "the server's upload storage is full; nothing was stored or queued, try again later",
            headers={"Retry-After": str(settings.retry_after_seconds)},
        ) from None
    payload = ImageTask(source_key=key, source_format=info.format, options=options)  # type: ignore[arg-type]
    task = TaskMessage(task_id=new_task_id(), tenant=tenant, created_at=utcnow(), payload=payload)
    idem = None
    if idempotency is not None:  # the same request: the same file's bytes and options (the stored name is new)
        same = {"sha256": digest, "options": options.model_dump(mode="json")}
        idem = idempotency_key(services, idempotency, "image", same)
    return accepted(request, await submit(services, task, key, idem, not_before_of(delay)))


@asynccontextmanager
async def _form(request: Request, max_bytes: int) -> AsyncIterator[tuple[BinaryIO, dict[str, str]]]:
    """The file (spooled by the form parser: in memory up to 1 MiB, on disk past it) and the option fields of a
    multipart body, while the form is open; 400/413/422 for what is wrong with it."""
    async with AsyncExitStack() as stack:
        try:
            form = await stack.enter_async_context(
                request.form(max_files=1, max_fields=len(OPTION_FIELDS), max_part_size=1024)
            )
            upload = form.get("file")
            if not isinstance(upload, UploadFile):
                raise _unprocessable("the 'file' field is missing or is not a file")
            unknown = set(form.keys()) - {"file", *OPTION_FIELDS}
            if unknown:
                raise _unprocessable(f"unknown fields: {', '.join(sorted(unknown))}")
            raw_options = {k: v for k, v in form.items() if k in OPTION_FIELDS and isinstance(v, str) and v != ""}
            file: BinaryIO = upload.file
            size = file.seek(0, 2)
        except HTTPException:
            raise
        except Exception as exc:  # malformed multipart bodies raise several parser errors
            if _caused_by(exc, BodyTooLarge):
                raise HTTPException(413, f"the upload is larger than {max_bytes} bytes") from None
            raise HTTPException(400, f"malformed multipart body: {exc}") from None
        if size > max_bytes:
            raise HTTPException(413, f"the file is larger than {max_bytes} bytes")
        file.seek(0)
        yield file, raw_options


def _store(storage: Storage, key: str, file: BinaryIO) -> None:
    file.seek(0)
    storage.write_file(key, file)


def _sha256(file: BinaryIO) -> str:
    file.seek(0)
    digest = hashlib.sha256()
    while block := file.read(1024 * 1024):
        digest.update(block)
    return digest.hexdigest()


def _options(raw: dict[str, str]) -> ImageOptions:
    try:
        return ImageOptions.model_validate(raw)
    except ValidationError as exc:
        raise HTTPException(422, exc.errors(include_url=False, include_context=False, include_input=False)) from None


async def _identify(services: Services, data: Source) -> ImageInfo:
    """The header, then the bounded check inside the check budget; 422 for what is not an accepted image."""
    settings = services.settings
    try:
        info = await run_in_threadpool(inspect, data, settings.allowed_formats, settings.max_image_pixels)
        async with services.uploads.check(info.check_bytes):
            await run_in_threadpool(check, data, info, settings.max_image_pixels)
    except ImageRejected as exc:
        services.metrics.rejected_uploads.labels("not-an-accepted-image").inc()
        raise HTTPException(422, f"the file was refused: {exc}") from None
    return info
