"""One dynamic partition per batch; its key is the batch id, or ``<project>/<batch_id>``."""

import dagster as dg

from resources.storage import BatchStorage

BATCH_PARTITIONS = "batches"  # the dynamic partitions' name in the Dagster instance
batch_partitions = dg.DynamicPartitionsDefinition(name=BATCH_PARTITIONS)


def partition_key(project: str | None, batch_id: str) -> str:
    return f"{project}/{batch_id}" if project else batch_id


def open_batch(storage: BatchStorage, key: str) -> tuple[BatchStorage, str]:
    """The storage of the partition's project and the batch id, from a partition key."""
    project, _, batch_id = key.rpartition("/")
    return storage.for_project(project or None), batch_id
