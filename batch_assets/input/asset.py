"""The input asset: validate an uploaded JSONL file into request shards and line errors."""

import dagster as dg
from pydantic import Field

from batch_assets.input.estimate import LineEstimator, estimate_metadata
from batch_assets.input.manifest import Manifest, manifest_or_fail
from batch_assets.input.validation import FileRejected, Limits, save_manifest, validate_input
from batch_assets.lifecycle.batches import (
    RequestCounts,
    fail_batch,
    read_batch,
    read_source,
    source_unchanged,
    update_batch,
)
from batch_assets.lifecycle.files import set_file_status
from batch_assets.lifecycle.throughput import read_runs
from batch_assets.partitions import batch_partitions, open_batch
from resources.engines.base import BatchEngine
from resources.images import ImagePolicy
from resources.layout import BatchPaths
from resources.storage import BatchStorage


class InputLimits(dg.Config):
    """Per-file limits; a file over them fails its batch with a readable reason."""

    max_line_bytes: int = Field(
        default=32 << 20,
        description="Longest accepted line, in bytes (room for an image of 20 MB in base64).",
    )
    max_lines: int = Field(default=1_000_000, description="Most requests in one file.")
    max_file_bytes: int = Field(default=8 << 30, description="Largest accepted file, in bytes.")
    shard_rows: int = Field(default=10_000, description="Lines per parquet shard.")
    order_by_prefix: bool = Field(
        default=True,
        description="Within each shard, run requests that share a prompt prefix (a system "
        "prompt) together so they hit the engine's prefix cache; results keep input order.",
    )


@dg.asset(
    partitions_def=batch_partitions,
    group_name="batch",
    kinds={"python", "parquet"},
    description="The uploaded JSONL file, validated line by line into request shards.",
)
def batch_input(
    context: dg.AssetExecutionContext,
    config: InputLimits,
    storage: BatchStorage,
    engine: BatchEngine,
) -> dg.MaterializeResult:
    storage, batch_id = open_batch(storage, context.partition_key)
    paths = BatchPaths(batch_id)
    source = read_source(storage, paths)
    if storage.exists(paths.manifest):
        manifest = manifest_or_fail(storage, paths)
        if manifest.source == source:
            context.log.info("batch %s already validated; reusing its shards", batch_id)
            return _result(manifest, storage, paths, engine, reused=True)
    if not source_unchanged(storage, source):
        fail_batch(
            storage,
            batch_id,
            "input_changed",
            f"{source.key} was removed or replaced after this batch was created; "
            "the new upload is a batch of its own",
        )
        raise dg.Failure(f"input {source.key} changed after batch {batch_id} was created")
    limits = Limits(
        config.max_line_bytes,
        config.max_lines,
        config.max_file_bytes,
        config.shard_rows,
        config.order_by_prefix,
        engine.GROUPS_LINES_BY_MODEL,
        ImagePolicy.from_env(),
    )
    batch = read_batch(storage, batch_id)
    served = engine.model_names
    estimator = LineEstimator(engine.tokenizer_folder, engine.context_length)
    try:
        report = validate_input(
            storage, source.key, paths, served, limits, batch.endpoint or None, estimator
        )
    except FileRejected as rejected:
        fail_batch(storage, batch_id, rejected.code, rejected.message, rejected.line)
        set_file_status(storage, batch.input_file_id, "error", rejected.message)
        raise dg.Failure(
            description=f"batch {batch_id} failed validation: {rejected.message}",
            metadata={"code": rejected.code, "input": source.key},
        ) from rejected
    manifest = save_manifest(storage, paths, source, report)
    set_file_status(storage, batch.input_file_id, "processed")
    update_batch(
        storage,
        batch_id,
        endpoint=report.endpoint,
        model=engine.served_model_names[0],
        request_counts=RequestCounts(report.valid + report.invalid, 0, report.invalid),
    )
    return _result(manifest, storage, paths, engine, reused=False)


def _result(
    manifest: Manifest, storage: BatchStorage, paths: BatchPaths, engine: BatchEngine, reused: bool
) -> dg.MaterializeResult:
    runs = read_runs(storage, engine.served_model_names[0])
    names = engine.model_names
    adapters = {m: n for m, n in manifest.models.items() if names and m in names.adapters}
    return dg.MaterializeResult(
        metadata={
            **estimate_metadata(manifest.estimate, manifest.requests, runs),
            "input": manifest.source.key,
            "lines": manifest.lines,
            "valid": manifest.requests,
            "invalid": manifest.invalid,
            "blank_lines": manifest.blank_lines,
            "endpoint": manifest.endpoint,
            "models": dg.MetadataValue.json(manifest.models),
            "adapters": dg.MetadataValue.json(adapters),
            "error_codes": dg.MetadataValue.json(manifest.error_codes),
            "shards": len(manifest.shards),
            "work_area": dg.MetadataValue.path(storage.url(paths.work)),
            "reused": reused,
        }
    )
