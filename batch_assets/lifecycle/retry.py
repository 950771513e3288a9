"""Retrying a finished batch's failed lines: a new batch over exactly the requests that failed
for a reason a retry can change.

Retried: lines that never ran (``batch_cancelled``, ``batch_expired``) and answers with a 5xx
status (an engine or a server failed). Not retried: lines that failed validation and requests
the engine refused (4xx): the same line would fail the same way. The new batch's input is a
file of the original input's own lines for those requests (first occurrence of each
``custom_id``, bytes unchanged) or, once that input is deleted, the same requests rebuilt from
the original's work area; an ordinary upload that a client can download; the batch's
metadata names the batch it retries (``retry_of``), its error file, and how many failed lines
were not retried (``retry_skipped``).
"""

import time
from dataclasses import dataclass
from typing import IO

import msgspec
import polars as pl

from batch_assets.lifecycle.batches import (
    BatchRecord,
    SourceRef,
    batch_exists,
    create_api_batch,
    read_batch,
    read_source,
    source_unchanged,
)
from batch_assets.lifecycle.files import (
    FileRecord,
    new_file_id,
    read_file_record,
    write_file_record,
)
from resources.layout import BatchPaths, FilePaths, errors_file_owner
from resources.lines import FileRejected, iter_raw_lines, open_input
from resources.storage import BatchStorage

NEVER_RAN = frozenset({"batch_cancelled", "batch_expired"})
_MAX_LINE_BYTES = 64 << 20  # the original passed validation: any line of it fits
_MAX_FILE_BYTES = 1 << 50


class RetryRefused(ValueError):
    """The batch cannot be retried; the message says why (an API 400, a CLI exit 2)."""


class _Response(msgspec.Struct):
    status_code: int


class _LineError(msgspec.Struct):
    code: str | None = None


class _ResultLine(msgspec.Struct):
    custom_id: str | None = None
    response: _Response | None = None
    error: _LineError | None = None


class _CustomId(msgspec.Struct):
    custom_id: object = None


@dataclass(frozen=True)
class RetryPlan:
    original: BatchRecord
    custom_ids: frozenset[str]  # the requests to run again
    skipped: int  # failed lines that a retry would not change


def retryable(line: _ResultLine) -> bool:
    if line.response is not None:
        return line.response.status_code >= 500
    return line.error is not None and line.error.code in NEVER_RAN


def batch_of_error_file(storage: BatchStorage, file_id: str) -> BatchRecord | None:
    """The batch whose error file is ``file_id`` (None: no such error file here)."""
    record = read_file_record(storage, file_id)
    batch_id = errors_file_owner(record.content) if record else None
    if batch_id is None or not batch_exists(storage, batch_id):
        return None
    batch = read_batch(storage, batch_id)
    return batch if batch.error_file_id == file_id else None


def plan_retry(storage: BatchStorage, original: BatchRecord) -> RetryPlan:
    """What a retry of ``original`` runs; refused when it has not ended or has nothing to run."""
    if not original.status.ended:
        raise RetryRefused(
            f"batch {original.id} is {original.status}: only an ended batch's failed lines "
            "can be retried"
        )
    ids: set[str] = set()
    skipped = 0
    errors = BatchPaths(original.id).errors
    if storage.exists(errors):
        with storage.open_read(errors) as stream:
            for raw in stream:
                line = msgspec.json.decode(raw, type=_ResultLine)
                if retryable(line) and line.custom_id is not None:
                    ids.add(line.custom_id)
                else:
                    skipped += 1
    if not ids:
        raise RetryRefused(
            f"batch {original.id} has no line to retry: {skipped} failed lines, none for a "
            "reason a retry can change (cancelled, expired, a 5xx)"
        )
    return RetryPlan(original, frozenset(ids), skipped)


def _write_retry_input(storage: BatchStorage, plan: RetryPlan) -> FileRecord:
    """The retried requests as a new upload: the original input's own lines while it is there
    (bytes unchanged), else rebuilt from the work area, where validation kept each request (so
    the input may be deleted once its batch has validated)."""
    file_id = new_file_id()
    key = FilePaths(file_id).content
    paths = BatchPaths(plan.original.id)
    source = read_source(storage, paths)
    shards = [info.key for info in storage.list(paths.shards)]
    from_input = source_unchanged(storage, source)
    if not from_input and not shards:
        raise RetryRefused(
            f"the requests of batch {plan.original.id} are gone: its work area was removed "
            f"(retention) and its input ({source.key}) was removed or replaced"
        )
    with storage.open_write(key) as out:
        if from_input:
            _write_from_input(storage, source, plan, out)
        else:
            _write_from_shards(storage, shards, plan, out)
    record = FileRecord(
        id=file_id,
        bytes=storage.stat(key).size,
        created_at=int(time.time()),
        filename=f"{plan.original.id}_retry.jsonl",
        purpose="batch",
        content=key,
    )
    write_file_record(storage, record)
    return record


def _write_from_shards(
    storage: BatchStorage, shards: list[str], plan: RetryPlan, out: IO[bytes]
) -> None:
    """Each retried request rebuilt from its shard row (custom_id and the body's own JSON
    text, as validation kept them; the columns of ``batch_assets.input.shards``), in input
    order: shards hold consecutive ranges of lines and sort by their index."""
    wanted = pl.Series(sorted(plan.custom_ids), dtype=pl.String)
    url = msgspec.json.encode(plan.original.endpoint).decode()
    for key in sorted(shards):
        with storage.open_read(key) as stream:
            frame = pl.read_parquet(stream, columns=["line", "custom_id", "body"])
        rows = frame.filter(pl.col("custom_id").is_in(wanted)).sort("line")
        for custom_id, body in rows.select("custom_id", "body").iter_rows():
            cid = msgspec.json.encode(custom_id).decode()
            line = f'{{"custom_id":{cid},"method":"POST","url":{url},"body":{body}}}\n'
            out.write(line.encode())


def _write_from_input(
    storage: BatchStorage, source: SourceRef, plan: RetryPlan, out: IO[bytes]
) -> None:
    """The original input's own lines of the retried requests (first of each custom_id)."""
    wanted = set(plan.custom_ids)
    try:
        with open_input(storage, source.key, _MAX_FILE_BYTES) as lines:
            for _, content in iter_raw_lines(lines, _MAX_LINE_BYTES):
                if not content or not wanted:
                    continue
                try:
                    custom_id = msgspec.json.decode(content, type=_CustomId).custom_id
                except msgspec.DecodeError:
                    continue
                if isinstance(custom_id, str) and custom_id in wanted:
                    wanted.discard(custom_id)
                    out.write(content + b"\n")
    except FileRejected as rejected:
        raise RetryRefused(f"the input of batch {plan.original.id}: {rejected.message}") from None


def create_retry_batch(
    storage: BatchStorage,
    original: BatchRecord,
    metadata: dict[str, str] | None = None,
    queued: bool = True,
) -> BatchRecord:
    """A new batch over ``original``'s retryable failed lines (see :func:`plan_retry`).

    ``queued``: the API sensor launches it (the HTTP API); False for a caller that runs it
    itself (``batch-infer retry``).
    """
    plan = plan_retry(storage, original)
    file = _write_retry_input(storage, plan)
    retry = {
        "retry_of": original.id,
        "retry_error_file_id": original.error_file_id or "",
        "retry_lines": str(len(plan.custom_ids)),
        "retry_skipped": str(plan.skipped),
    }
    return create_api_batch(
        storage, file, original.endpoint, {**(metadata or {}), **retry}, queued=queued
    )
