"""The storage layout and the run tags: every key, prefix and tag the project reads or writes.

One module so that a reader finds the whole layout in one place, and so that the folder and
S3 backends, the assets, the sensors, the CLI and the HTTP API agree on it by construction.
A test (``tests/test_layering.py``) fails when a layout literal appears anywhere else.

```
<root>/inbox/NAME.jsonl                upload here: runs as soon as the sensor sees it
<root>/inbox/overnight/NAME.jsonl      upload here: previewed now, runs in the nightly slot
<root>/outbox/<batch_id>/output.jsonl  successes, in input order
<root>/outbox/<batch_id>/errors.jsonl  failures, in input order
<root>/outbox/<batch_id>/batch.json    the OpenAI Batch object
<root>/outbox/<batch_id>/preview.jsonl the first answers of an overnight batch
<root>/cancel/<batch_id>               any object here cancels the batch
<root>/work/<batch_id>/                source.json, manifest.json, requests/, line_errors/,
                                       journal/, logs/, counts.json (live counts of a run),
                                       output_retention.json
<root>/events/pending/<event_id>.json  a batch's terminal event, waiting for its webhook
<root>/events/sent/<event_id>.json     delivered, given up, or no webhook for the project
<root>/work/queue/overnight/<id>.json  overnight batches waiting for the nightly slot
<root>/work/queue/api/<batch_id>.json  batches created through the HTTP API, not yet launched
<root>/files/<file_id>/file.json       a file of the HTTP API (an upload, or a batch's input,
                                       output or errors file pointing at its content)
<root>/files/<file_id>/content         an uploaded file's bytes
<root>/files/<file_id>/readers/<id>    a batch that reads the file (deleting it waits)
<root>/work/idempotency/<digest>.json  the first answer to an Idempotency-Key
<root>/work/throughput/<model>.json    the rates of a model's last runs (for estimates)
<root>/index/files/<sort key>          an empty object a file; names sort newest first, so a
<root>/index/batches/<sort key>        page of a list is one listing from its cursor
<root>/.tmp/                           local folder only: files being written
<root>/.dagster/                       local folder only: the CLI's Dagster instance
```
With projects, the same layout sits under ``<root>/<project>/``.
"""

from collections.abc import Callable
from dataclasses import dataclass
from urllib.parse import quote

from dagster._core.storage.tags import MAX_RETRIES_TAG, PARTITION_NAME_TAG, RETRY_NUMBER_TAG

# Top-level prefixes (folder keys, no trailing slash).
INBOX = "inbox"
OVERNIGHT_INBOX = f"{INBOX}/overnight"
OUTBOX = "outbox"
WORK = "work"
CANCEL = "cancel"
OVERNIGHT_QUEUE = f"{WORK}/queue/overnight"
API_QUEUE = f"{WORK}/queue/api"
FILES = "files"
IDEMPOTENCY = f"{WORK}/idempotency"
THROUGHPUT = f"{WORK}/throughput"
INDEX = "index"
FILE_INDEX = f"{INDEX}/files"  # one empty object a file, named so that names sort newest first
BATCH_INDEX = f"{INDEX}/batches"  # the same for batches
INDEX_BUILT = ".built"  # in an index folder: every object before the index has its entry
EVENTS = "events"
PENDING_EVENTS = f"{EVENTS}/pending"
SENT_EVENTS = f"{EVENTS}/sent"
# Local folder only: the spool of files being written, and the CLI's Dagster instance.
SPOOL_FOLDER = ".tmp"
CLI_DAGSTER_HOME = ".dagster"


def project_root(root: str, project: str) -> str:
    """The root of one project's layout inside the storage root."""
    return f"{root.rstrip('/')}/{project}"


def inbox_key(name: str) -> str:
    return f"{INBOX}/{name}"


def is_overnight_upload(key: str) -> bool:
    return key.startswith(f"{OVERNIGHT_INBOX}/")


def overnight_queue_key(batch_id: str) -> str:
    return f"{OVERNIGHT_QUEUE}/{batch_id}.json"


def api_queue_key(batch_id: str) -> str:
    return f"{API_QUEUE}/{batch_id}.json"


def idempotency_key(digest: str) -> str:
    return f"{IDEMPOTENCY}/{digest}.json"


def throughput_key(model: str) -> str:
    """The record of a served model's recent run rates (its name quoted into one key part)."""
    return f"{THROUGHPUT}/{quote(model, safe='')}.json"


def pending_event_key(event_id: str) -> str:
    return f"{PENDING_EVENTS}/{event_id}.json"


def sent_event_key(event_id: str) -> str:
    return f"{SENT_EVENTS}/{event_id}.json"


def batch_id_of(key: str) -> str:
    """The batch id a per-batch key ends with (a cancel request, a queue entry)."""
    return key.rsplit("/", 1)[-1].removesuffix(".json")


