"""Cancellation: cancel requests in the storage, and runs terminated in the Dagster UI.

A cancel request (an object under ``<root>/cancel/``, see
:mod:`batch_assets.lifecycle.cancellation`) moves the batch to ``cancelling``. A batch run
in progress sees the request itself and finishes the batch as ``cancelled``; queued runs of
the batch are cancelled, and a batch with no run in progress is published by ``cancel_job``
(no engine, no GPU). Once the batch is finished, the request object is removed. Terminating
a batch run in the UI or through the GraphQL API is a cancel request too.
"""

import dagster as dg

from batch_assets.jobs import batch_job, cancel_job, preview_job
from batch_assets.lifecycle.batches import batch_exists
from batch_assets.lifecycle.cancellation import mark_cancelling, request_cancel
from batch_assets.partitions import BATCH_PARTITIONS, open_batch, partition_key
from resources.layout import CANCEL, PARTITION_TAG, api_queue_key, batch_id_of
from resources.storage import BatchStorage

_WAITING = [dg.DagsterRunStatus.QUEUED, dg.DagsterRunStatus.NOT_STARTED]
_RUNNING = [
    dg.DagsterRunStatus.STARTING,
    dg.DagsterRunStatus.STARTED,
    dg.DagsterRunStatus.CANCELING,
]


def _publish_request(instance: dg.DagsterInstance, key: str) -> dg.RunRequest | None:
    """A cancel_job run for the batch, unless one was launched already."""
    launched = instance.get_runs(
        dg.RunsFilter(job_name=cancel_job.name, tags={PARTITION_TAG: key}), limit=1
    )
    if launched:
        return None
    return dg.RunRequest(run_key=f"{key}:cancel", job_name=cancel_job.name, partition_key=key)


@dg.sensor(
    jobs=[cancel_job],
    minimum_interval_seconds=10,
    default_status=dg.DefaultSensorStatus.RUNNING,
    description="Acts on cancel requests under cancel/: marks the batch cancelling, cancels "
    "its queued runs, and publishes it when no run is in progress.",
)
def cancel_sensor(context: dg.SensorEvaluationContext, storage: BatchStorage):
    requests = []
    for project, tenant in storage.tenants():
        for info in tenant.list(CANCEL):
            batch_id = batch_id_of(info.key)
            if not batch_exists(tenant, batch_id):
                continue  # not a batch of this storage
            if mark_cancelling(tenant, batch_id).ended:
                tenant.delete(info.key)  # done with (or too late): the request is consumed
                continue
            key = partition_key(project, batch_id)
            if tenant.exists(
                api_queue_key(batch_id)
            ) and not context.instance.has_dynamic_partition(BATCH_PARTITIONS, key):
                continue  # an API batch not yet registered: api_batch_sensor registers it
            runs = [
                run
                for run in context.instance.get_runs(
                    dg.RunsFilter(tags={PARTITION_TAG: key}, statuses=_WAITING + _RUNNING)
                )
                if run.job_name != cancel_job.name  # the publishing run itself goes ahead
            ]
            for run in runs:
                if run.status in _WAITING:
                    context.log.info("batch %s: cancelling queued run %s", key, run.run_id)
                    context.instance.run_coordinator.cancel_run(run.run_id)
            if any(run.status in _RUNNING for run in runs):
                continue  # the run in progress stops and publishes the batch itself
            if request := _publish_request(context.instance, key):
                requests.append(request)
    return requests or dg.SkipReason("no cancel request waiting")


@dg.run_status_sensor(
    run_status=dg.DagsterRunStatus.CANCELED,
    monitored_jobs=[batch_job, preview_job],
    request_job=cancel_job,
    default_status=dg.DefaultSensorStatus.RUNNING,
    description="A batch run terminated in the UI (or by the API) cancels its batch.",
)
def terminated_run_sensor(context: dg.RunStatusSensorContext, storage: BatchStorage):
    key = context.dagster_run.tags.get(PARTITION_TAG)
    if not key:
        return None
    tenant, batch_id = open_batch(storage, key)
    if request_cancel(tenant, batch_id).ended:
        return None
    context.log.info("batch %s: its run was terminated; publishing it as cancelled", key)
    return _publish_request(context.instance, key)
