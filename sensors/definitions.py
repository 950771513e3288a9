"""Sensors and schedules of the code location."""

import dagster as dg

from sensors.api_batches import api_batch_sensor
from sensors.cancel import cancel_sensor, terminated_run_sensor
from sensors.inbox import inbox_sensor
from sensors.orphaned_runs import orphaned_run_sensor
from sensors.overnight import overnight_schedule
from sensors.retention import retention_sensor
from sensors.run_status import batch_failure_sensor
from sensors.webhooks import webhook_sensor

defs = dg.Definitions(
    sensors=[
        inbox_sensor,
        api_batch_sensor,
        cancel_sensor,
        terminated_run_sensor,
        batch_failure_sensor,
        orphaned_run_sensor,
        webhook_sensor,
        retention_sensor,
    ],
    schedules=[overnight_schedule],
)
