"""The jobs over the batch assets: run a batch, preview it, publish a cancelled one.

The deployment's engine is built here, once, as the code location loads
(:func:`~resources.engines.config.engine_from_env`); the code location's ``engine`` resource
is this same object, and the jobs that use it take their run tags and executor from it, so a
run can never get the other mode's tags.
"""

import dagster as dg

from batch_assets.inference.asset import batch_inference
from batch_assets.input.asset import batch_input
from batch_assets.results.asset import batch_results
from batch_assets.results.preview import batch_preview
from resources.engines.config import engine_from_env

batch_assets = [batch_input, batch_inference, batch_results, batch_preview]
ENGINE = engine_from_env()
batch_job = dg.define_asset_job(
    "batch_job",
    selection=dg.AssetSelection.assets(batch_input, batch_inference, batch_results),
    description="Validate, run and publish one batch (one partition).",
    tags=ENGINE.run_tags(),
    executor_def=ENGINE.executor(),
)
preview_job = dg.define_asset_job(
    "preview_job",
    selection=dg.AssetSelection.assets(batch_input, batch_preview),
    description="Validate a batch and answer its first requests (overnight uploads).",
    tags=ENGINE.run_tags(),
    executor_def=ENGINE.executor(),
)
cancel_job = dg.define_asset_job(
    "cancel_job",
    selection=dg.AssetSelection.assets(batch_input, batch_results),
    description="Publish a cancelled batch: finished lines kept, the rest batch_cancelled. "
    "Loads no engine, so it does not wait for the GPU.",
)
