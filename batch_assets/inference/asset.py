"""The inference asset: run every valid request of a batch through the vLLM engine once.

A run in the overnight slot carries the slot's end (tag ``batch/slot_end``): there the asset
stops taking new requests, keeps what finished, and leaves the rest for the next slot without
materializing, so the results wait. At the batch's ``expires_at`` it stops the same way and
materializes, and ``batch_results`` reports the unfinished lines as ``batch_expired``.
"""

import time
from collections.abc import Callable, Iterable, Iterator

import dagster as dg
import numpy as np
import polars as pl

from batch_assets.input.asset import batch_input
from batch_assets.input.manifest import Manifest, manifest_or_fail
from batch_assets.input.shards import read_shard
from batch_assets.lifecycle.batches import (
    BatchRecord,
    BatchStatus,
    RequestCounts,
    Transition,
    read_batch,
    record_live_counts,
    transition,
)
from batch_assets.lifecycle.cancellation import cancel_requested, mark_cancelling
from batch_assets.lifecycle.throughput import record_run
from batch_assets.partitions import batch_partitions, open_batch
from resources.engines.base import BatchEngine, LoopStats, RunControl
from resources.engines.progress import Progress, report_progress
from resources.journal import JournalIndex, JournalWriter
from resources.layout import SLOT_END_TAG, SLOT_TAG, BatchPaths
from resources.storage import BatchStorage

PROGRESS_INTERVAL_S = 0.5  # progress reports to this process's listeners (the CLI's bar)
LOG_INTERVAL_S = 15.0  # progress lines in the run's event log
LIVE_COUNTS_INTERVAL_S = 2.0  # the batch's live request counts (API, CLI), from the journal
# vLLM's request priority in pool mode (lower goes first): overnight work yields to the rest.
OVERNIGHT_PRIORITY = 10


def pending_requests(
    storage: BatchStorage, manifest: Manifest, done: np.ndarray
) -> Iterator[tuple[int, str]]:
    """``(line, body_json)`` of every valid request not yet journaled, in engine order.

    ``done`` holds the journaled line numbers, sorted.
    """
    for shard in manifest.shards:
        frame = read_shard(storage, shard.key, ["line", "body"])
        lo, hi = np.searchsorted(done, [shard.first_line, shard.last_line + 1])
        if hi > lo:
            frame = frame.filter(~pl.col("line").is_in(done[lo:hi].tolist()))
        yield from frame.iter_rows()


def run_requests(
    context: dg.AssetExecutionContext,
    storage: BatchStorage,
    engine: BatchEngine,
    batch_id: str,
    manifest: Manifest,
    pending: Iterable[tuple[int, str]],
    deadline: float | None = None,
    done_before: int = 0,
    total: int = 0,
    counts_before: RequestCounts | None = None,
) -> tuple[LoopStats, float]:
    """Run ``pending`` on the engine, journaling; returns stats and the engine's load time.

    In-process the engine is loaded here; in pool mode the requests go to its servers (no
    load). A cancel request (:mod:`batch_assets.lifecycle.cancellation`) stops the run within
    seconds. ``done_before`` and ``total`` only frame the progress reports; with
    ``counts_before`` (the batch's counts when the run began) the run keeps the batch's live
    request counts up to date.
    """
    engine.check_run_tags(context.run.tags)
    attempt = f"{int(time.time() * 1000)}-{context.run.run_id[:8]}"
    live = _live_counts_writer(context, storage, batch_id, counts_before)
    reporter = _progress_reporter(context, batch_id, done_before, total, live)
    overnight = context.run.tags.get(SLOT_TAG) is not None
    control = RunControl(
        deadline=deadline,
        cancel_check=lambda: cancel_requested(storage, batch_id),
        on_progress=reporter,
        progress_interval_s=PROGRESS_INTERVAL_S,
        priority=OVERNIGHT_PRIORITY if overnight else 0,
    )
    if engine.LOADS_IN_RUN:
        report_progress(Progress(batch_id, "loading", done_before, total))
    with JournalWriter(storage, BatchPaths(batch_id).journal, attempt) as journal:
        stats, load_s = engine.run_pending(batch_id, manifest.endpoint, pending, journal, control)
    reporter(stats)
    live(stats, True)  # the run's last counts: at its end, the slot's end or a cancel
    return stats, load_s


def _live_counts_writer(
    context: dg.AssetExecutionContext,
    storage: BatchStorage,
    batch_id: str,
    before: RequestCounts | None,
) -> Callable[[LoopStats, bool], None]:
    """Write the batch's live counts at most every LIVE_COUNTS_INTERVAL_S (or when forced).

    The counts are advisory until the results are published: a storage error writing them is
    logged, and never fails the run.
    """
    last = time.monotonic()

    def write(stats: LoopStats, force: bool = False) -> None:
        nonlocal last
        if before is None or (not force and time.monotonic() - last < LIVE_COUNTS_INTERVAL_S):
            return
        last = time.monotonic()
        counts = RequestCounts(
            before.total,
            before.completed + stats.requests - stats.rejected,
            before.failed + stats.rejected,
        )
        try:
            record_live_counts(storage, batch_id, counts, stats.requests_per_s)
        except Exception as error:
            context.log.warning("batch %s: live counts not written: %s", batch_id, error)

    if before is not None:
        write(LoopStats(), True)
    return write


