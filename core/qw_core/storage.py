"""File storage on a local directory or shared volume. Keys are generated, never taken from clients."""

from __future__ import annotations

import os
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
        dest.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=dest.parent, prefix=".tmp-")
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, dest)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise

    def read(self, key: str) -> bytes:
        return self.path(key).read_bytes()

    def exists(self, key: str) -> bool:
        return self.path(key).is_file()

    def delete(self, key: str) -> None:
        self.path(key).unlink(missing_ok=True)
