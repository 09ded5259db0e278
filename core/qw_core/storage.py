"""File storage on a local directory or shared volume. Keys are generated, never taken from clients."""

from __future__ import annotations

import errno
import os
import shutil
import tempfile
import uuid
from pathlib import Path

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


class StorageFull(StorageError):
    """The volume (or the quota) has no room left: nothing of the write is left behind."""


_FULL = (errno.ENOSPC, errno.EDQUOT)


class LocalStorage:
    def __init__(self, root: Path) -> None:
        self.root = Path(root).resolve()
        self.root.mkdir(parents=True, exist_ok=True)

    def path(self, key: str) -> Path:
        p = (self.root / key).resolve()
        if not p.is_relative_to(self.root) or p == self.root:
            raise StorageError(f"key escapes the storage root: {key!r}")
        return p

    def new_key(self, area: str, tenant: str, fmt: str) -> str:
        return self.task_key(area, tenant, uuid.uuid4().hex, fmt)

    def task_key(self, area: str, tenant: str, task_id: str, fmt: str) -> str:
        """A stable key: a redelivered task overwrites its own earlier result instead of leaving orphans."""
        safe_tenant = _safe(tenant) or "t"
        return f"{area}/{safe_tenant}/{_safe(task_id) or uuid.uuid4().hex}.{extension_for(fmt)}"

    def write(self, key: str, data: bytes) -> None:
        """Atomic: readers see the whole file or none (temp file in the same dir, fsync, rename)."""
        dest = self.path(key)
        try:
            dest.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=dest.parent, prefix=".tmp-")
        except OSError as exc:
            raise (StorageFull(f"no room in {self.root}: {exc.strerror}") if exc.errno in _FULL else exc) from exc
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(data)
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

    def exists(self, key: str) -> bool:
        return self.path(key).is_file()

    def delete(self, key: str) -> None:
        self.path(key).unlink(missing_ok=True)


def disk_usage(root: Path) -> tuple[int, int]:
    """(bytes used, bytes free to unprivileged writers) of the volume holding `root`."""
    du = shutil.disk_usage(root)
    return du.used, du.free
