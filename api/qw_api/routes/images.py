from __future__ import annotations

from typing import Any

from fastapi import APIRouter, HTTPException, Request
from fastapi.responses import JSONResponse
from pydantic import ValidationError
from qw_core.images import ImageRejected, identify
from qw_core.messages import ImageOptions, ImageTask, TaskMessage, new_task_id, utcnow
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import UploadFile

from ..deps import ServicesDep, TenantDep
from ..limits import BodyTooLarge
from ..schemas import Problem, TaskAccepted
from ..service import accepted, submit

router = APIRouter(prefix="/v1", tags=["images"])

OPTION_FIELDS = ("width", "height", "thumbnail", "format", "watermark", "quality")
_FORM_SCHEMA: dict[str, Any] = {
    "requestBody": {
        "required": True,
        "content": {
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "required": ["file"],
                    "properties": {
                        "file": {"type": "string", "format": "binary", "description": "JPEG, PNG, WebP or GIF"},
                        "width": {"type": "integer", "minimum": 1, "maximum": 8192},
                        "height": {"type": "integer", "minimum": 1, "maximum": 8192},
                        "thumbnail": {"type": "boolean"},
                        "format": {"type": "string", "enum": ["JPEG", "PNG", "WEBP", "GIF"]},
                        "watermark": {"type": "string", "maxLength": 100},
                        "quality": {"type": "integer", "minimum": 1, "maximum": 100},
                    },
                }
            }
        },
    }
}


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
    openapi_extra=_FORM_SCHEMA,
    responses={
        401: {"model": Problem}, 413: {"model": Problem}, 415: {"model": Problem},
        422: {"model": Problem}, 503: {"model": Problem},
    },
)  # fmt: skip
async def upload_image(request: Request, tenant: TenantDep, services: ServicesDep) -> JSONResponse:
    """Upload an image to process. The file is identified by decoding it, never by its name or content type."""
    settings = services.settings
    if not request.headers.get("content-type", "").startswith("multipart/form-data"):
        raise HTTPException(415, "send the image as multipart/form-data with a 'file' field")
    try:
        async with request.form(max_files=1, max_fields=len(OPTION_FIELDS), max_part_size=1024) as form:
            upload = form.get("file")
            if not isinstance(upload, UploadFile):
                raise _unprocessable("the 'file' field is missing or is not a file")
            unknown = set(form.keys()) - {"file", *OPTION_FIELDS}
            if unknown:
                raise _unprocessable(f"unknown fields: {', '.join(sorted(unknown))}")
            raw_options = {k: v for k, v in form.items() if k in OPTION_FIELDS and isinstance(v, str) and v != ""}
            data = await upload.read(settings.max_upload_bytes + 1)
    except HTTPException:
        raise
    except Exception as exc:  # malformed multipart bodies raise several parser errors
        if _caused_by(exc, BodyTooLarge):
            raise HTTPException(413, f"the upload is larger than {settings.max_upload_bytes} bytes") from None
        raise HTTPException(400, f"malformed multipart body: {exc}") from None
    if len(data) > settings.max_upload_bytes:
        raise HTTPException(413, f"the file is larger than {settings.max_upload_bytes} bytes")
    try:
        options = ImageOptions.model_validate(raw_options)
    except ValidationError as exc:
        raise HTTPException(422, exc.errors(include_url=False, include_context=False, include_input=False)) from None
    try:
        info = await run_in_threadpool(identify, data, settings.allowed_formats, settings.max_image_pixels)
    except ImageRejected as exc:
        services.metrics.rejected_uploads.labels("not-an-accepted-image").inc()
        raise HTTPException(422, f"the file was refused: {exc}") from None
    key = services.storage.new_key("uploads", tenant, info.format)
    await run_in_threadpool(services.storage.write, key, data)
    payload = ImageTask(source_key=key, source_format=info.format, options=options)  # type: ignore[arg-type]
    task = TaskMessage(task_id=new_task_id(), tenant=tenant, created_at=utcnow(), payload=payload)
    await submit(services, task, source_key=key)
    return accepted(request, task.task_id)
