"""Uploads and results in an S3-compatible bucket (AWS S3, SeaweedFS, MinIO, Ceph RGW...), through boto3.

Why boto3: AWS's own client, the most used and best kept; its transfer manager streams a file in parts (multipart
upload, aborted on failure so no part is left visible) and presigns URLs locally. The workers are threads, so a sync
client fits them; the API calls it through its thread pool like every store call (the upload's image check runs
there anyway). An asyncio client (aiobotocore) would pin botocore to exact versions and buy nothing measurable here.

Write then commit: a PUT and a completed multipart upload are atomic in S3 (readers see the old object or the
whole new one), and a failed multipart upload is aborted. Object keys are `<prefix>/<key>`, keys being the
generated `<area>/<tenant>/<id>.<ext>` of qw_core.storage.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO, TypeVar
from urllib.parse import urlsplit

import boto3
from boto3.s3.transfer import S3UploadFailedError, TransferConfig
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError
from pydantic import SecretStr

from qw_core.storage import COPY_CHUNK, Blob, Keys, StorageError, StorageUnavailable

if TYPE_CHECKING:
    from qw_core.settings import CommonSettings

T = TypeVar("T")
# Parts of 8 MiB, one at a time in the calling thread: an upload holds one part in memory, whatever its size (the
# API's memory is the point; parts in parallel would hold several).
TRANSFER = TransferConfig(multipart_threshold=8 * 1024 * 1024, multipart_chunksize=8 * 1024 * 1024, use_threads=False)
_MISSING = {"404", "NoSuchKey", "NotFound"}
DAY = 24 * 3600


def secret_value(value: SecretStr) -> str:
    """A secret setting's value, or the content of the file it names as `@/path` (a mounted Secret)."""
    raw = value.get_secret_value().strip()
    return Path(raw[1:]).read_text().strip() if raw.startswith("@") else raw


def split_url(url: str) -> tuple[str, str]:
    """`s3://bucket/some/prefix` -> ("bucket", "some/prefix/"); no prefix -> ""."""
    parsed = urlsplit(url)
    prefix = parsed.path.strip("/")
    return parsed.netloc, f"{prefix}/" if prefix else ""


def expiry_days(seconds: float) -> int:
    """A lifecycle rule counts whole days from an object's creation: the first whole day at or past `seconds`,
    plus one, so the rule never removes what the janitor would still keep (it is the backstop, not the policy)."""
    return math.ceil(seconds / DAY) + 1


def _client(settings: CommonSettings, endpoint: str) -> Any:
    key_id, secret = secret_value(settings.s3_access_key_id), secret_value(settings.s3_secret_access_key)
    config = Config(
        signature_version="s3v4",
        s3={"addressing_style": "path" if settings.s3_path_style else "virtual"},
        connect_timeout=settings.s3_timeout_seconds,
        read_timeout=settings.s3_timeout_seconds,
        retries={"mode": "standard", "max_attempts": settings.s3_max_attempts},
    )
    return boto3.session.Session().client(
        "s3",
        endpoint_url=endpoint or None,
        region_name=settings.s3_region,
        aws_access_key_id=key_id or None,
        aws_secret_access_key=secret or None,
        config=config,
    )


