"""The batch lifecycle: the one owner of ``batch.json`` and of every change of a batch's status.

A batch's record is :class:`BatchRecord` (OpenAI's Batch object, typed, plus nothing of this
project's own but ``metadata``). Only this module reads or writes it, and the only way its
status changes is a named :class:`Transition`, checked against :data:`TRANSITIONS`:

```
validating --start--> in_progress --finalize--> finalizing --complete--> completed
     |                    |                          |      --expire---> expired
     +------finalize------|--------------------------+
     +--request_cancel----+-------------------------+--> cancelling --confirm_cancel--> cancelled
any status that has not ended (cancelling too) --fail--> failed
```
A transition to the status the batch already has is a no-op (a retried step, two sensors
acting on one cancel request). Any other move the table does not hold raises
:class:`IllegalTransition`, is logged with the batch id, and leaves the stored record as it
was: a ``completed`` batch is never turned ``in_progress`` by a late retry, nor a
``cancelled`` one published as ``completed``.

A transition that ends the batch first writes its event (``batch.completed``, ...:
:mod:`batch_assets.lifecycle.events`), which the webhook sensor delivers. While a batch runs,
its run writes live request counts beside it (:func:`record_live_counts`), which
:func:`read_batch_view` shows in place of the stored ones.
"""

import hashlib
import logging
import time
import uuid
from enum import StrEnum
from typing import Any

import msgspec

from batch_assets.lifecycle.events import record_event
from batch_assets.lifecycle.files import FileRecord, record_batch_file
from batch_assets.lifecycle.listing import ensure_index, entry_id, entry_name, index_page
from resources.layout import (
    BATCH_INDEX,
    OUTBOX,
    BatchPaths,
    FilePaths,
    api_queue_key,
    batch_json_owner,
)
from resources.storage import BatchStorage, ObjectInfo

logger = logging.getLogger(__name__)
COMPLETION_WINDOW_S = 24 * 3600


class BatchStatus(StrEnum):
    """OpenAI's batch statuses."""

    VALIDATING = "validating"
    FAILED = "failed"
    IN_PROGRESS = "in_progress"
    FINALIZING = "finalizing"
    COMPLETED = "completed"
    EXPIRED = "expired"
    CANCELLING = "cancelling"
    CANCELLED = "cancelled"

    @property
    def ended(self) -> bool:
        """Completed, failed, expired or cancelled: nothing changes it any more."""
        return self in ENDED

    @property
    def running(self) -> bool:
        """In progress, or being cancelled: a run may be answering its requests."""
        return self in (BatchStatus.IN_PROGRESS, BatchStatus.CANCELLING)

    @property
    def stopping(self) -> bool:
        """Ended, or being cancelled: no new run is to be launched for it."""
        return self.ended or self is BatchStatus.CANCELLING


ENDED = frozenset(
    {BatchStatus.COMPLETED, BatchStatus.FAILED, BatchStatus.EXPIRED, BatchStatus.CANCELLED}
)


class Transition(StrEnum):
    START = "start"  # the first inference run began
    FINALIZE = "finalize"  # the result files are being written
    COMPLETE = "complete"  # published: every request answered
    EXPIRE = "expire"  # published: the completion window ended first
    REQUEST_CANCEL = "request_cancel"  # a cancel request was seen
    CONFIRM_CANCEL = "confirm_cancel"  # published: the rest reported batch_cancelled
    FAIL = "fail"  # the input was rejected, or the run failed for good


_OPEN = frozenset(BatchStatus) - ENDED
# transition -> (the statuses it may start from, the status it leads to)
TRANSITIONS: dict[Transition, tuple[frozenset[BatchStatus], BatchStatus]] = {
    Transition.START: (frozenset({BatchStatus.VALIDATING}), BatchStatus.IN_PROGRESS),
    Transition.FINALIZE: (
        frozenset({BatchStatus.VALIDATING, BatchStatus.IN_PROGRESS}),
        BatchStatus.FINALIZING,
    ),
    Transition.COMPLETE: (frozenset({BatchStatus.FINALIZING}), BatchStatus.COMPLETED),
    Transition.EXPIRE: (frozenset({BatchStatus.FINALIZING}), BatchStatus.EXPIRED),
    Transition.REQUEST_CANCEL: (_OPEN - {BatchStatus.CANCELLING}, BatchStatus.CANCELLING),
    Transition.CONFIRM_CANCEL: (frozenset({BatchStatus.CANCELLING}), BatchStatus.CANCELLED),
    Transition.FAIL: (_OPEN, BatchStatus.FAILED),
}


