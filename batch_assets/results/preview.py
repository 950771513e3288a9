"""The preview of an overnight batch: its first valid requests, run as soon as the GPU is free.

So a bad prompt is caught before the night instead of after it. The answers are journaled
like any other, so the overnight run does not compute them again, and land in
the batch's ``preview.jsonl`` in its outbox and in the asset's metadata.
"""

import itertools
import json

import dagster as dg

from batch_assets.inference.asset import run_requests
from batch_assets.input.asset import batch_input
from batch_assets.input.manifest import manifest_or_fail
from batch_assets.input.shards import iter_requests
from batch_assets.partitions import batch_partitions, open_batch
from batch_assets.results.asset import preview_table, success_line
from resources.engines.base import BatchEngine
from resources.journal import read_journal
from resources.layout import BatchPaths
from resources.storage import BatchStorage

PREVIEW_REQUESTS = 10


@dg.asset(
    partitions_def=batch_partitions,
    deps=[batch_input],
    group_name="batch",
    kinds={"vllm"},
    description=f"The first {PREVIEW_REQUESTS} valid requests of a batch, answered at once.",
)
def batch_preview(
    context: dg.AssetExecutionContext, storage: BatchStorage, engine: BatchEngine
) -> dg.MaterializeResult:
    storage, batch_id = open_batch(storage, context.partition_key)
    paths = BatchPaths(batch_id)
    manifest = manifest_or_fail(storage, paths)
    columns = ["line", "custom_id", "body"]
    first = list(
        itertools.islice(iter_requests(storage, manifest.shards, columns, True), PREVIEW_REQUESTS)
    )
    done = read_journal(storage, paths.journal)
    todo = [(line, body) for line, _, body in first if line not in done]
    if todo:
        run_requests(context, storage, engine, batch_id, manifest, todo, total=len(todo))
        done = read_journal(storage, paths.journal)
    text = "".join(  # all of them, unless a cancel request stopped the preview
        success_line(paths.batch_id, line, custom_id, done[line])
        for line, custom_id, _ in first
        if line in done
    )
    key = paths.preview
    storage.write_bytes(key, text.encode())
    rows = [json.loads(raw) for raw in text.splitlines()]
    return dg.MaterializeResult(
        metadata={
            "preview": dg.MetadataValue.md(preview_table(rows)),
            "requests": len(rows),
            "path": dg.MetadataValue.path(storage.url(key)),
        }
    )
