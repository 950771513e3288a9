"""``batch.json``: the OpenAI Batch object of one batch, and the batch's source reference."""

import hashlib
import time
import uuid
from typing import Any

import msgspec

from batch_assets.lifecycle.files import FileRecord, record_batch_file
from resources.layout import OUTBOX, BatchPaths, FilePaths, api_queue_key, batch_json_owner
from resources.storage import BatchStorage, ObjectInfo

COMPLETION_WINDOW_S = 24 * 3600
TERMINAL_STATUSES = ("completed", "failed", "expired", "cancelled")


class SourceRef(msgspec.Struct, frozen=True):
    """The inbox object a batch was made from (``work/<batch_id>/source.json``)."""

    key: str
    version: str  # the object's content identity (ObjectInfo.version) when it was registered
    size: int


def read_source(storage: BatchStorage, paths: BatchPaths) -> SourceRef:
    return msgspec.json.decode(storage.read_bytes(paths.source), type=SourceRef)


def batch_id_for(info: ObjectInfo) -> str:
    """A batch id stable for one upload: the same object gives the same id, a re-upload not."""
    digest = hashlib.sha256(f"{info.key}\n{info.version}".encode()).hexdigest()
    return f"batch_{digest[:32]}"


def new_batch_object(
    batch_id: str,
    input_file_id: str,
    created_at: int,
    metadata: dict[str, str] | None,
    endpoint: str = "",
) -> dict[str, Any]:
    return {
        "id": batch_id,
        "object": "batch",
        "endpoint": endpoint,
        "model": None,
        "input_file_id": input_file_id,
        "completion_window": "24h",
        "status": "validating",
        "output_file_id": None,
        "error_file_id": None,
        "errors": None,
        "created_at": created_at,
        "in_progress_at": None,
        "expires_at": created_at + COMPLETION_WINDOW_S,
        "finalizing_at": None,
        "completed_at": None,
        "failed_at": None,
        "expired_at": None,
        "cancelling_at": None,
        "cancelled_at": None,
        "request_counts": {"total": 0, "completed": 0, "failed": 0},
        "usage": None,
        "metadata": metadata,
    }


def read_batch(storage: BatchStorage, batch_id: str) -> dict[str, Any]:
    return storage.read_json(BatchPaths(batch_id).batch_json)


def update_batch(storage: BatchStorage, batch_id: str, **changes: Any) -> dict[str, Any]:
    """Apply ``changes`` to batch.json; a new ``status`` also stamps its ``<status>_at``."""
    batch = read_batch(storage, batch_id)
    status = changes.get("status")
    if status and status != batch["status"]:
        stamp = {"in_progress": "in_progress_at", "finalizing": "finalizing_at"}.get(
            status, f"{status}_at"
        )
        if stamp in batch and stamp not in changes:
            changes[stamp] = int(time.time())
    batch.update(changes)
    storage.write_json(BatchPaths(batch_id).batch_json, batch)
    return batch


def root_cause_message(error: Any) -> str:
    """The innermost message of a Dagster ``SerializableErrorInfo`` chain (the real reason)."""
    while getattr(error, "cause", None) is not None:
        error = error.cause
    return error.message.strip()


def fail_batch(
    storage: BatchStorage, batch_id: str, code: str, message: str, line: int | None = None
) -> dict[str, Any]:
    """Mark the batch failed with one readable reason in ``errors``."""
    error = {"code": code, "message": message, "param": None, "line": line}
    return update_batch(
        storage, batch_id, status="failed", errors={"object": "list", "data": [error]}
    )


def register_batch(storage: BatchStorage, input_key: str, info: ObjectInfo | None = None) -> str:
    """Create the batch for an inbox object (idempotent) and return its id."""
    info = info or storage.stat(input_key)
    batch_id = batch_id_for(info)
    paths = BatchPaths(batch_id)
    if not storage.exists(paths.source):
        source = SourceRef(key=info.key, version=info.version, size=info.size)
        storage.write_bytes(paths.source, msgspec.json.encode(source))
    if not storage.exists(paths.batch_json):
        file_id = record_batch_file(storage, batch_id, "input", input_key, info)
        metadata = {"input": input_key, "outbox": paths.outbox}
        batch = new_batch_object(batch_id, file_id, int(time.time()), metadata)
        storage.write_json(paths.batch_json, batch)
    return batch_id


def create_api_batch(
    storage: BatchStorage, file: FileRecord, endpoint: str, metadata: dict[str, str] | None
) -> dict[str, Any]:
    """Record a batch over an uploaded file; the API sensor launches its run.

    The upload is not copied: the batch's source is the file's own content. The queue entry
    is written last, so the sensor never sees a batch that is not whole.
    """
    batch_id = f"batch_{uuid.uuid4().hex}"
    paths = BatchPaths(batch_id)
    info = storage.stat(file.content)
    source = SourceRef(key=file.content, version=info.version, size=info.size)
    storage.write_bytes(paths.source, msgspec.json.encode(source))
    storage.write_bytes(FilePaths(file.id).reader(batch_id), b"")
    batch = new_batch_object(batch_id, file.id, int(time.time()), metadata, endpoint)
    storage.write_json(paths.batch_json, batch)
    storage.write_json(api_queue_key(batch_id), {"input_file_id": file.id})
    return batch


def list_batches(storage: BatchStorage) -> list[dict[str, Any]]:
    """Every batch.json of one project (or of a storage without projects), newest first."""
    found = [
        read_batch(storage, batch_id)
        for info in storage.list(OUTBOX)
        if (batch_id := batch_json_owner(info.key))
    ]
    found.sort(key=newest_first, reverse=True)
    return found


def newest_first(batch: dict[str, Any]) -> tuple[int, str]:
    """The sort key of batch listings (with ``reverse=True``): creation time, then id."""
    return batch.get("created_at") or 0, batch["id"]
