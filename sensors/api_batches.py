"""The API sensor: batches created through the HTTP API become runs, as inbox uploads do.

``POST /v1/batches`` records the batch (``batch.json``, its source) and puts an entry under
``work/queue/api/``. Each tick, oldest first (creation time, then queue time), registers
each batch's dynamic partition and requests a ``batch_job`` run whose run key is the
partition key, so a batch never runs twice; an entry is removed once its batch has a run,
or once a batch cancelled before its run has its partition (``cancel_sensor`` then
publishes it).
"""

import dagster as dg

from batch_assets.jobs import batch_job
from batch_assets.lifecycle.batches import read_batch
from batch_assets.partitions import BATCH_PARTITIONS, batch_partitions, partition_key
from resources.layout import API_QUEUE, INPUT_TAG, PARTITION_TAG, PROJECT_TAG, batch_id_of
from resources.storage import BatchStorage

MAX_PER_TICK = 200


@dg.sensor(
    jobs=[batch_job],
    minimum_interval_seconds=5,
    default_status=dg.DefaultSensorStatus.RUNNING,
    description="Launches the batches created through the HTTP API (work/queue/api/).",
)
def api_batch_sensor(context: dg.SensorEvaluationContext, storage: BatchStorage):
    run_requests: list[dg.RunRequest] = []
    new_keys: list[str] = []
    waiting = []
    for project, tenant in storage.tenants():
        for info in tenant.list(API_QUEUE):
            queued_ns = tenant.read_json(info.key).get("queued_ns", 0)
            waiting.append(
                (queued_ns, read_batch(tenant, batch_id_of(info.key)), project, tenant, info.key)
            )
    # First in, first out (the run queue starts runs in the order they are requested): by
    # creation time, then the time the entry was queued (to the nanosecond), then the id.
    waiting.sort(key=lambda item: (item[1].created_at, item[0], item[1].id))
    for _, batch, project, tenant, entry in waiting:
        if len(run_requests) >= MAX_PER_TICK:
            break
        key = partition_key(project, batch.id)
        registered = context.instance.has_dynamic_partition(BATCH_PARTITIONS, key)
        if not registered:
            new_keys.append(key)
        launched = context.instance.get_runs(dg.RunsFilter(tags={PARTITION_TAG: key}), limit=1)
        if launched or batch.status.stopping:
            if registered:  # cancel_sensor needs the partition to publish a cancelled batch
                tenant.delete(entry)
            continue
        tags = {INPUT_TAG: batch.input_file_id} | ({PROJECT_TAG: project} if project else {})
        run_requests.append(
            dg.RunRequest(run_key=key, job_name=batch_job.name, partition_key=key, tags=tags)
        )
    if run_requests:
        context.log.info("%d batches from the HTTP API to run", len(run_requests))
    return dg.SensorResult(
        run_requests=run_requests,
        dynamic_partitions_requests=[batch_partitions.build_add_request(new_keys)]
        if new_keys
        else [],
        skip_reason=None if run_requests else dg.SkipReason("no batch waiting from the API"),
    )
