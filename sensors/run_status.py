"""When a batch run fails for good (its retries spent), say so in the batch's batch.json."""

import dagster as dg

from batch_assets.jobs import batch_job, cancel_job
from batch_assets.lifecycle.batches import (
    fail_batch,
    read_batch,
    root_cause_message,
)
from batch_assets.partitions import open_batch
from resources.layout import MAX_RETRIES, PARTITION_TAG, RETRY_NUMBER
from resources.storage import BatchStorage


@dg.run_failure_sensor(
    monitored_jobs=[batch_job, cancel_job],
    default_status=dg.DefaultSensorStatus.RUNNING,
    description="Marks a batch failed in batch.json once its run has no retry left.",
)
def batch_failure_sensor(context: dg.RunFailureSensorContext, storage: BatchStorage) -> None:
    run = context.dagster_run
    key = run.tags.get(PARTITION_TAG)
    if not key:
        return
    storage, batch_id = open_batch(storage, key)
    retry = int(run.tags.get(RETRY_NUMBER, "0"))
    max_retries = int(
        run.tags.get(
            MAX_RETRIES,
            context.instance.run_retries_max_retries if context.instance.run_retries_enabled else 0,
        )
    )
    if retry < max_retries:
        context.log.info(
            "batch %s: run %s failed, retry %d of %d follows",
            batch_id,
            run.run_id,
            retry + 1,
            max_retries,
        )
        return
    if read_batch(storage, batch_id).status.ended:
        return
    steps = [
        f"{event.step_key}: {root_cause_message(event.step_failure_data.error)}"
        for event in context.get_step_failure_events()
        if event.step_failure_data and event.step_failure_data.error
    ]
    reason = "; ".join(steps) or context.failure_event.message or "the batch run failed"
    fail_batch(storage, batch_id, "run_failed", f"{reason[:900]} (run {run.run_id})")
