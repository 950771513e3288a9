"""What the storage facade and its backends share: keys, object info, the backend protocol.

A module of its own so that the backends (:mod:`resources.local_backend`,
:mod:`resources.s3_backend`) never import the facade that builds them.
"""

import io
import re
from collections.abc import Iterator
from contextlib import AbstractContextManager
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Protocol


class UnsafeKeyError(ValueError):
    """A key that would read or write outside the storage root."""


PROJECT_NAME = re.compile(r"[a-z0-9][a-z0-9_-]{0,62}")


def check_key(key: str) -> str:
    if not key or key.startswith("/") or "\\" in key or "\x00" in key:
        raise UnsafeKeyError(f"unsafe storage key: {key!r}")
    if any(part in ("", ".", "..") for part in key.split("/")):
        raise UnsafeKeyError(f"unsafe storage key: {key!r}")
    return key


@dataclass(frozen=True)
class ObjectInfo:
    """What the storage knows about one stored object."""

    key: str
    size: int
    version: str  # content identity: the ETag on S3, size and mtime in a local folder
    modified_ns: int


class Backend(Protocol):
    uri: str
    is_local: bool

    def stat(self, key: str) -> ObjectInfo | None: ...
    def list(self, prefix: str, start_after: str | None = None) -> Iterator[ObjectInfo]: ...
    def list_names(
        self, folder: str, start_after: str | None = None, reverse: bool = False
    ) -> Iterator[str]: ...
    def open_read(self, key: str) -> AbstractContextManager[io.BufferedReader]: ...
    def open_write(self, key: str) -> AbstractContextManager[IO[bytes]]: ...
    def put_file(self, local_path: Path, key: str) -> None: ...
    def matches_file(self, local_path: Path, key: str) -> bool: ...
    def delete_prefix(self, prefix: str) -> None: ...
    def delete(self, key: str) -> None: ...
    def local_path(self, key: str) -> Path | None: ...