def _outbox_owner(key: str, file_of: Callable[["BatchPaths"], str]) -> str | None:
    """The batch id when ``key`` is ``file_of`` the batch's paths (one of its outbox files)."""
    parts = key.split("/")
    if len(parts) == 3 and key == file_of(BatchPaths(parts[1])):
        return parts[1]
    return None


def batch_json_owner(key: str) -> str | None:
    """The batch id when ``key`` is a batch's batch.json (in a listing of the outbox)."""
    return _outbox_owner(key, lambda paths: paths.batch_json)


def errors_file_owner(key: str) -> str | None:
    """The batch id when ``key`` is a batch's errors.jsonl (an error file's content)."""
    return _outbox_owner(key, lambda paths: paths.errors)


@dataclass(frozen=True)
class BatchPaths:
    """Storage keys of one batch."""

    batch_id: str

    @property
    def outbox(self) -> str:
        return f"{OUTBOX}/{self.batch_id}"

    @property
    def output(self) -> str:
        return f"{self.outbox}/output.jsonl"

    @property
    def errors(self) -> str:
        return f"{self.outbox}/errors.jsonl"

    @property
    def batch_json(self) -> str:
        return f"{self.outbox}/batch.json"

    @property
    def preview(self) -> str:
        return f"{self.outbox}/preview.jsonl"

    @property
    def cancel(self) -> str:
        return f"{CANCEL}/{self.batch_id}"

    @property
    def work(self) -> str:
        return f"{WORK}/{self.batch_id}"

    @property
    def source(self) -> str:
        return f"{self.work}/source.json"

    @property
    def manifest(self) -> str:
        return f"{self.work}/manifest.json"

    @property
    def shards(self) -> str:
        return f"{self.work}/requests"

    def shard(self, index: int) -> str:
        return f"{self.shards}/shard-{index:05d}.parquet"

    @property
    def line_errors(self) -> str:
        return f"{self.work}/line_errors"

    def line_error_part(self, index: int) -> str:
        return f"{self.line_errors}/part-{index:05d}.parquet"

    @property
    def journal(self) -> str:
        return f"{self.work}/journal"

    @property
    def output_retention(self) -> str:
        """The batch's ``output_expires_after``, applied to its files when they are published."""
        return f"{self.work}/output_retention.json"

    @property
    def live_counts(self) -> str:
        """The request counts of the run in progress, rewritten every few seconds."""
        return f"{self.work}/counts.json"

    @property
    def logs(self) -> str:
        return f"{self.work}/logs"

    def run_log(self, stamp: str) -> str:
        """The log of one ``batch-infer run`` started at ``stamp``."""
        return f"{self.logs}/run-{stamp}.log"


@dataclass(frozen=True)
class FilePaths:
    """Storage keys of one file of the HTTP API."""

    file_id: str

    @property
    def folder(self) -> str:
        return f"{FILES}/{self.file_id}"

    @property
    def record(self) -> str:
        return f"{self.folder}/file.json"

    @property
    def content(self) -> str:
        return f"{self.folder}/content"

    @property
    def readers(self) -> str:
        return f"{self.folder}/readers"

    def reader(self, batch_id: str) -> str:
        return f"{self.readers}/{batch_id}"


def file_record_owner(key: str) -> str | None:
    """The file id when ``key`` is a file's record (in a listing of ``files/``)."""
    parts = key.split("/")
    if len(parts) == 3 and key == FilePaths(parts[1]).record:
        return parts[1]
    return None


JOURNAL_SEGMENT_SUFFIX = ".tsv"


def journal_segment(journal: str, attempt: str, part: int | None = None) -> str:
    """One journal segment: an attempt's file, or on S3 one part object of it."""
    name = attempt if part is None else f"{attempt}-{part:06d}"
    return f"{journal}/{name}{JOURNAL_SEGMENT_SUFFIX}"


# Run tags the project writes or reads.
GPU_TAG = "batch/gpu"  # runs that load an engine; the run queue limits them per GPU
GPU_TAGS = {GPU_TAG: "engine"}
# Runs of pool mode (no engine of their own): several share the servers at once.
ENGINE_POOL_TAG = "batch/engine_pool"
ENGINE_POOL_TAGS = {ENGINE_POOL_TAG: "servers"}
INPUT_TAG = "batch/input"  # the inbox key a run's batch came from
PROJECT_TAG = "batch/project"
SLOT_TAG = "batch/slot"  # "overnight" for runs of the nightly slot
SLOT_END_TAG = "batch/slot_end"  # unix time at which an overnight run stops taking requests
# dagster-k8s's tag: the run pod's Kubernetes config (container resources, tolerations).
K8S_CONFIG_TAG = "dagster-k8s/config"
# Dagster's own tags, read by the sensors.
PARTITION_TAG = PARTITION_NAME_TAG
RETRY_NUMBER = RETRY_NUMBER_TAG
MAX_RETRIES = MAX_RETRIES_TAG