class IllegalTransition(Exception):
    """A status change the table does not allow; the stored record is left as it was."""

    def __init__(self, batch_id: str, status: BatchStatus, move: Transition):
        sources, target = TRANSITIONS[move]
        allowed = ", ".join(sorted(sources))
        super().__init__(
            f"batch {batch_id} is {status}: {move} (to {target}) starts only from {allowed}"
        )
        self.batch_id, self.status, self.move = batch_id, status, move


def next_status(batch_id: str, status: BatchStatus, move: Transition) -> BatchStatus | None:
    """The status after ``move``; None when the batch is there already; raises if refused."""
    sources, target = TRANSITIONS[move]
    if status is target:
        return None
    if status not in sources:
        raise IllegalTransition(batch_id, status, move)
    return target


class RequestCounts(msgspec.Struct):
    total: int = 0
    completed: int = 0
    failed: int = 0


class BatchError(msgspec.Struct):
    code: str
    message: str
    param: str | None = None
    line: int | None = None


class BatchErrors(msgspec.Struct):
    data: list[BatchError]
    object: str = "list"


class InputTokensDetails(msgspec.Struct):
    cached_tokens: int = 0


class OutputTokensDetails(msgspec.Struct):
    reasoning_tokens: int = 0


class BatchUsage(msgspec.Struct):
    input_tokens: int
    input_tokens_details: InputTokensDetails
    output_tokens: int
    output_tokens_details: OutputTokensDetails
    total_tokens: int


class BatchRecord(msgspec.Struct, kw_only=True):
    """``batch.json``: the fields of ``openai.types.Batch``, in its order."""

    id: str
    object: str = "batch"
    endpoint: str = ""  # "" until the input's lines name it (an inbox upload)
    model: str | None = None
    input_file_id: str
    completion_window: str = "24h"
    status: BatchStatus = BatchStatus.VALIDATING
    output_file_id: str | None = None
    error_file_id: str | None = None
    errors: BatchErrors | None = None
    created_at: int
    in_progress_at: int | None = None
    expires_at: int
    finalizing_at: int | None = None
    completed_at: int | None = None
    failed_at: int | None = None
    expired_at: int | None = None
    cancelling_at: int | None = None
    cancelled_at: int | None = None
    request_counts: RequestCounts = msgspec.field(default_factory=RequestCounts)
    usage: BatchUsage | None = None
    metadata: dict[str, str] | None = None

    def as_dict(self) -> dict[str, Any]:
        """The record as batch.json holds it (what the SDK's ``Batch`` validates)."""
        return msgspec.to_builtins(self)

    @property
    def input_key(self) -> str | None:
        """The storage key of the input, for a batch made from an inbox upload."""
        return (self.metadata or {}).get("input")


# The record's fields a caller may set; status and its timestamps go through transitions.
_STAMPS = {f"{status}_at" for status in BatchStatus if status is not BatchStatus.VALIDATING}
_SETTABLE = frozenset(BatchRecord.__struct_fields__) - _STAMPS - {"id", "object", "status"}


def _decode(raw: bytes) -> BatchRecord:
    return msgspec.json.decode(raw, type=BatchRecord)


def _write(storage: BatchStorage, record: BatchRecord) -> None:
    storage.write_bytes(BatchPaths(record.id).batch_json, msgspec.json.encode(record))


def _checked(fields: dict[str, Any]) -> dict[str, Any]:
    refused = set(fields) - _SETTABLE
    if refused:
        raise TypeError(
            f"{', '.join(sorted(refused))}: not settable; a status changes through transition()"
        )
    return fields


def record_of(batch: dict[str, Any]) -> BatchRecord:
    """The record of a batch.json read as a dict (what the runner returns)."""
    return msgspec.convert(batch, BatchRecord)


def batch_exists(storage: BatchStorage, batch_id: str) -> bool:
    return storage.exists(BatchPaths(batch_id).batch_json)


def batch_url(storage: BatchStorage, batch_id: str) -> str:
    """Where a person finds the batch's batch.json."""
    return storage.url(BatchPaths(batch_id).batch_json)


def read_batch(storage: BatchStorage, batch_id: str) -> BatchRecord:
    return _decode(storage.read_bytes(BatchPaths(batch_id).batch_json))