def _progress_reporter(
    context: dg.AssetExecutionContext,
    batch_id: str,
    done_before: int,
    total: int,
    live: Callable[[LoopStats, bool], None],
) -> Callable[[LoopStats], None]:
    """Report every loop update; log one to the run's event log every LOG_INTERVAL_S."""
    last_log = time.monotonic()

    def report(stats: LoopStats) -> None:
        nonlocal last_log
        live(stats, False)
        report_progress(
            Progress(
                batch_id,
                "running",
                done_before + stats.requests,
                total,
                stats.requests_per_s,
                stats.output_tokens_per_s,
            )
        )
        if time.monotonic() - last_log >= LOG_INTERVAL_S:
            last_log = time.monotonic()
            context.log.info(
                "batch %s: %d done in this run, %.1f req/s, %.0f output tok/s",
                batch_id,
                stats.requests,
                stats.requests_per_s,
                stats.output_tokens_per_s,
            )

    return report


def _deadline(context: dg.AssetExecutionContext, batch: BatchRecord) -> tuple[float, str]:
    """The earlier of the batch's expiry and the slot's end, and which one it is."""
    deadlines = [(float(batch.expires_at), "completion window")]
    if slot_end := context.run.tags.get(SLOT_END_TAG):
        deadlines.append((float(slot_end), "overnight slot"))
    return min(deadlines)


@dg.asset(
    partitions_def=batch_partitions,
    deps=[batch_input],
    group_name="batch",
    kinds={"vllm"},
    description="Every valid request run through the vLLM engine (in the run, or the servers of "
    "pool mode), journaled as it finishes.",
    output_required=False,
)
def batch_inference(context: dg.AssetExecutionContext, storage: BatchStorage, engine: BatchEngine):
    storage, batch_id = open_batch(storage, context.partition_key)
    paths = BatchPaths(batch_id)
    manifest = manifest_or_fail(storage, paths)
    with JournalIndex(storage, paths.journal) as journal:
        done, done_errors = journal.lines, journal.errors
    counts_before = RequestCounts(
        manifest.request_lines, len(done) - done_errors, manifest.invalid + done_errors
    )
    todo = manifest.requests - len(done)
    batch = read_batch(storage, batch_id)
    cancelled = cancel_requested(storage, batch_id, batch.status)
    if cancelled:
        mark_cancelling(storage, batch_id)
    elif batch.status is BatchStatus.VALIDATING:
        transition(storage, batch_id, Transition.START)
    deadline, deadline_name = _deadline(context, batch)  # expires_at: unchanged by the above
    context.log.info(
        "batch %s: %d requests, %d already journaled, %d to run",
        batch_id,
        manifest.requests,
        len(done),
        todo,
    )
    stats, load_s = LoopStats(cancelled=cancelled), 0.0
    if todo > 0 and not cancelled and time.time() < deadline:
        pending = pending_requests(storage, manifest, done)
        stats, load_s = run_requests(
            context,
            storage,
            engine,
            batch_id,
            manifest,
            pending,
            deadline,
            len(done),
            manifest.requests,
            counts_before,
        )
    record_run(
        storage,
        engine.served_model_names[0],
        batch_id,
        stats.requests,
        stats.prompt_tokens,
        stats.completion_tokens,
        stats.wall_s,
    )
    if stats.cancelled:
        mark_cancelling(storage, batch_id)
        context.log.info("batch %s: cancelled; finished requests are kept", batch_id)
    remaining = todo - stats.requests
    if remaining > 0 and deadline_name == "overnight slot" and not stats.cancelled:
        context.log.info(
            "batch %s: the overnight slot ended with %d requests left; they run in the next slot",
            batch_id,
            remaining,
        )
        return  # not materialized: batch_results waits for the next slot
    yield dg.MaterializeResult(
        metadata={
            "requests_total": manifest.requests,
            "requests_done_before": len(done),
            "requests_done_this_run": stats.requests,
            "requests_left": remaining,
            "cancelled": stats.cancelled,
            "rejected_by_engine": stats.rejected,
            "prompt_tokens": stats.prompt_tokens,
            "completion_tokens": stats.completion_tokens,
            "cached_prompt_tokens": stats.cached_tokens,
            "requests_per_s": round(stats.requests_per_s, 2),
            "output_tokens_per_s": round(stats.output_tokens_per_s, 1),
            "inference_wall_s": round(stats.wall_s, 3),
            "engine_load_s": round(load_s, 3),
        }
    )
