"""The code location: the batch assets, their job and resources (``dagster dev`` loads this)."""

import os

import dagster as dg

from batch_assets.inference_run import batch_inference
from batch_assets.input_file import batch_input
from batch_assets.result_files import batch_results
from resources.storage import BatchStorage
from resources.vllm_engine import VLLMEngine

DEFAULT_STORAGE = "./data"
DEFAULT_MODEL = "./models/tiny-chat"

batch_assets = [batch_input, batch_inference, batch_results]
batch_job = dg.define_asset_job(
    "batch_job",
    selection=dg.AssetSelection.assets(*batch_assets),
    description="Validate, run and publish one batch (one partition).",
)


def default_resources() -> dict[str, dg.ConfigurableResource]:
    """Resources from BATCH_STORAGE, BATCH_MODEL and BATCH_SERVED_MODEL_NAME; no I/O here."""
    return {
        "storage": BatchStorage(root=os.environ.get("BATCH_STORAGE", DEFAULT_STORAGE)),
        "engine": VLLMEngine(
            model=os.environ.get("BATCH_MODEL", DEFAULT_MODEL),
            served_model_name=os.environ.get("BATCH_SERVED_MODEL_NAME"),
        ),
    }


defs = dg.Definitions(
    assets=batch_assets,
    jobs=[batch_job],
    resources=default_resources(),
)
