"""The code location: assets, job, sensors, schedule and resources (``dagster dev`` loads it)."""

import os

import dagster as dg

from batch_assets.jobs import batch_assets, batch_job, cancel_job, preview_job
from resources.storage import BatchStorage
from resources.vllm_engine import VLLMEngine
from sensors import definitions as sensor_definitions

DEFAULT_STORAGE = "./data"
DEFAULT_MODEL = "./models/tiny-chat"


def default_resources() -> dict[str, dg.ConfigurableResource]:
    """Resources from BATCH_STORAGE, BATCH_PROJECTS, BATCH_MODEL and BATCH_SERVED_MODEL_NAME.

    No I/O here: the code location loads without touching storage or a GPU.
    """
    projects = [p.strip() for p in os.environ.get("BATCH_PROJECTS", "").split(",") if p.strip()]
    return {
        "storage": BatchStorage(
            root=os.environ.get("BATCH_STORAGE", DEFAULT_STORAGE), projects=projects
        ),
        "engine": VLLMEngine(
            model=os.environ.get("BATCH_MODEL", DEFAULT_MODEL),
            served_model_name=os.environ.get("BATCH_SERVED_MODEL_NAME"),
        ),
    }


defs = dg.Definitions.merge(
    dg.Definitions(
        assets=batch_assets,
        jobs=[batch_job, preview_job, cancel_job],
        resources=default_resources(),
    ),
    sensor_definitions.defs,
)
