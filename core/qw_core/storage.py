"""Where uploads and results live: a local directory (or shared volume), or an S3-compatible bucket
(qw_core.s3storage). Keys are generated, never taken from clients: `<area>/<tenant>/<id>.<ext>`, so a tenant's
objects share a prefix. Every backend writes then commits: a reader sees a whole object or none.

Errors: StorageError (a key that escapes the root), StorageFull (no room: 507), StorageUnavailable (the store
cannot be reached or refused the call: the API answers 503 + Retry-After, a worker retries with backoff), and
FileNotFoundError for a key that is not there.
"""

from __future__ import annotations

import errno
import os
import shutil
import tempfile
import uuid
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO, Protocol

if TYPE_CHECKING:
    from qw_core.settings import CommonSettings

from qw_core.messages import IMAGE_FORMATS

# A format's file extension is its name in lower case, except JPEG's: .jpg is what people expect.
_EXT: dict[str, str] = {fmt: "jpg" if fmt == "JPEG" else fmt.lower() for fmt in IMAGE_FORMATS}
# What a stored image is served as, by its file extension.
MEDIA_TYPES = {ext: f"image/{fmt.lower()}" for fmt, ext in _EXT.items()}


def extension_for(fmt: str) -> str:
    return _EXT[fmt]


def _safe(name: str) -> str:
    return "".join(c for c in name if c.isalnum() or c in "-_")[:64]


class StorageError(Exception):
    pass


class StorageUnavailable(Exception):
    """The store cannot be reached, timed out or refused the call: try again later (nothing was written)."""


class StorageFull(StorageError):
    """The volume (or the quota) has no room left: nothing of the write is left behind."""


_FULL = (errno.ENOSPC, errno.EDQUOT)


@dataclass
class Blob:
    """An object opened for reading: its size and its bytes in chunks; close() when done (or not all read)."""

    size: int
    chunks: Iterator[bytes]
    close: Callable[[], None]


COPY_CHUNK = 1024 * 1024


class Storage(Protocol):
    """What the API, the workers and the janitor use; LocalStorage and S3Storage implement it."""

    def new_key(self, area: str, tenant: str, fmt: str) -> str: ...
    def task_key(self, area: str, tenant: str, task_id: str, fmt: str) -> str: ...
    def write(self, key: str, data: bytes) -> None: ...
    def write_file(self, key: str, src: BinaryIO) -> None: ...
    def read(self, key: str) -> bytes: ...
    def read_into(self, key: str, dst: BinaryIO) -> None: ...
    def open(self, key: str) -> Blob: ...
    def exists(self, key: str) -> bool: ...
    def delete(self, key: str) -> None: ...
    def delete_many(self, keys: Iterable[str]) -> list[str]: ...
    def local_path(self, key: str) -> Path | None: ...
    def presign(self, key: str, seconds: int, filename: str, media_type: str) -> str | None: ...
    def expire(self, areas: dict[str, float]) -> bool: ...


class Keys:
    """The key scheme every backend shares."""

    def new_key(self, area: str, tenant: str, fmt: str) -> str:
        return self.task_key(area, tenant, uuid.uuid4().hex, fmt)

    def task_key(self, area: str, tenant: str, task_id: str, fmt: str) -> str:
        """A stable key: a redelivered task overwrites its own earlier result instead of leaving orphans."""
        safe_tenant = _safe(tenant) or "t"
        return f"{area}/{safe_tenant}/{_safe(task_id) or uuid.uuid4().hex}.{extension_for(fmt)}"


class LocalStorage(Keys):
    def __init__(self, root: Path) -> None:
        self.root = Path(root).resolve()
        self.root.mkdir(parents=True, exist_ok=True)

    def path(self, key: str) -> Path:
        p = (self.root / key).resolve()
        if not p.is_relative_to(self.root) or p == self.root:
            raise StorageError(f"key escapes the storage root: {key!r}")
        return p

    def local_path(self, key: str) -> Path | None:
        return self.path(key)

    def presign(self, key: str, seconds: int, filename: str, media_type: str) -> str | None:
        return None  # a directory has no URLs of its own: the API serves the file

    def expire(self, areas: dict[str, float]) -> bool:
        return False  # no lifecycle rules on a directory: the janitor's passes apply retention

    def write(self, key: str, data: bytes) -> None:
        """Atomic: readers see the whole file or none (temp file in the same dir, fsync, rename)."""
        self._write(key, lambda f: f.write(data))

    def write_file(self, key: str, src: BinaryIO) -> None:
        """`src` from its current position to its end, copied a chunk at a time; atomic like write()."""
        self._write(key, lambda f: shutil.copyfileobj(src, f, COPY_CHUNK))

    def _write(self, key: str, fill: Callable[[BinaryIO], object]) -> None:
        dest = self.path(key)
        try:
            dest.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=dest.parent, prefix=".tmp-")
        except OSError as exc:
            raise (StorageFull(f"no room in {self.root}: {exc.strerror}") if exc.errno in _FULL else exc) from exc
        try:
            with os.fdopen(fd, "wb") as f:
                fill(f)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, dest)
        except BaseException as exc:
            Path(tmp).unlink(missing_ok=True)
            if isinstance(exc, OSError) and exc.errno in _FULL:
                raise StorageFull(f"no room in {self.root}: {exc.strerror}") from exc
            raise

    def usage(self) -> tuple[int, int]:
        return disk_usage(self.root)

    def read(self, key: str) -> bytes:
        return self.path(key).read_bytes()

    def read_into(self, key: str, dst: BinaryIO) -> None:
        with self.path(key).open("rb") as f:
            shutil.copyfileobj(f, dst, COPY_CHUNK)

    def open(self, key: str) -> Blob:
        f = self.path(key).open("rb")
        size = os.fstat(f.fileno()).st_size
        return Blob(size, iter(lambda: f.read(COPY_CHUNK), b""), f.close)

    def exists(self, key: str) -> bool:
        return self.path(key).is_file()

    def delete(self, key: str) -> None:
        self.path(key).unlink(missing_ok=True)

    def delete_many(self, keys: Iterable[str]) -> list[str]:
        """Removes what is there; returns the keys refused as not ours (StorageError), leaving those alone."""
        refused = []
        for key in keys:
            try:
                self.delete(key)
            except StorageError:
                refused.append(key)
        return refused


def open_storage(settings: CommonSettings) -> Storage:
    """The backend QW_STORAGE_URL names: `s3://bucket/prefix`, or (empty) the directory QW_STORAGE_DIR."""
    if settings.storage_url:
        from qw_core.s3storage import S3Storage

        return S3Storage.from_settings(settings)
    return LocalStorage(settings.storage_dir)


def disk_usage(root: Path) -> tuple[int, int]:
    """(bytes used, bytes free to unprivileged writers) of the volume holding `root`."""
    du = shutil.disk_usage(root)
    return du.used, du.free
