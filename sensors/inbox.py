"""The inbox sensor: every new upload under ``inbox/`` becomes a batch (a dynamic partition).

The cursor is the newest LastModified seen plus the keys (and versions) seen within a
look-back window before it, so a listing in any key order misses nothing, a restart resumes
where it stopped, and an object whose LastModified lands a little in the past (a slow
multipart upload) is still picked up. Each upload's run key is its batch id, derived from the
key and the object's version, so the same object never runs twice and a new upload under an
old name runs as a new batch. Uploads under ``inbox/overnight/`` are queued for the nightly
slot instead of run. With projects (``BATCH_PROJECTS``), each project's inbox is listed with a
cursor of its own, and its batches' partition keys are ``<project>/<batch_id>``.
"""

import json
from dataclasses import dataclass, field

import dagster as dg

from batch_assets.jobs import batch_job, preview_job
from batch_assets.lifecycle.batches import read_batch, register_batch, update_batch
from batch_assets.partitions import batch_partitions, partition_key
from resources.layout import (
    INBOX,
    INPUT_TAG,
    PROJECT_TAG,
    is_overnight_upload,
    overnight_queue_key,
)
from resources.storage import BatchStorage, ObjectInfo, UnsafeKeyError, check_key

MAX_PER_TICK = 200
LOOKBACK_NS = 3600 * 10**9
TEMPORARY_SUFFIXES = (".tmp", ".part", ".partial", ".crdownload", "~")
UPLOAD_SUFFIXES = (".jsonl", ".jsonl.gz")


def is_batch_upload(info: ObjectInfo) -> bool:
    """A non-empty ``.jsonl`` (or ``.jsonl.gz``) object, not temporary, hidden or unsafe."""
    name = info.key.rsplit("/", 1)[-1]
    try:
        check_key(info.key)  # an S3 key such as inbox/../x.jsonl is never taken
    except UnsafeKeyError:
        return False
    return (
        info.size > 0
        and name.endswith(UPLOAD_SUFFIXES)
        and not name.startswith((".", "_"))
        and not name.endswith(TEMPORARY_SUFFIXES)
    )


@dataclass
class InboxCursor:
    newest_ns: int = 0
    recent: dict[str, list] = field(default_factory=dict)  # key -> [version, modified_ns]

    def is_new(self, info: ObjectInfo) -> bool:
        if info.modified_ns <= self.newest_ns - LOOKBACK_NS:
            return False
        seen = self.recent.get(info.key)
        return seen is None or seen[0] != info.version

    def advance(self, taken: list[ObjectInfo]) -> None:
        for info in taken:
            self.recent[info.key] = [info.version, info.modified_ns]
            self.newest_ns = max(self.newest_ns, info.modified_ns)
        horizon = self.newest_ns - LOOKBACK_NS
        self.recent = {k: v for k, v in self.recent.items() if v[1] > horizon}


def scan_inbox(
    storage: BatchStorage, cursor: InboxCursor, limit: int = MAX_PER_TICK
) -> list[ObjectInfo]:
    """The next new uploads, oldest first, at most ``limit``; advances ``cursor`` past them."""
    new = [info for info in storage.list(INBOX) if is_batch_upload(info) and cursor.is_new(info)]
    new.sort(key=lambda info: (info.modified_ns, info.key))
    taken = new[:limit]
    cursor.advance(taken)
    return taken


def parse_cursors(raw: str | None) -> dict[str, InboxCursor]:
    """The sensor's cursor: one inbox cursor per project ("" without projects)."""
    if not raw:
        return {}
    data = json.loads(raw)
    if "newest_ns" in data:  # a cursor from before projects
        return {"": InboxCursor(data["newest_ns"], data["recent"])}
    return {project: InboxCursor(c["newest_ns"], c["recent"]) for project, c in data.items()}


def dump_cursors(cursors: dict[str, InboxCursor]) -> str:
    return json.dumps(
        {p: {"newest_ns": c.newest_ns, "recent": c.recent} for p, c in cursors.items()},
        sort_keys=True,
    )


def _run_request(storage: BatchStorage, project: str | None, info: ObjectInfo) -> dg.RunRequest:
    """Register the upload as a batch; run it now, or queue it for the night and preview it."""
    batch_id = register_batch(storage, info.key, info)
    key = partition_key(project, batch_id)
    tags = {INPUT_TAG: info.key} | ({PROJECT_TAG: project} if project else {})
    if not is_overnight_upload(info.key):
        return dg.RunRequest(run_key=key, tags=tags, job_name=batch_job.name, partition_key=key)
    storage.write_json(overnight_queue_key(batch_id), {"input": info.key})
    batch = read_batch(storage, batch_id)
    update_batch(storage, batch_id, metadata={**(batch.metadata or {}), "slot": "overnight"})
    return dg.RunRequest(
        run_key=f"{key}:preview", tags=tags, job_name=preview_job.name, partition_key=key
    )


@dg.sensor(
    jobs=[batch_job, preview_job],
    minimum_interval_seconds=10,
    default_status=dg.DefaultSensorStatus.RUNNING,
    description="Registers each new inbox upload as a batch and runs it; queues overnight ones.",
)
def inbox_sensor(context: dg.SensorEvaluationContext, storage: BatchStorage) -> dg.SensorResult:
    cursors = parse_cursors(context.cursor)
    run_requests: list[dg.RunRequest] = []
    queued: list[str] = []
    budget = MAX_PER_TICK
    for project, tenant in storage.tenants():
        cursor = cursors.setdefault(project or "", InboxCursor())
        uploads = scan_inbox(tenant, cursor, budget)
        budget -= len(uploads)
        for info in uploads:
            run_requests.append(_run_request(tenant, project, info))
            if is_overnight_upload(info.key):
                queued.append(f"{project}:{info.key}" if project else info.key)
    if run_requests:
        context.log.info(
            "%d new uploads: %d to run now, %d queued for the overnight slot and "
            "previewed now (%s)",
            len(run_requests),
            len(run_requests) - len(queued),
            len(queued),
            ", ".join(queued),
        )
    keys = [request.partition_key for request in run_requests if request.partition_key]
    return dg.SensorResult(
        run_requests=run_requests,
        dynamic_partitions_requests=[batch_partitions.build_add_request(keys)] if keys else [],
        cursor=dump_cursors(cursors),
        skip_reason=None if run_requests else dg.SkipReason(f"no new uploads in {storage.uri}"),
    )
