"""The S3 backend of :class:`resources.storage.BatchStorage` (any S3-compatible store).

The client comes from dagster-aws (``construct_s3_client``), so the standard AWS settings
apply: credentials from the environment or a profile, ``AWS_ENDPOINT_URL``, and boto3's own
retries with backoff. Reads stream; writes spool to a local temporary file and go up with
boto3's managed (multipart) transfer, which S3 publishes atomically.
"""

import hashlib
import io
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any

from boto3.s3.transfer import TransferConfig
from botocore.exceptions import ClientError
from dagster_aws.s3.utils import construct_s3_client

from resources.storage_base import ObjectInfo

_TRANSFER = TransferConfig(multipart_threshold=64 << 20, multipart_chunksize=64 << 20)


class _BodyReader(io.RawIOBase):
    """A raw stream over a botocore StreamingBody, for ``io.BufferedReader``."""

    def __init__(self, body: Any):
        self.body = body

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        data = self.body.read(len(buffer))
        buffer[: len(data)] = data
        return len(data)

    def close(self) -> None:
        self.body.close()
        super().close()


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as stream:
        while chunk := stream.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


class S3Backend:
    is_local = False

    def __init__(
        self,
        root: str,
        *,
        endpoint_url: str | None,
        region_name: str | None,
        max_attempts: int,
        server_side_encryption: str | None,
        sse_kms_key_id: str | None,
    ):
        bucket, _, prefix = root.removeprefix("s3://").partition("/")
        self.bucket, self.prefix = bucket, prefix.strip("/")
        self.uri = f"s3://{bucket}/{self.prefix}" if self.prefix else f"s3://{bucket}"
        self.client = construct_s3_client(
            max_attempts=max_attempts, region_name=region_name, endpoint_url=endpoint_url
        )
        self.extra: dict[str, str] = {}
        if server_side_encryption:
            self.extra["ServerSideEncryption"] = server_side_encryption
            if sse_kms_key_id:
                self.extra["SSEKMSKeyId"] = sse_kms_key_id

    def _full(self, key: str) -> str:
        return f"{self.prefix}/{key}" if self.prefix else key

    def _relative(self, full_key: str) -> str:
        return full_key[len(self.prefix) + 1 :] if self.prefix else full_key

    def local_path(self, key: str) -> None:
        return None

    def _head(self, key: str) -> dict[str, Any] | None:
        try:
            return self.client.head_object(Bucket=self.bucket, Key=self._full(key))
        except ClientError as error:
            if error.response.get("Error", {}).get("Code") in ("404", "NoSuchKey", "NotFound"):
                return None
            raise

    def stat(self, key: str) -> ObjectInfo | None:
        head = self._head(key)
        if head is None:
            return None
        modified = int(head["LastModified"].timestamp() * 1e9)
        return ObjectInfo(key, head["ContentLength"], head["ETag"].strip('"'), modified)

    def list(self, prefix: str, start_after: str | None = None) -> Iterator[ObjectInfo]:
        params = {"Bucket": self.bucket, "Prefix": self._full(prefix) + "/"}
        if start_after:
            params["StartAfter"] = self._full(start_after)
        for page in self.client.get_paginator("list_objects_v2").paginate(**params):
            for obj in page.get("Contents", []):
                yield ObjectInfo(
                    self._relative(obj["Key"]),
                    obj["Size"],
                    obj["ETag"].strip('"'),
                    int(obj["LastModified"].timestamp() * 1e9),
                )

    def list_names(
        self, folder: str, start_after: str | None = None, reverse: bool = False
    ) -> Iterator[str]:
        """The names of the objects directly in ``folder``, in key order from ``start_after``
        (S3's StartAfter: a page costs one LIST); ``reverse`` lists them all first, as S3
        lists in one order only."""
        if reverse:
            names = [info.key.rsplit("/", 1)[-1] for info in self.list(folder)]
            names = [n for n in names if start_after is None or n < start_after]
            return reversed(names)
        after = f"{folder}/{start_after}" if start_after is not None else None
        return (info.key.rsplit("/", 1)[-1] for info in self.list(folder, after))

    @contextmanager
    def open_read(self, key: str) -> Iterator["io.BufferedReader[Any]"]:
        body = self.client.get_object(Bucket=self.bucket, Key=self._full(key))["Body"]
        with io.BufferedReader(_BodyReader(body), buffer_size=1 << 20) as stream:
            yield stream

    @contextmanager
    def open_write(self, key: str) -> Iterator[IO[bytes]]:
        with tempfile.TemporaryFile(prefix="batch-upload-") as spool:
            yield spool
            spool.seek(0)
            self.client.upload_fileobj(
                spool, self.bucket, self._full(key), ExtraArgs=self.extra or None, Config=_TRANSFER
            )

    def put_file(self, local_path: Path, key: str) -> None:
        extra = {**self.extra, "Metadata": {"sha256": _sha256(local_path)}}
        self.client.upload_file(
            str(local_path), self.bucket, self._full(key), ExtraArgs=extra, Config=_TRANSFER
        )

    def matches_file(self, local_path: Path, key: str) -> bool:
        head = self._head(key)
        return head is not None and head.get("Metadata", {}).get("sha256") == _sha256(local_path)

    def delete_prefix(self, prefix: str) -> None:
        batch: list[dict[str, str]] = []
        for info in self.list(prefix):
            batch.append({"Key": self._full(info.key)})
            if len(batch) == 1000:
                self.client.delete_objects(Bucket=self.bucket, Delete={"Objects": batch})
                batch = []
        if batch:
            self.client.delete_objects(Bucket=self.bucket, Delete={"Objects": batch})

    def delete(self, key: str) -> None:
        self.client.delete_object(Bucket=self.bucket, Key=self._full(key))
