"""Files as the OpenAI Files API knows them: an id, a record, and the key of the bytes.

Every batch has three: its input (an upload of the HTTP API, or the inbox object it came
from), its output and its errors (the outbox files). Each has a record at
``files/<file_id>/file.json`` holding OpenAI's FileObject fields plus ``content``, the storage
key of its bytes, so a batch dropped into the inbox is downloadable through the API too. The
ids of a batch's own files are derived from the batch id (the same batch, the same ids);
uploads get random ones.
"""

import hashlib
import secrets
import string
import time
from collections.abc import Callable, Iterator
from typing import Any, Literal

import msgspec

from batch_assets.lifecycle.listing import ensure_index, entry_id, entry_name, index_page
from resources.layout import FILE_INDEX, FILES, FilePaths, file_record_owner
from resources.storage import BatchStorage, ObjectInfo

_HEX = frozenset(string.hexdigits.lower())
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


def new_file_id(now_ms: int | None = None) -> str:
    """An upload's id: its creation time (so lists can page from it after it is deleted) and
    72 random bits."""
    ms = now_ms if now_ms is not None else time.time_ns() // 1_000_000
    return f"file-{ms:012x}t{secrets.token_hex(9)}"


def batch_file_id(
    batch_id: str, role: Literal["input", "output", "errors"], batch_created_at: int
) -> str:
    """The id of one of a batch's own files (its inbox input, its output, its errors): the
    same for the same batch, and carrying the batch's creation time as an upload's does."""
    digest = hashlib.sha256(f"{batch_id}:{role}".encode()).hexdigest()[:18]
    return f"file-{batch_created_at * 1000:012x}t{digest}"


def id_time_ms(file_id: str) -> int | None:
    """The time an id carries; None for an id of an earlier version (random)."""
    stamp = file_id[5:17]
    if len(file_id) > 18 and file_id[17] == "t" and all(c in _HEX for c in stamp):
        return int(stamp, 16)
    return None


def index_entry(record: FileRecord) -> str:
    """The file's entry in the files index (its id's time; an earlier id: its created_at)."""
    ms = id_time_ms(record.id)
    return entry_name(ms if ms is not None else record.created_at * 1000, record.id)


def _index_key(record: FileRecord) -> str:
    return f"{FILE_INDEX}/{index_entry(record)}"


def write_file_record(storage: BatchStorage, record: FileRecord) -> None:
    """Write the record, then its index entry (a listing never shows an entry without one)."""
    storage.write_bytes(FilePaths(record.id).record, msgspec.json.encode(record))
    storage.write_bytes(_index_key(record), b"")


def delete_index_entry(storage: BatchStorage, record: FileRecord) -> None:
    storage.delete(_index_key(record))


def page_file_records(
    storage: BatchStorage,
    after: str | None,
    limit: int,
    newest_first: bool,
    keep: Callable[[FileRecord], bool],
) -> tuple[list[FileRecord], bool]:
    """A page of the project's files after the file ``after`` (raises KeyError for an id of
    an earlier version that no longer exists), and whether more follow."""
    ensure_index(storage, FILE_INDEX, lambda: (index_entry(r) for r in iter_file_records(storage)))
    start = None
    if after is not None:
        ms = id_time_ms(after)
        if ms is None:  # an earlier version's id: its time is in its record
            known = read_file_record(storage, after)
            if known is None:
                raise KeyError(after)
            ms = known.created_at * 1000
        start = entry_name(ms, after)

    def load(name: str) -> FileRecord | None:
        record = read_file_record(storage, entry_id(name))
        return record if record is not None and keep(record) else None

    return index_page(storage, FILE_INDEX, start, newest_first, limit, load)


def read_file_record(storage: BatchStorage, file_id: str) -> FileRecord | None:
    """The file's record, or None for an unknown id (or one that is not an id at all)."""
    if not file_id.startswith("file-") or "/" in file_id:
        return None
    raw = storage.read_optional(FilePaths(file_id).record)  # one request on S3, not two
    return None if raw is None else msgspec.json.decode(raw, type=FileRecord)


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
    batch_created_at: int,
    info: ObjectInfo | None = None,
    expires_at: int | None = None,
) -> str:
    """Give the stored file at ``key`` a record as one of the batch's files; its id."""
    file_id = batch_file_id(batch_id, role, batch_created_at)
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
