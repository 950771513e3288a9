"""The jobs over the batch assets: run a batch, preview it, publish a cancelled one."""

import dagster as dg

from batch_assets.inference_run import batch_inference
from batch_assets.input_file import batch_input
from batch_assets.preview import batch_preview
from batch_assets.result_files import batch_results
from resources.layout import ENGINE_POOL_TAGS, GPU_TAGS
from resources.vllm_engine import VLLMEngine

batch_assets = [batch_input, batch_inference, batch_results, batch_preview]
# Runs that load an engine carry GPU_TAGS: the shipped instance limits them to one per GPU.
# In pool mode (BATCH_ENGINE_URLS, read once as the code location loads, as the resources
# are) they carry ENGINE_POOL_TAGS instead, whose limit lets several share the servers.
ENGINE_TAGS = ENGINE_POOL_TAGS if VLLMEngine.from_env().pooled else GPU_TAGS
batch_job = dg.define_asset_job(
    "batch_job",
    selection=dg.AssetSelection.assets(batch_input, batch_inference, batch_results),
    description="Validate, run and publish one batch (one partition).",
    tags=ENGINE_TAGS,
)
preview_job = dg.define_asset_job(
    "preview_job",
    selection=dg.AssetSelection.assets(batch_input, batch_preview),
    description="Validate a batch and answer its first requests (overnight uploads).",
    tags=ENGINE_TAGS,
)
cancel_job = dg.define_asset_job(
    "cancel_job",
    selection=dg.AssetSelection.assets(batch_input, batch_results),
    description="Publish a cancelled batch: finished lines kept, the rest batch_cancelled. "
    "Loads no engine, so it does not wait for the GPU.",
)
