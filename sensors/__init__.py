"""File-arrival sensors, the nightly overnight schedule and run-status sensors."""
