"""The code location: assets, job, sensors, schedule and resources (``dagster dev`` loads it)."""

import os

import dagster as dg

from batch_assets.jobs import batch_assets, batch_job, preview_job
from resources.storage import BatchStorage
from resources.vllm_engine import VLLMEngine
from sensors import definitions as sensor_definitions

DEFAULT_STORAGE = "./data"
DEFAULT_MODEL = "./models/tiny-chat"


def default_resources() -> dict[str, dg.ConfigurableResource]:
    """Resources from BATCH_STORAGE, BATCH_MODEL and BATCH_SERVED_MODEL_NAME; no I/O here."""
    return {
        "storage": BatchStorage(root=os.environ.get("BATCH_STORAGE", DEFAULT_STORAGE)),
        "engine": VLLMEngine(
            model=os.environ.get("BATCH_MODEL", DEFAULT_MODEL),
            served_model_name=os.environ.get("BATCH_SERVED_MODEL_NAME"),
        ),
    }


defs = dg.Definitions.merge(
    dg.Definitions(
        assets=batch_assets, jobs=[batch_job, preview_job], resources=default_resources()
    ),
    sensor_definitions.defs,
)
