"""Sensors and schedules of the code location."""

import dagster as dg

from sensors.inbox import inbox_sensor
from sensors.overnight import overnight_schedule
from sensors.run_status import batch_failure_sensor

defs = dg.Definitions(
    sensors=[inbox_sensor, batch_failure_sensor],
    schedules=[overnight_schedule],
)