class S3Storage(Keys):
    def __init__(self, client: Any, bucket: str, prefix: str = "", presigner: Any = None) -> None:
        self.client = client
        self.bucket = bucket
        self.prefix = prefix
        self.presigner = presigner or client

    @classmethod
    def from_settings(cls, settings: CommonSettings) -> S3Storage:
        bucket, prefix = split_url(settings.storage_url)
        client = _client(settings, settings.s3_endpoint_url)
        public = getattr(settings, "s3_public_endpoint_url", "")
        return cls(client, bucket, prefix, _client(settings, public) if public else client)

    def object_key(self, key: str) -> str:
        parts = key.split("/")
        if not key or key.startswith("/") or any(p in ("", ".", "..") for p in parts) or "\\" in key:
            raise StorageError(f"not a storage key: {key!r}")
        return self.prefix + key

    def _call(self, what: str, key: str, fn: Callable[[], T]) -> T:
        """One S3 call; its failures as the storage errors callers handle (see qw_core.storage)."""
        try:
            return fn()
        except ClientError as exc:
            code = str(exc.response.get("Error", {}).get("Code", ""))
            if code in _MISSING:
                raise FileNotFoundError(f"no object {key!r} in {self.bucket}") from exc
            raise StorageUnavailable(f"S3 {what} of {key!r} refused: {code or exc}") from exc
        except (BotoCoreError, S3UploadFailedError, OSError) as exc:
            if isinstance(exc, FileNotFoundError):
                raise
            raise StorageUnavailable(f"S3 {what} of {key!r} failed: {exc}") from exc

    def write(self, key: str, data: bytes) -> None:
        k = self.object_key(key)
        self._call("write", key, lambda: self.client.put_object(Bucket=self.bucket, Key=k, Body=data))

    def write_file(self, key: str, src: BinaryIO) -> None:
        """`src` from its position on, in parts when large (multipart upload, aborted when a part fails)."""
        k = self.object_key(key)
        self._call("upload", key, lambda: self.client.upload_fileobj(src, self.bucket, k, Config=TRANSFER))

    def read(self, key: str) -> bytes:
        k = self.object_key(key)
        obj = self._call("read", key, lambda: self.client.get_object(Bucket=self.bucket, Key=k))
        return self._call("read", key, obj["Body"].read)

    def read_into(self, key: str, dst: BinaryIO) -> None:
        """One GET, copied a chunk at a time (the transfer manager's HEAD and thread pool cost more than they save
        on objects of a few MiB: measured in bench/bench_s3.py)."""
        blob = self.open(key)
        try:
            self._call("read", key, lambda: [dst.write(chunk) for chunk in blob.chunks])
        finally:
            blob.close()

    def open(self, key: str) -> Blob:
        k = self.object_key(key)
        obj = self._call("read", key, lambda: self.client.get_object(Bucket=self.bucket, Key=k))
        body = obj["Body"]
        return Blob(int(obj["ContentLength"]), body.iter_chunks(COPY_CHUNK), body.close)

    def exists(self, key: str) -> bool:
        k = self.object_key(key)
        try:
            self._call("stat", key, lambda: self.client.head_object(Bucket=self.bucket, Key=k))
        except FileNotFoundError:
            return False
        return True

    def delete(self, key: str) -> None:
        k = self.object_key(key)
        self._call("delete", key, lambda: self.client.delete_object(Bucket=self.bucket, Key=k))

    def delete_many(self, keys: Iterable[str]) -> list[str]:
        """Up to 1,000 keys per request (S3's DeleteObjects); a key that is not there is no error. Returns the keys
        refused as not storage keys (left alone)."""
        objects, refused = [], []
        for key in keys:
            try:
                objects.append({"Key": self.object_key(key)})
            except StorageError:
                refused.append(key)
        for i in range(0, len(objects), 1000):
            batch = {"Objects": objects[i : i + 1000], "Quiet": True}
            out = self._call("delete", "(batch)", partial(self.client.delete_objects, Bucket=self.bucket, Delete=batch))
            errors = [e for e in out.get("Errors", []) if e.get("Code") not in _MISSING]
            if errors:
                raise StorageUnavailable(f"S3 refused to delete {len(errors)} objects: {errors[0].get('Code')}")
        return refused

    def local_path(self, key: str) -> Path | None:
        return None

    def presign(self, key: str, seconds: int, filename: str, media_type: str) -> str | None:
        """A GET URL valid `seconds`, answering with the media type and a download name (computed locally)."""
        params = {
            "Bucket": self.bucket,
            "Key": self.object_key(key),
            "ResponseContentType": media_type,
            "ResponseContentDisposition": f'attachment; filename="{filename}"',
        }
        return str(self.presigner.generate_presigned_url("get_object", Params=params, ExpiresIn=seconds))

    def expire(self, areas: dict[str, float]) -> bool:
        """Lifecycle rules: objects under each `<prefix><area>/` expire `expiry_days` after their creation. The
        janitor's backstop for what no task row names any more (an API that died between storing an upload and
        recording its task). Raises StorageUnavailable when the server refuses lifecycle rules."""
        ours = [
            {
                "ID": f"queueworker-{self.prefix}{area}"[:255],
                "Filter": {"Prefix": f"{self.prefix}{area}/"},
                "Status": "Enabled",
                "Expiration": {"Days": expiry_days(seconds)},
            }
            for area, seconds in areas.items()
        ]
        ids = {r["ID"] for r in ours}
        try:  # keep the bucket's other rules (another prefix's, the owner's own)
            current = self._call(
                "lifecycle", self.bucket, lambda: self.client.get_bucket_lifecycle_configuration(Bucket=self.bucket)
            )
            others = [r for r in current.get("Rules", []) if r.get("ID") not in ids]
        except StorageUnavailable as exc:
            if "NoSuchLifecycleConfiguration" not in str(exc):
                raise
            others = []
        config = {"Rules": others + ours}
        self._call(
            "lifecycle",
            self.bucket,
            lambda: self.client.put_bucket_lifecycle_configuration(Bucket=self.bucket, LifecycleConfiguration=config),
        )
        return True
