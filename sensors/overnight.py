"""The nightly overnight slot: launch the batches uploaded under ``inbox/overnight/``.

The cron and time zone come from ``BATCH_OVERNIGHT_CRON`` (default ``0 1 * * *``, 01:00) and
``BATCH_OVERNIGHT_TIMEZONE`` (default UTC); the slot lasts ``BATCH_OVERNIGHT_HOURS`` (default
6). At the slot's end a run stops taking new requests and keeps what finished; a queued batch
that is not finished is launched again the next night (a new run key per night) and resumes
from its journal, until it completes or its completion window expires.
"""

import datetime as dt
import os

import dagster as dg

from batch_assets.jobs import batch_job
from batch_assets.lifecycle.batches import read_batch
from batch_assets.partitions import partition_key
from resources.layout import OVERNIGHT_QUEUE, SLOT_END_TAG, SLOT_TAG, batch_id_of
from resources.storage import BatchStorage


@dg.schedule(
    job=batch_job,
    cron_schedule=os.environ.get("BATCH_OVERNIGHT_CRON", "0 1 * * *"),
    execution_timezone=os.environ.get("BATCH_OVERNIGHT_TIMEZONE", "UTC"),
    default_status=dg.DefaultScheduleStatus.RUNNING,
    description="Runs the batches queued under inbox/overnight/ in the nightly slot.",
)
def overnight_schedule(context: dg.ScheduleEvaluationContext, storage: BatchStorage):
    start = context.scheduled_execution_time
    night = start.strftime("%Y-%m-%d")
    hours = float(os.environ.get("BATCH_OVERNIGHT_HOURS", "6"))
    slot_end = (start + dt.timedelta(hours=hours)).timestamp()
    requests = []
    for project, tenant in storage.tenants():
        for info in tenant.list(OVERNIGHT_QUEUE):
            batch_id = batch_id_of(info.key)
            if read_batch(tenant, batch_id).status.stopping:
                continue
            key = partition_key(project, batch_id)
            requests.append(
                dg.RunRequest(
                    run_key=f"{key}:{night}",
                    partition_key=key,
                    tags={SLOT_TAG: "overnight", SLOT_END_TAG: f"{slot_end:.0f}"},
                )
            )
    if not requests:
        return dg.SkipReason("no overnight batch is waiting")
    context.log.info("overnight slot %s: launching %d batches", night, len(requests))
    return requests
