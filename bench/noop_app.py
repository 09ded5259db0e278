"""The honest ceiling of the publish path: a FastAPI endpoint doing the same HTTP work as POST /v1/emails and
nothing else. The same Bearer lookup (sha256 of the key, constant-time compare, as qw_api.deps does), the same
pydantic body (qw_core.messages.EmailFields, email address validation included), a 202 with the same JSON shape.
No store, no broker, no metrics: whatever the API does beyond this is the price of its guarantees."""

from __future__ import annotations

import hashlib
import hmac
import uuid
from typing import Annotated

from fastapi import Depends, FastAPI, HTTPException
from fastapi.responses import JSONResponse
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from qw_core.messages import EmailFields

KEYS = {hashlib.sha256(b"bench-key").digest(): "bench"}
_bearer = HTTPBearer(auto_error=False)
app = FastAPI()


async def tenant(creds: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)]) -> str:
    if creds is not None and creds.scheme.lower() == "bearer":
        digest = hashlib.sha256(creds.credentials.encode()).digest()
        for known, name in KEYS.items():
            if hmac.compare_digest(known, digest):
                return name
    raise HTTPException(401, "missing or invalid API key")


@app.post("/v1/emails", status_code=202)
async def send_email(body: EmailFields, who: Annotated[str, Depends(tenant)]) -> JSONResponse:
    task_id = uuid.uuid4().hex
    url = f"http://127.0.0.1/v1/tasks/{task_id}"
    return JSONResponse({"task_id": task_id, "status": "queued", "status_url": url}, status_code=202)


if __name__ == "__main__":
    import gc
    import os

    import uvicorn

    gc.collect()
    gc.freeze()
    gc.set_threshold(20_000, 50, 1000)  # as python -m qw_api does
    uvicorn.run(app, host="127.0.0.1", port=int(os.environ["NOOP_PORT"]), log_config=None, access_log=False)
