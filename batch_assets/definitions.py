"""The code location: assets, jobs, sensors, schedule and resources (``dagster dev`` loads it)."""

import dagster as dg

from batch_assets.jobs import ENGINE, batch_assets, batch_job, cancel_job, preview_job
from resources.storage import BatchStorage
from resources.webhooks import WebhookSender
from sensors import definitions as sensor_definitions

# No I/O here: the code location loads without touching storage or a GPU. The engine is the
# one the jobs' tags come from (BATCH_ENGINE_CONFIG, BATCH_MODEL, BATCH_ENGINE_URLS, ...).
defs = dg.Definitions.merge(
    dg.Definitions(
        assets=batch_assets,
        jobs=[batch_job, preview_job, cancel_job],
        resources={
            "storage": BatchStorage.from_env(),
            "engine": ENGINE,
            "webhooks": WebhookSender.from_env(),
        },
    ),
    sensor_definitions.defs,
)
