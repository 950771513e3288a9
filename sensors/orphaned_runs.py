"""Fail batch runs whose process died with the whole Dagster process tree, so retries resume.

Under ``dagster dev`` (the default run launcher), a run worker is a child of its code server.
A killed worker is reported by its code server, but when the whole tree dies (a crash, a
kill -9, a reboot), the runs it was executing stay STARTED forever: the default launcher
has no run-worker health check for run monitoring. This sensor pings the code server each
such run was launched on (a plain connection: refused means gone); when that server is gone
on two ticks in a row, it reports the run failed, and the instance's run retries start a new
run that resumes from the journal.
"""

import json
import socket

import dagster as dg
from dagster._core.storage.tags import GRPC_INFO_TAG

from batch_assets.jobs import batch_job, cancel_job, preview_job

_ACTIVE = [dg.DagsterRunStatus.STARTING, dg.DagsterRunStatus.STARTED]
_JOBS = {batch_job.name, preview_job.name, cancel_job.name}


def code_server_alive(grpc_info: str, timeout_s: float = 10.0) -> bool:
    """Whether the code server a run was launched on still listens.

    A connection is refused at once when the server process is gone; a busy server still
    accepts it, so a slow machine never makes a live run look orphaned.
    """
    info = json.loads(grpc_info)
    try:
        if info.get("socket"):
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as unix:
                unix.settimeout(timeout_s)
                unix.connect(info["socket"])
        else:
            address = (info.get("host") or "localhost", int(info["port"]))
            socket.create_connection(address, timeout=timeout_s).close()
    except (ConnectionRefusedError, FileNotFoundError):
        return False
    except OSError:
        return True  # a timeout or a network hiccup is no proof of death
    return True


@dg.sensor(
    minimum_interval_seconds=30,
    default_status=dg.DefaultSensorStatus.RUNNING,
    description="Fails batch runs left STARTED by a crashed dagster process tree, so that "
    "run retries resume them.",
)
def orphaned_run_sensor(context: dg.SensorEvaluationContext) -> dg.SkipReason:
    suspects = set(json.loads(context.cursor or "[]"))
    still_suspect, failed = set(), []
    for run in context.instance.get_runs(dg.RunsFilter(statuses=_ACTIVE)):
        grpc_info = run.tags.get(GRPC_INFO_TAG)
        if run.job_name not in _JOBS or not grpc_info or code_server_alive(grpc_info):
            continue
        if run.run_id not in suspects:
            still_suspect.add(run.run_id)  # a second look on the next tick before failing it
            continue
        context.instance.report_run_failed(
            run,
            "the process running this run is gone (its code server no longer answers: the "
            "dagster process tree was restarted or crashed)",
        )
        failed.append(run.run_id)
    context.update_cursor(json.dumps(sorted(still_suspect)))
    if failed:
        context.log.info("reported %d orphaned runs failed: %s", len(failed), ", ".join(failed))
    return dg.SkipReason(f"orphaned runs failed: {len(failed)}; suspected: {len(still_suspect)}")
