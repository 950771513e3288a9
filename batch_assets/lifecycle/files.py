"""Files as the OpenAI Files API knows them: an id, a record, and the key of the bytes.

Every batch has three: its input (an upload of the HTTP API, or the inbox object it came
from), its output and its errors (the outbox files). Each has a record at
``files/<file_id>/file.json`` holding OpenAI's FileObject fields plus ``content``, the storage
key of its bytes, so a batch dropped into the inbox is downloadable through the API too. The
ids of a batch's own files are derived from the batch id (the same batch, the same ids);
uploads get random ones.
"""

import hashlib
import time
import uuid
from collections.abc import Iterator
from typing import Any, Literal

import msgspec

from resources.layout import FILES, FilePaths, file_record_owner
from resources.storage import BatchStorage, ObjectInfo

Purpose = Literal["batch", "batch_output"]
FileStatus = Literal["uploaded", "processed", "error"]


class FileRecord(msgspec.Struct, kw_only=True):
    id: str
    bytes: int
    created_at: int
    filename: str
    purpose: Purpose
    status: FileStatus = "uploaded"
    expires_at: int | None = None
    status_details: str | None = None
    content: str  # the storage key of the bytes; not one of OpenAI's fields

    def file_object(self) -> dict[str, Any]:
        """OpenAI's FileObject for this file."""
        fields = msgspec.structs.asdict(self)
        del fields["content"]
        return {**fields, "object": "file"}

    def expired(self, now: float | None = None) -> bool:
        return self.expires_at is not None and (now or time.time()) >= self.expires_at


def new_file_id() -> str:
    return f"file-{uuid.uuid4().hex}"


def batch_file_id(batch_id: str, role: Literal["input", "output", "errors"]) -> str:
    """The id of one of a batch's own files (its inbox input, its output, its errors)."""
    return f"file-{hashlib.sha256(f'{batch_id}:{role}'.encode()).hexdigest()[:32]}"


def write_file_record(storage: BatchStorage, record: FileRecord) -> None:
    storage.write_bytes(FilePaths(record.id).record, msgspec.json.encode(record))


def read_file_record(storage: BatchStorage, file_id: str) -> FileRecord | None:
    """The file's record, or None for an unknown id (or one that is not an id at all)."""
    if not file_id.startswith("file-") or "/" in file_id:
        return None
    key = FilePaths(file_id).record
    if not storage.exists(key):
        return None
    return msgspec.json.decode(storage.read_bytes(key), type=FileRecord)


def iter_file_records(storage: BatchStorage) -> Iterator[FileRecord]:
    for info in storage.list(FILES):
        file_id = file_record_owner(info.key)
        if file_id and (record := read_file_record(storage, file_id)):
            yield record


def set_file_status(
    storage: BatchStorage, file_id: str | None, status: FileStatus, details: str | None = None
) -> None:
    """Move a file to ``status`` (a batch validated it, or found it unusable)."""
    record = read_file_record(storage, file_id) if file_id else None
    if record is not None and (record.status, record.status_details) != (status, details):
        record.status, record.status_details = status, details
        write_file_record(storage, record)


def record_batch_file(
    storage: BatchStorage,
    batch_id: str,
    role: Literal["input", "output", "errors"],
    key: str,
    info: ObjectInfo | None = None,
    expires_at: int | None = None,
) -> str:
    """Give the stored file at ``key`` a record as one of the batch's files; its id."""
    file_id = batch_file_id(batch_id, role)
    info = info or storage.stat(key)
    purpose: Purpose = "batch" if role == "input" else "batch_output"
    name = key.rsplit("/", 1)[-1] if role == "input" else f"{batch_id}_{role}.jsonl"
    record = FileRecord(
        id=file_id,
        bytes=info.size,
        created_at=int(info.modified_ns // 10**9),
        filename=name,
        purpose=purpose,
        status="processed" if role != "input" else "uploaded",
        expires_at=expires_at,
        content=key,
    )
    existing = read_file_record(storage, file_id)
    same = (record.bytes, record.content, record.expires_at)
    if existing is None or (existing.bytes, existing.content, existing.expires_at) != same:
        write_file_record(storage, record)
    return file_id