class LiveCounts(msgspec.Struct):
    """``work/<batch_id>/counts.json``: a run's request counts so far, from its journal."""

    request_counts: RequestCounts
    updated_at: float
    requests_per_s: float = 0.0  # this run's rate

    @property
    def eta_s(self) -> float | None:
        """Seconds to the last request at this run's rate (None before a rate is known)."""
        counts = self.request_counts
        left = counts.total - counts.completed - counts.failed
        return left / self.requests_per_s if self.requests_per_s > 0 else None


def record_live_counts(
    storage: BatchStorage, batch_id: str, counts: RequestCounts, requests_per_s: float
) -> None:
    """Write the counts of a run in progress (a separate object: a run never rewrites the
    record, which a cancel request may be changing at the same moment)."""
    live = LiveCounts(counts, time.time(), requests_per_s)
    storage.write_bytes(BatchPaths(batch_id).live_counts, msgspec.json.encode(live))


def read_live_counts(storage: BatchStorage, batch_id: str) -> LiveCounts | None:
    raw = storage.read_optional(BatchPaths(batch_id).live_counts)
    return None if raw is None else msgspec.json.decode(raw, type=LiveCounts)


def read_batch_live(storage: BatchStorage, batch_id: str) -> tuple[BatchRecord, LiveCounts | None]:
    """The record as users see it, with its run's live counts in place of the stored ones
    while it runs; and those live counts (None when it does not run or has none yet)."""
    record = read_batch(storage, batch_id)
    live = read_live_counts(storage, batch_id) if record.status.running else None
    if live is not None:
        record = msgspec.structs.replace(record, request_counts=live.request_counts)
    return record, live


def read_batch_view(storage: BatchStorage, batch_id: str) -> BatchRecord:
    """The record as users see it (API, CLI): live counts while the batch runs."""
    return read_batch_live(storage, batch_id)[0]


def update_batch(storage: BatchStorage, batch_id: str, **fields: Any) -> BatchRecord:
    """Set fields of the record other than its status (counts, usage, metadata, ...)."""
    before = read_batch(storage, batch_id)
    record = msgspec.structs.replace(before, **_checked(fields))
    _write(storage, record)
    if record.created_at != before.created_at:  # its place in the index moves with it
        storage.write_bytes(_index_key(record), b"")
        storage.delete(_index_key(before))
    return record


def transition(
    storage: BatchStorage, batch_id: str, move: Transition, **fields: Any
) -> BatchRecord:
    """Apply ``move`` (and ``fields``) to the batch; stamps the new status's ``<status>_at``.

    Raises :class:`IllegalTransition` (logged, nothing written) when the table refuses it.
    """
    record = read_batch(storage, batch_id)
    try:
        target = next_status(batch_id, record.status, move)
    except IllegalTransition as refused:
        logger.error("batch %s: refused transition: %s", batch_id, refused)
        raise
    if target is None:
        return record
    now = int(time.time())
    stamp = {f"{target}_at": now}
    record = msgspec.structs.replace(record, status=target, **stamp, **_checked(fields))
    if target.ended:  # the event first: the record never says ended without it
        record_event(storage, batch_id, target, now)
    _write(storage, record)
    logger.info("batch %s: %s -> %s", batch_id, move, target)
    return record


def fail_batch(
    storage: BatchStorage, batch_id: str, code: str, message: str, line: int | None = None
) -> BatchRecord:
    """Fail the batch with one readable reason in ``errors`` (a failed one keeps its first)."""
    errors = BatchErrors([BatchError(code, message, None, line)])
    return transition(storage, batch_id, Transition.FAIL, errors=errors)


def failed_view(record: BatchRecord, message: str) -> BatchRecord:
    """The record as a failed run leaves it for a person, when the storage could not say so."""
    errors = BatchErrors([BatchError("run_failed", message)])
    return msgspec.structs.replace(record, status=BatchStatus.FAILED, errors=errors)


def root_cause_message(error: Any) -> str:
    """The innermost message of a Dagster ``SerializableErrorInfo`` chain (the real reason)."""
    while getattr(error, "cause", None) is not None:
        error = error.cause
    return error.message.strip()


class SourceRef(msgspec.Struct, frozen=True):
    """The object a batch was made from (``work/<batch_id>/source.json``)."""

    key: str
    version: str  # the object's content identity (ObjectInfo.version) when it was registered
    size: int


def source_unchanged(storage: BatchStorage, source: SourceRef) -> bool:
    """Whether the object a batch was made from is still there, as it was registered."""
    try:
        return storage.stat(source.key).version == source.version
    except FileNotFoundError:
        return False


