"""The inference asset: run every valid request of a batch through the vLLM engine once.

A run in the overnight slot carries the slot's end (tag ``batch/slot_end``): there the asset
stops taking new requests, keeps what finished, and leaves the rest for the next slot without
materializing, so the results wait. At the batch's ``expires_at`` it stops the same way and
materializes, and ``batch_results`` reports the unfinished lines as ``batch_expired``.
"""

import time
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import dagster as dg
import numpy as np
import polars as pl

from batch_assets.input.asset import batch_input
from batch_assets.input.manifest import Manifest, manifest_or_fail
from batch_assets.input.shards import read_shard
from batch_assets.lifecycle.batches import (
    BatchRecord,
    BatchStatus,
    Transition,
    read_batch,
    transition,
)
from batch_assets.lifecycle.cancellation import cancel_requested, mark_cancelling
from batch_assets.partitions import batch_partitions, open_batch
from resources.endpoints import EMBEDDINGS_URL
from resources.engines.inference_loop import InferenceLoop, LoopStats
from resources.engines.openai_to_vllm import RequestBuilder
from resources.engines.progress import Progress, report_progress
from resources.engines.server_loop import ServerLoop, ServersUnavailable
from resources.engines.servers import PoolMisconfigured, ServerPool
from resources.engines.vllm_engine import Runner, VLLMEngine
from resources.engines.vllm_serving import ServingLayer
from resources.engines.vllm_to_openai import ResponseBuilder
from resources.journal import JournalWriter, journaled_lines
from resources.layout import SLOT_END_TAG, SLOT_TAG, BatchPaths
from resources.storage import BatchStorage

PROGRESS_INTERVAL_S = 0.5  # progress reports to this process's listeners (the CLI's bar)
LOG_INTERVAL_S = 15.0  # progress lines in the run's event log
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
    engine: VLLMEngine,
    batch_id: str,
    manifest: Manifest,
    pending: Iterable[tuple[int, str]],
    deadline: float | None = None,
    done_before: int = 0,
    total: int = 0,
) -> tuple[LoopStats, float]:
    """Run ``pending`` on the engine, journaling; returns stats and the engine's load time.

    In-process the engine is loaded here; in pool mode the requests go to its servers (no
    load). A cancel request (:mod:`batch_assets.lifecycle.cancellation`) stops the run within
    seconds.
    ``done_before`` and ``total`` only frame the progress reports.
    """
    attempt = f"{int(time.time() * 1000)}-{context.run.run_id[:8]}"
    reporter = _progress_reporter(context, batch_id, done_before, total)
    with JournalWriter(storage, BatchPaths(batch_id).journal, attempt) as journal:
        if engine.pooled:
            stats, load_s = (
                _run_on_servers(
                    context,
                    storage,
                    engine,
                    batch_id,
                    manifest,
                    pending,
                    deadline,
                    journal,
                    reporter,
                ),
                0.0,
            )
        else:
            report_progress(Progress(batch_id, "loading", done_before, total))
            stats, load_s = _run_in_process(
                storage, engine, batch_id, manifest, pending, deadline, journal, reporter
            )
    reporter(stats)
    return stats, load_s


def _run_in_process(
    storage: BatchStorage,
    engine: VLLMEngine,
    batch_id: str,
    manifest: Manifest,
    pending: Iterable[tuple[int, str]],
    deadline: float | None,
    journal: JournalWriter,
    reporter: Callable[[LoopStats], None],
) -> tuple[LoopStats, float]:
    started = time.monotonic()
    runner: Runner = "pooling" if manifest.endpoint == EMBEDDINGS_URL else "generate"
    llm = engine.load(runner)
    load_s = time.monotonic() - started
    max_num_seqs = llm.llm_engine.vllm_config.scheduler_config.max_num_seqs
    serving = None if runner == "pooling" else _serving_layer(llm, engine, batch_id)
    loop = InferenceLoop(
        llm=llm,
        requests=RequestBuilder(llm, clamp_max_tokens=engine.clamp_max_tokens, serving=serving),
        responses=ResponseBuilder(engine.served_model_names[0], llm.get_tokenizer(), serving),
        journal=journal,
        batch_id=batch_id,
        endpoint=manifest.endpoint,
        window=engine.max_pending_requests or 4 * max_num_seqs,
        deadline=deadline,
        cancel_check=lambda: cancel_requested(storage, batch_id),
        on_progress=reporter,
        progress_interval_s=PROGRESS_INTERVAL_S,
    )
    try:
        return loop.run(pending), load_s
    except Exception as error:
        if type(error).__name__ != "EngineDeadError":
            raise
        engine.discard()  # a kept engine is dead: the next run builds a new one
        raise dg.Failure(
            f"batch {batch_id}: the vLLM engine died mid-batch (out of memory or a crash: "
            f"{error}); the answers finished so far are journaled and a rerun resumes"
        ) from error


def _serving_layer(llm: Any, engine: VLLMEngine, batch_id: str) -> ServingLayer:
    """vLLM's serving layer with the engine's parsers (tools, reasoning, Responses)."""
    try:
        return ServingLayer(
            llm,
            engine.served_model_names[0],
            engine.tool_call_parser,
            engine.enable_auto_tool_choice,
            engine.reasoning_parser,
        )
    except (TypeError, KeyError, ValueError) as error:  # e.g. a parser vLLM does not have
        raise dg.Failure(f"batch {batch_id}: the engine's parser settings: {error}") from error


def _run_on_servers(
    context: dg.AssetExecutionContext,
    storage: BatchStorage,
    engine: VLLMEngine,
    batch_id: str,
    manifest: Manifest,
    pending: Iterable[tuple[int, str]],
    deadline: float | None,
    journal: JournalWriter,
    reporter: Callable[[LoopStats], None],
) -> LoopStats:
    """Pool mode: the requests go to the engine's servers; nothing is loaded here."""
    overnight = context.run.tags.get(SLOT_TAG) is not None
    loop = ServerLoop(
        pool=ServerPool(
            engine.engine_urls,
            engine.served_model_names[0],
            window=engine.server_window,
            timeout_s=engine.server_timeout_s,
            api_key=engine.engine_api_key,
        ),
        journal=journal,
        endpoint=manifest.endpoint,
        model=engine.served_model_names[0],
        down_timeout_s=engine.server_down_timeout_s,
        priority=(OVERNIGHT_PRIORITY if overnight else 0) if engine.priority_scheduling else None,
        deadline=deadline,
        cancel_check=lambda: cancel_requested(storage, batch_id),
        on_progress=reporter,
        progress_interval_s=PROGRESS_INTERVAL_S,
    )
    try:
        return loop.run(pending)
    except PoolMisconfigured as error:
        raise dg.Failure(f"batch {batch_id}: {error}") from error
    except ServersUnavailable as error:
        raise dg.Failure(f"batch {batch_id}: {error}") from error


def _progress_reporter(
    context: dg.AssetExecutionContext, batch_id: str, done_before: int, total: int
) -> Callable[[LoopStats], None]:
    """Report every loop update; log one to the run's event log every LOG_INTERVAL_S."""
    last_log = time.monotonic()

    def report(stats: LoopStats) -> None:
        nonlocal last_log
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
def batch_inference(context: dg.AssetExecutionContext, storage: BatchStorage, engine: VLLMEngine):
    storage, batch_id = open_batch(storage, context.partition_key)
    paths = BatchPaths(batch_id)
    manifest = manifest_or_fail(storage, paths)
    done = journaled_lines(storage, paths.journal)
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
