"""The inference asset: run every valid request of a batch through the vLLM engine once."""

import time
from collections.abc import Iterator
from typing import Any

import dagster as dg
import polars as pl

from batch_assets.batch_object import BatchPaths, read_batch, update_batch
from batch_assets.inference_loop import InferenceLoop, LoopStats
from batch_assets.input_file import batch_input
from batch_assets.journal import JournalWriter, journaled_lines
from batch_assets.partitions import batch_partitions
from batch_assets.request_schema import EMBEDDINGS_URL
from resources.openai_to_vllm import RequestBuilder
from resources.storage import BatchStorage
from resources.vllm_engine import VLLMEngine
from resources.vllm_to_openai import ResponseBuilder


def pending_requests(
    storage: BatchStorage, manifest: dict[str, Any], done: set[int]
) -> Iterator[tuple[int, str]]:
    """``(line, body_json)`` of every valid request not yet journaled, shard by shard."""
    for shard in manifest["shards"]:
        with storage.open_read(shard["key"]) as stream:
            frame = pl.read_parquet(stream, columns=["line", "body"])
        if done:
            frame = frame.filter(~pl.col("line").is_in(list(done)))
        yield from frame.iter_rows()


@dg.asset(
    partitions_def=batch_partitions,
    deps=[batch_input],
    group_name="batch",
    kinds={"vllm"},
    description="Every valid request run through one vLLM engine, journaled as it finishes.",
    pool="gpu",
)
def batch_inference(
    context: dg.AssetExecutionContext, storage: BatchStorage, engine: VLLMEngine
) -> dg.MaterializeResult:
    batch_id = context.partition_key
    paths = BatchPaths(batch_id)
    manifest = storage.read_json(paths.manifest)
    done = journaled_lines(storage, paths.journal)
    todo = manifest["requests"] - len(done)
    if read_batch(storage, batch_id)["status"] == "validating":
        update_batch(storage, batch_id, status="in_progress")
    context.log.info(
        "batch %s: %d requests, %d already journaled, %d to run",
        batch_id,
        manifest["requests"],
        len(done),
        todo,
    )
    stats = LoopStats()
    load_s = 0.0
    if todo > 0:
        started = time.monotonic()
        runner = "pooling" if manifest["endpoint"] == EMBEDDINGS_URL else "generate"
        llm = engine.load(runner)
        load_s = time.monotonic() - started
        max_num_seqs = llm.llm_engine.vllm_config.scheduler_config.max_num_seqs
        attempt = f"{int(time.time() * 1000)}-{context.run_id[:8]}"
        with JournalWriter(storage, paths.journal, attempt) as journal:
            loop = InferenceLoop(
                llm=llm,
                requests=RequestBuilder(llm, clamp_max_tokens=engine.clamp_max_tokens),
                responses=ResponseBuilder(engine.served_model_names[0], llm.get_tokenizer()),
                journal=journal,
                batch_id=batch_id,
                endpoint=manifest["endpoint"],
                window=engine.max_pending_requests or 4 * max_num_seqs,
                on_progress=lambda s: context.log.info(
                    "batch %s: %d/%d done, %.1f req/s, %.0f output tok/s",
                    batch_id,
                    len(done) + s.requests,
                    manifest["requests"],
                    s.requests_per_s,
                    s.output_tokens_per_s,
                ),
            )
            stats = loop.run(pending_requests(storage, manifest, done))
    return dg.MaterializeResult(
        metadata={
            "requests_total": manifest["requests"],
            "requests_done_before": len(done),
            "requests_done_this_run": stats.requests,
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