def read_source(storage: BatchStorage, paths: BatchPaths) -> SourceRef:
    return msgspec.json.decode(storage.read_bytes(paths.source), type=SourceRef)


def batch_id_for(info: ObjectInfo) -> str:
    """A batch id stable for one upload: the same object gives the same id, a re-upload not."""
    digest = hashlib.sha256(f"{info.key}\n{info.version}".encode()).hexdigest()
    return f"batch_{digest[:32]}"


def _new_record(
    batch_id: str,
    input_file_id: str,
    metadata: dict[str, str] | None,
    endpoint: str = "",
) -> BatchRecord:
    created = int(time.time())
    return BatchRecord(
        id=batch_id,
        endpoint=endpoint,
        input_file_id=input_file_id,
        created_at=created,
        expires_at=created + COMPLETION_WINDOW_S,
        metadata=metadata,
    )


def register_batch(storage: BatchStorage, input_key: str, info: ObjectInfo | None = None) -> str:
    """Create the batch for an inbox object (idempotent) and return its id."""
    info = info or storage.stat(input_key)
    batch_id = batch_id_for(info)
    paths = BatchPaths(batch_id)
    if not storage.exists(paths.source):
        source = SourceRef(key=info.key, version=info.version, size=info.size)
        storage.write_bytes(paths.source, msgspec.json.encode(source))
    if not batch_exists(storage, batch_id):
        record = _new_record(batch_id, "", {"input": input_key, "outbox": paths.outbox})
        record.input_file_id = record_batch_file(
            storage, batch_id, "input", input_key, record.created_at, info
        )
        _write(storage, record)
        storage.write_bytes(_index_key(record), b"")
    return batch_id


def create_api_batch(
    storage: BatchStorage,
    file: FileRecord,
    endpoint: str,
    metadata: dict[str, str] | None,
    queued: bool = True,
) -> BatchRecord:
    """Record a batch over an uploaded file; the API sensor launches its run (``queued``).

    The upload is not copied: the batch's source is the file's own content. The queue entry
    is written last, so the sensor never sees a batch that is not whole.
    """
    batch_id = f"batch_{uuid.uuid4().hex}"
    paths = BatchPaths(batch_id)
    info = storage.stat(file.content)
    source = SourceRef(key=file.content, version=info.version, size=info.size)
    storage.write_bytes(paths.source, msgspec.json.encode(source))
    storage.write_bytes(FilePaths(file.id).reader(batch_id), b"")
    record = _new_record(batch_id, file.id, metadata, endpoint)
    _write(storage, record)
    storage.write_bytes(_index_key(record), b"")
    if queued:
        entry = {"input_file_id": file.id, "queued_ns": time.time_ns()}  # first in, first out
        storage.write_json(api_queue_key(batch_id), entry)
    return record


def list_batches(storage: BatchStorage) -> list[BatchRecord]:
    """Every batch of one project (or of a storage without projects), newest first, as users
    see them (live counts while they run)."""
    found = [
        read_batch_view(storage, batch_id)
        for info in storage.list(OUTBOX)
        if (batch_id := batch_json_owner(info.key))
    ]
    found.sort(key=newest_first, reverse=True)
    return found


def index_entry(record: BatchRecord) -> str:
    """The batch's entry in the batches index: names sort newest first."""
    return entry_name(record.created_at * 1000, record.id)


def _index_key(record: BatchRecord) -> str:
    return f"{BATCH_INDEX}/{index_entry(record)}"


def page_batches(
    storage: BatchStorage, after: str | None, limit: int, newest_first: bool = True
) -> tuple[list[BatchRecord], bool]:
    """A page of the project's batches (as users see them) after the batch ``after``, and
    whether more follow; a batch's record is never deleted, so ``after`` always has its place
    (KeyError for an id that is no batch here)."""
    ensure_index(storage, BATCH_INDEX, lambda: (index_entry(b) for b in list_batches(storage)))
    start = None
    if after is not None:
        if not after.startswith("batch_") or "/" in after or not batch_exists(storage, after):
            raise KeyError(after)
        start = index_entry(read_batch(storage, after))

    def load(name: str) -> BatchRecord | None:
        batch_id = entry_id(name)
        return read_batch_view(storage, batch_id) if batch_exists(storage, batch_id) else None

    return index_page(storage, BATCH_INDEX, start, newest_first, limit, load)


def newest_first(record: BatchRecord) -> tuple[int, str]:
    """The sort key of batch listings (with ``reverse=True``): creation time, then id."""
    return record.created_at, record.id
