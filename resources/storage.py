"""Batch storage: the inbox, outbox and work area under one root.

The layout is the same for every backend (see the README): ``inbox/``, ``outbox/<batch_id>/``
and ``work/<batch_id>/``. Keys are always relative, ``/``-separated and checked so that no key
can leave the root (``..``, absolute paths and symlinks pointing outside are refused).
"""

import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import dagster as dg
from pydantic import Field


class UnsafeKeyError(ValueError):
    """A key that would read or write outside the storage root."""


@dataclass(frozen=True)
class ObjectInfo:
    """What the storage knows about one stored object."""

    key: str
    size: int
    version: str  # content identity: an ETag on S3, size and mtime in a local folder
    modified_ns: int


class BatchStorage(dg.ConfigurableResource):
    """A local folder holding ``inbox/``, ``outbox/`` and ``work/``."""

    root: str = Field(
        default="./data",
        description="Folder that holds inbox/, outbox/ and work/ (BATCH_STORAGE).",
    )

    @property
    def uri(self) -> str:
        return str(self._root())

    def _root(self) -> Path:
        return Path(self.root).expanduser().resolve()

    def path(self, key: str) -> Path:
        """The local path of ``key``, refusing keys that leave the root."""
        if not key or key.startswith("/") or "\\" in key or "\x00" in key:
            raise UnsafeKeyError(f"unsafe storage key: {key!r}")
        parts = key.split("/")
        if any(part in ("", ".", "..") for part in parts):
            raise UnsafeKeyError(f"unsafe storage key: {key!r}")
        root = self._root()
        path = root.joinpath(*parts)
        if path.exists() and not path.resolve().is_relative_to(root):
            raise UnsafeKeyError(f"storage key points outside the root: {key!r}")
        return path

    def exists(self, key: str) -> bool:
        return self.path(key).is_file()

    def stat(self, key: str) -> ObjectInfo:
        st = self.path(key).stat()
        return ObjectInfo(key, st.st_size, f"{st.st_size}-{st.st_mtime_ns}", st.st_mtime_ns)

    def list(self, prefix: str) -> Iterator[ObjectInfo]:
        """Every regular file under ``prefix`` (a folder key), in key order."""
        base = self.path(prefix.rstrip("/"))
        if not base.is_dir():
            return
        root = self._root()
        for dirpath, dirnames, filenames in os.walk(base):
            dirnames.sort()
            for name in sorted(filenames):
                path = Path(dirpath) / name
                if path.is_symlink() or not path.is_file():
                    continue
                key = path.relative_to(root).as_posix()
                yield self.stat(key)

    @contextmanager
    def open_read(self, key: str) -> Iterator[IO[bytes]]:
        with self.path(key).open("rb") as stream:
            yield stream

    def read_bytes(self, key: str) -> bytes:
        return self.path(key).read_bytes()

    def read_json(self, key: str) -> Any:
        return json.loads(self.read_bytes(key))

    @contextmanager
    def open_write(self, key: str) -> Iterator[IO[bytes]]:
        """Write ``key`` atomically: readers see the old object or the whole new one."""
        path = self.path(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        try:
            with os.fdopen(fd, "wb") as stream:
                yield stream
                stream.flush()
                os.fsync(stream.fileno())
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise

    def write_bytes(self, key: str, data: bytes) -> None:
        with self.open_write(key) as stream:
            stream.write(data)

    def write_json(self, key: str, value: Any) -> None:
        self.write_bytes(key, json.dumps(value, indent=2).encode())

    def put_file(self, local_path: Path, key: str) -> None:
        """Copy a local file to ``key``, keeping its modification time."""
        with local_path.open("rb") as src, self.open_write(key) as dst:
            shutil.copyfileobj(src, dst, 1 << 20)
        st = local_path.stat()
        os.utime(self.path(key), ns=(st.st_atime_ns, st.st_mtime_ns))

    def delete_prefix(self, prefix: str) -> None:
        shutil.rmtree(self.path(prefix.rstrip("/")), ignore_errors=True)

    def local_dir(self, prefix: str) -> Path:
        """A local folder for append-only files (the journal) under ``prefix``."""
        path = self.path(prefix.rstrip("/"))
        path.mkdir(parents=True, exist_ok=True)
        return path
