"""Retention: deletes expired files and the work areas of batches that ended long ago.

What is deleted and what is kept is the lifecycle's (:mod:`batch_assets.lifecycle.retention`);
this sensor applies it to every project every ten minutes. ``BATCH_WORK_RETENTION_DAYS``
(default 7) is how long an ended batch's work area, which holds a copy of every prompt, is kept.
"""

import os
import time

import dagster as dg

from batch_assets.lifecycle.retention import DEFAULT_WORK_RETENTION_DAYS, apply_retention
from resources.storage import BatchStorage


def work_retention_s() -> float:
    days = os.environ.get("BATCH_WORK_RETENTION_DAYS") or DEFAULT_WORK_RETENTION_DAYS
    return float(days) * 24 * 3600


@dg.sensor(
    minimum_interval_seconds=600,
    default_status=dg.DefaultSensorStatus.RUNNING,
    description="Deletes expired files (uploads' expires_after, batches' output_expires_after) "
    "and ended batches' work areas after BATCH_WORK_RETENTION_DAYS (default 7).",
)
def retention_sensor(context: dg.SensorEvaluationContext, storage: BatchStorage) -> dg.SkipReason:
    deleted = []
    for project, tenant in storage.tenants():
        report = apply_retention(tenant, time.time(), work_retention_s())
        for name, ids in (
            ("expired files", report.files_deleted),
            ("work areas", report.work_areas_deleted),
        ):
            if ids:
                deleted.append(f"{project or 'root'}: {len(ids)} {name}")
                context.log.info("%s: deleted %s %s", project or "root", name, ", ".join(ids))
        if report.files_kept_in_use:
            context.log.info(
                "%s: expired but read by a running batch: %s",
                project or "root",
                ", ".join(report.files_kept_in_use),
            )
    return dg.SkipReason("; ".join(deleted) or "nothing expired")
