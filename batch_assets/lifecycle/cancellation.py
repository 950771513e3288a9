"""Cancelling a batch: a cancel request is an object at the batch's cancel key in the storage.

Anyone who can write to the storage can cancel, without the Dagster UI: put any object at
``<root>/cancel/<batch_id>`` (``BatchPaths.cancel``; ``batch-infer cancel BATCH_ID`` does it),
or terminate the batch's run in the Dagster UI or through its GraphQL API (a run-status
sensor then writes the request). The batch goes to ``cancelling``; a running inference loop
sees the request within seconds, aborts the requests in the engine and stops; the result
asset then publishes the finished lines in output.jsonl and every other request in
errors.jsonl as ``batch_cancelled``, and the batch ends ``cancelled``.
"""

from batch_assets.lifecycle.batches import (
    BatchStatus,
    Transition,
    batch_exists,
    read_batch,
    transition,
)
from resources.layout import BatchPaths
from resources.storage import BatchStorage

CANCELLED = (
    "batch_cancelled",
    "This request was not executed because the batch was cancelled.",
)


def cancel_requested(
    storage: BatchStorage, batch_id: str, status: BatchStatus | None = None
) -> bool:
    """Whether the batch is to be cancelled: a request object, or its record already says so.

    ``status`` is the record's status, when the caller has read it.
    """
    if status in (BatchStatus.CANCELLING, BatchStatus.CANCELLED):
        return True
    return storage.exists(BatchPaths(batch_id).cancel)


def request_cancel(storage: BatchStorage, batch_id: str) -> BatchStatus:
    """Ask for ``batch_id`` to be cancelled; returns its status afterwards.

    A finished batch stays as it is (OpenAI's API does the same).
    """
    if not batch_exists(storage, batch_id):
        raise KeyError(f"no batch {batch_id} in {storage.uri}")
    status = read_batch(storage, batch_id).status
    if status.ended:
        return status
    if not cancel_requested(storage, batch_id):
        storage.write_bytes(BatchPaths(batch_id).cancel, b"")
    return mark_cancelling(storage, batch_id)


def mark_cancelling(storage: BatchStorage, batch_id: str) -> BatchStatus:
    """Move the batch to ``cancelling`` unless it already ended; returns the status."""
    status = read_batch(storage, batch_id).status
    if status.ended:
        return status
    return transition(storage, batch_id, Transition.REQUEST_CANCEL).status
