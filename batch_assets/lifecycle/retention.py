"""Retention: expired files are deleted, and a finished batch's work area after a while.

A file with ``expires_at`` (an upload's ``expires_after``, a batch's output and error files
under its ``output_expires_after``) is deleted once that time has passed: its record and its
bytes, so it answers 404 and leaves ``files.list``. The work area of an ended batch (its
request shards, line errors, journal and logs: a copy of every prompt and answer) is deleted
``work_retention_s`` after the batch ended; two small notes stay (``source.json``, the output
retention), which hold no prompt. A batch's record is never deleted, as OpenAI keeps
its batches. Nothing that a batch still running reads is deleted: an expired upload read by
an active batch waits for the batch to end.
"""

from dataclasses import dataclass, field

import msgspec

from batch_assets.lifecycle.batches import BatchRecord, batch_exists, list_batches, read_batch
from batch_assets.lifecycle.files import FileRecord, delete_index_entry, iter_file_records
from resources.layout import BatchPaths, FilePaths
from resources.storage import BatchStorage

DEFAULT_WORK_RETENTION_DAYS = 7.0
MIN_EXPIRY_S, MAX_EXPIRY_S = 3600, 30 * 24 * 3600  # OpenAI's bounds of expires_after.seconds


class _OutputRetention(msgspec.Struct):
    seconds: int  # after the batch's created_at


def set_output_retention(storage: BatchStorage, batch_id: str, seconds: int) -> None:
    """Record the batch's ``output_expires_after`` (applied when its files are published)."""
    raw = msgspec.json.encode(_OutputRetention(seconds))
    storage.write_bytes(BatchPaths(batch_id).output_retention, raw)


def output_expires_at(storage: BatchStorage, batch: BatchRecord) -> int | None:
    """When the batch's output and error files expire (None: kept)."""
    raw = storage.read_optional(BatchPaths(batch.id).output_retention)
    if raw is None:
        return None
    return batch.created_at + msgspec.json.decode(raw, type=_OutputRetention).seconds


def active_reader(storage: BatchStorage, file_id: str) -> BatchRecord | None:
    """A batch that still reads the file, if there is one: one that has neither ended nor
    validated it (once validated, its requests are in its work area, and the upload is not
    read again, not even by a retry of its failed lines)."""
    for info in storage.list(FilePaths(file_id).readers):
        batch_id = info.key.rsplit("/", 1)[-1]
        if batch_exists(storage, batch_id):
            batch = read_batch(storage, batch_id)
            if not batch.status.ended and not storage.exists(BatchPaths(batch_id).manifest):
                return batch
    return None


def delete_file(storage: BatchStorage, record: FileRecord, with_outbox_content: bool) -> None:
    """Delete the file's index entry and record (first: it is gone even if the rest fails),
    its readers and its bytes where they are its own (an upload's); a batch's output or error
    file's bytes in the outbox go too when ``with_outbox_content``."""
    paths = FilePaths(record.id)
    delete_index_entry(storage, record)
    storage.delete(paths.record)
    if with_outbox_content or record.content.startswith(f"{paths.folder}/"):
        storage.delete(record.content)
    storage.delete_prefix(paths.readers)


def _ended_at(batch: BatchRecord) -> int | None:
    stamps = (batch.completed_at, batch.failed_at, batch.expired_at, batch.cancelled_at)
    return next((stamp for stamp in stamps if stamp is not None), None)


def _delete_work_area(storage: BatchStorage, batch_id: str) -> bool:
    """Delete what the batch's work area holds but two small notes (its source, its output
    retention), which hold no prompt; False if nothing else was left."""
    paths = BatchPaths(batch_id)
    notes = {paths.source, paths.output_retention}
    if not any(info.key not in notes for info in storage.list(paths.work)):
        return False
    for prefix in (paths.shards, paths.line_errors, paths.journal, paths.logs):
        storage.delete_prefix(prefix)
    storage.delete(paths.live_counts)
    storage.delete(paths.manifest)
    return True


@dataclass
class RetentionReport:
    files_deleted: list[str] = field(default_factory=list)
    files_kept_in_use: list[str] = field(default_factory=list)
    work_areas_deleted: list[str] = field(default_factory=list)


def apply_retention(storage: BatchStorage, now: float, work_retention_s: float) -> RetentionReport:
    """Delete what has expired in one project (or a storage without projects) at ``now``."""
    report = RetentionReport()
    for record in list(iter_file_records(storage)):
        if not record.expired(now):
            continue
        if active_reader(storage, record.id) is not None:
            report.files_kept_in_use.append(record.id)
            continue
        delete_file(storage, record, with_outbox_content=record.purpose == "batch_output")
        report.files_deleted.append(record.id)
    for batch in list_batches(storage):
        ended_at = _ended_at(batch)
        old = ended_at is not None and now - ended_at >= work_retention_s
        if old and _delete_work_area(storage, batch.id):
            report.work_areas_deleted.append(batch.id)
    return report
