"""Batch storage: the inbox, outbox and work area under one root, a folder or an S3 prefix.

The layout is the same for both backends (see the README): ``inbox/``, ``outbox/<batch_id>/``
and ``work/<batch_id>/``. Keys are relative and ``/``-separated; a key that could leave the
root (``..``, an absolute path, a NUL) is refused before any I/O.
"""

import io
import json
import os
from collections.abc import Iterator
from contextlib import AbstractContextManager
from pathlib import Path
from typing import IO, Any

import dagster as dg
from pydantic import Field, PrivateAttr

from resources.layout import project_root
from resources.storage_base import (
    PROJECT_NAME,
    Backend,
    ObjectInfo,
    UnsafeKeyError,
    check_key,
)

__all__ = ["DEFAULT_ROOT", "BatchStorage", "ObjectInfo", "UnsafeKeyError", "check_key"]
DEFAULT_ROOT = "./data"


class BatchStorage(dg.ConfigurableResource):
    """Where batches live: a local folder (default) or ``s3://bucket/prefix``."""

    root: str = Field(
        default=DEFAULT_ROOT,
        description="A folder, or s3://bucket/prefix, holding inbox/, outbox/ and work/ "
        "(BATCH_STORAGE).",
    )
    endpoint_url: str | None = Field(
        default=None,
        description="S3 endpoint of an S3-compatible store; unset: AWS_ENDPOINT_URL or AWS.",
    )
    region_name: str | None = Field(default=None, description="S3 region (AWS_REGION).")
    max_attempts: int = Field(
        default=8, description="S3 attempts per call, with boto3's adaptive backoff."
    )
    server_side_encryption: str | None = Field(
        default="AES256",
        description="S3 server-side encryption of every object written: AES256, aws:kms, "
        "or none (unset).",
    )
    sse_kms_key_id: str | None = Field(default=None, description="KMS key id for aws:kms.")
    projects: list[str] = Field(
        default_factory=list,
        description="Tenants, each with its own <root>/<project>/inbox, outbox and work "
        "(BATCH_PROJECTS, comma-separated); empty: one tenant at the root.",
    )

    _backend: Any = PrivateAttr(default=None)

    @classmethod
    def from_env(cls, **fields: Any) -> "BatchStorage":
        """The storage of BATCH_STORAGE and BATCH_PROJECTS, unless ``fields`` set them."""
        env: dict[str, Any] = {"root": os.environ.get("BATCH_STORAGE") or DEFAULT_ROOT}
        projects = [p.strip() for p in os.environ.get("BATCH_PROJECTS", "").split(",")]
        if any(projects):
            env["projects"] = [p for p in projects if p]
        return cls(**{**env, **fields})

    def for_project(self, project: str | None) -> "BatchStorage":
        """The storage of one project (``<root>/<project>``); the root itself for None.

        A project's storage cannot reach another project's keys: its root is the project's
        folder and every key is checked against leaving its root.
        """
        if project is None:
            if self.projects:
                raise UnsafeKeyError("this storage is split into projects; name one")
            return self
        if project not in self.projects or not PROJECT_NAME.fullmatch(project):
            raise UnsafeKeyError(f"unknown project: {project!r}")
        root = project_root(self.root, project)
        return BatchStorage(**{**self.model_dump(), "root": root, "projects": []})

    def tenants(self) -> list[tuple[str | None, "BatchStorage"]]:
        """``(project, storage)`` of every project, or ``(None, self)`` without projects."""
        if not self.projects:
            return [(None, self)]
        return [(project, self.for_project(project)) for project in self.projects]

    def backend(self) -> Backend:
        if self._backend is None:
            if self.root.startswith("s3://"):
                from resources.s3_backend import S3Backend

                self._backend = S3Backend(
                    self.root,
                    endpoint_url=self.endpoint_url,
                    region_name=self.region_name,
                    max_attempts=self.max_attempts,
                    server_side_encryption=self.server_side_encryption,
                    sse_kms_key_id=self.sse_kms_key_id,
                )
            else:
                from resources.local_backend import LocalBackend

                self._backend = LocalBackend(self.root)
        return self._backend

    @property
    def uri(self) -> str:
        return self.backend().uri

    @property
    def is_local(self) -> bool:
        return self.backend().is_local

    def url(self, key: str) -> str:
        """A location a person can open or copy for ``key``."""
        return f"{self.uri}/{check_key(key)}"

    def local_path(self, key: str) -> Path | None:
        """The file behind ``key`` in a local folder; None on S3."""
        return self.backend().local_path(check_key(key))

    def exists(self, key: str) -> bool:
        return self.backend().stat(check_key(key)) is not None

    def stat(self, key: str) -> ObjectInfo:
        info = self.backend().stat(check_key(key))
        if info is None:
            raise FileNotFoundError(self.url(key))
        return info

    def list(self, prefix: str, start_after: str | None = None) -> Iterator[ObjectInfo]:
        """Objects under the folder key ``prefix``, in key order, after ``start_after``."""
        return self.backend().list(check_key(prefix.rstrip("/")), start_after)

    def list_names(
        self, folder: str, start_after: str | None = None, reverse: bool = False
    ) -> Iterator[str]:
        """Names of the objects directly in ``folder`` (a flat folder: an index), in name order
        after ``start_after`` (before it, descending, with ``reverse``); lazily."""
        return self.backend().list_names(check_key(folder.rstrip("/")), start_after, reverse)

    def open_read(self, key: str) -> AbstractContextManager[io.BufferedReader]:
        """A buffered binary stream (``readline``, ``peek``) over ``key``."""
        return self.backend().open_read(check_key(key))

    def open_write(self, key: str) -> AbstractContextManager[IO[bytes]]:
        """Write ``key`` atomically: readers see the old object or the whole new one."""
        return self.backend().open_write(check_key(key))

    def read_bytes(self, key: str) -> bytes:
        with self.open_read(key) as stream:
            return stream.read()

    def read_optional(self, key: str) -> bytes | None:
        """The object's bytes, or None when there is none (one request on S3, not two)."""
        try:
            return self.read_bytes(key)
        except FileNotFoundError:
            return None
        except Exception as error:  # botocore's ClientError, without importing botocore here
            code = getattr(error, "response", {}).get("Error", {}).get("Code")
            if code in ("NoSuchKey", "404"):
                return None
            raise

    def read_json(self, key: str) -> Any:
        return json.loads(self.read_bytes(key))

    def write_bytes(self, key: str, data: bytes) -> None:
        with self.open_write(key) as stream:
            stream.write(data)

    def write_json(self, key: str, value: Any) -> None:
        self.write_bytes(key, json.dumps(value, indent=2).encode())

    def put_file(self, local_path: Path, key: str) -> None:
        """Upload a local file to ``key`` (keeping what identifies its content)."""
        self.backend().put_file(local_path, check_key(key))

    def matches_file(self, local_path: Path, key: str) -> bool:
        """Whether ``key`` already holds this very file (as put_file left it)."""
        return self.exists(key) and self.backend().matches_file(local_path, check_key(key))

    def delete_prefix(self, prefix: str) -> None:
        self.backend().delete_prefix(check_key(prefix.rstrip("/")))

    def delete(self, key: str) -> None:
        """Remove the object at ``key``, if there is one."""
        self.backend().delete(check_key(key))
