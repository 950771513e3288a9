"""The inbox sensor: every new upload under ``inbox/`` becomes a batch (a dynamic partition).

The cursor is the newest LastModified seen plus the keys (and versions) seen within a
look-back window before it, so a listing in any key order misses nothing, a restart resumes
where it stopped, and an object whose LastModified lands a little in the past (a slow
multipart upload) is still picked up. Each upload's run key is its batch id, derived from the
key and the object's version, so the same object never runs twice and a new upload under an
old name runs as a new batch. Uploads under ``inbox/overnight/`` are queued for the nightly
slot instead of run.
"""

import json
from dataclasses import dataclass, field

import dagster as dg

from batch_assets.batch_object import register_batch, update_batch
from batch_assets.jobs import batch_job, preview_job
from batch_assets.partitions import batch_partitions
from resources.storage import BatchStorage, ObjectInfo

INBOX = "inbox"
OVERNIGHT = "inbox/overnight/"
OVERNIGHT_QUEUE = "work/queue/overnight"
MAX_PER_TICK = 200
LOOKBACK_NS = 3600 * 10**9
TEMPORARY_SUFFIXES = (".tmp", ".part", ".partial", ".crdownload", "~")


def is_batch_upload(info: ObjectInfo) -> bool:
    """A non-empty ``.jsonl`` object that is not a temporary or hidden name."""
    name = info.key.rsplit("/", 1)[-1]
    return (
        info.size > 0
        and name.endswith(".jsonl")
        and not name.startswith((".", "_"))
        and not name.endswith(TEMPORARY_SUFFIXES)
    )


@dataclass
class InboxCursor:
    newest_ns: int = 0
    recent: dict[str, list] = field(default_factory=dict)  # key -> [version, modified_ns]

    @classmethod
    def parse(cls, raw: str | None) -> "InboxCursor":
        if not raw:
            return cls()
        data = json.loads(raw)
        return cls(data["newest_ns"], data["recent"])

    def dump(self) -> str:
        return json.dumps({"newest_ns": self.newest_ns, "recent": self.recent}, sort_keys=True)

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


@dg.sensor(
    jobs=[batch_job, preview_job],
    minimum_interval_seconds=10,
    default_status=dg.DefaultSensorStatus.RUNNING,
    description="Registers each new inbox upload as a batch and runs it; queues overnight ones.",
)
def inbox_sensor(context: dg.SensorEvaluationContext, storage: BatchStorage) -> dg.SensorResult:
    cursor = InboxCursor.parse(context.cursor)
    uploads = scan_inbox(storage, cursor)
    batch_ids, run_requests, queued = [], [], []
    for info in uploads:
        batch_id = register_batch(storage, info.key, info)
        batch_ids.append(batch_id)
        tags = {"batch/input": info.key}
        if info.key.startswith(OVERNIGHT):
            storage.write_json(f"{OVERNIGHT_QUEUE}/{batch_id}.json", {"input": info.key})
            batch = storage.read_json(f"outbox/{batch_id}/batch.json")
            update_batch(storage, batch_id, metadata={**batch["metadata"], "slot": "overnight"})
            queued.append(info.key)
            run_requests.append(
                dg.RunRequest(
                    run_key=f"{batch_id}:preview",
                    tags=tags,
                    job_name=preview_job.name,
                    partition_key=batch_id,
                )
            )
        else:
            run_requests.append(
                dg.RunRequest(
                    run_key=batch_id, tags=tags, job_name=batch_job.name, partition_key=batch_id
                )
            )
    if uploads:
        context.log.info(
            "%d new uploads: %d to run now, %d queued for the overnight slot and "
            "previewed now (%s)",
            len(uploads),
            len(uploads) - len(queued),
            len(queued),
            ", ".join(queued),
        )
    return dg.SensorResult(
        run_requests=run_requests,
        dynamic_partitions_requests=(
            [batch_partitions.build_add_request(batch_ids)] if batch_ids else []
        ),
        cursor=cursor.dump(),
        skip_reason=None if uploads else dg.SkipReason(f"no new uploads in {storage.url(INBOX)}"),
    )
