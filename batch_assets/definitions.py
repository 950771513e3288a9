"""The code location: assets, job, sensors, schedule and resources (``dagster dev`` loads it)."""

import dagster as dg

from batch_assets.jobs import batch_assets, batch_job, cancel_job, preview_job
from resources.engines.vllm_engine import VLLMEngine
from resources.storage import BatchStorage
from sensors import definitions as sensor_definitions


def default_resources() -> dict[str, dg.ConfigurableResource]:
    """Resources from BATCH_STORAGE, BATCH_PROJECTS, BATCH_MODEL and BATCH_SERVED_MODEL_NAME.

    No I/O here: the code location loads without touching storage or a GPU.
    """
    return {"storage": BatchStorage.from_env(), "engine": VLLMEngine.from_env()}


defs = dg.Definitions.merge(
    dg.Definitions(
        assets=batch_assets,
        jobs=[batch_job, preview_job, cancel_job],
        resources=default_resources(),
    ),
    sensor_definitions.defs,
)
