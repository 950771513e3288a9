"""The runner: put a file through the very assets the sensors run, in this process.

The library behind ``batch-infer run`` and ``cancel``, and what the tests and the benchmarks
call. A run is one ``dg.materialize`` of the batch job's assets against a local Dagster
instance (``DAGSTER_HOME``'s, or one kept beside the batches), with the engine's run tags,
so it is the same run a sensor would launch. Each function returns the batch's
``batch.json`` as a dict (what ``openai.types.Batch`` validates).
"""

import os
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from batch_assets.lifecycle.batches import (
    BatchRecord,
    failed_view,
    read_batch,
    register_batch,
    root_cause_message,
)
from batch_assets.lifecycle.cancellation import request_cancel
from batch_assets.partitions import BATCH_PARTITIONS, partition_key
from resources.engines.base import BatchEngine
from resources.layout import CLI_DAGSTER_HOME, INBOX, INPUT_TAG, inbox_key
from resources.storage import BatchStorage

if TYPE_CHECKING:
    import dagster as dg


def local_instance(storage: BatchStorage) -> "dg.DagsterInstance":
    """The instance named by DAGSTER_HOME, else a persistent one beside the batches."""
    import dagster as dg

    if os.environ.get("DAGSTER_HOME"):
        return dg.DagsterInstance.get()
    home = Path(storage.uri) / CLI_DAGSTER_HOME if storage.is_local else Path(".dagster_home")
    home.mkdir(parents=True, exist_ok=True)
    return dg.DagsterInstance.local_temp(tempdir=str(home))


def _inbox_key(storage: BatchStorage, file: Path) -> str:
    """Upload ``file`` to the inbox, unless it is already there (same content)."""
    file = file.resolve()
    if storage.is_local:
        root = Path(storage.uri)
        if file.is_relative_to(root / INBOX):
            return file.relative_to(root).as_posix()
    key = inbox_key(file.name)
    if not storage.matches_file(file, key):
        storage.put_file(file, key)
    return key


def _materialize(
    job: Any,  # an asset job over batch_assets
    storage: BatchStorage,
    engine: BatchEngine,
    key: str,
    instance: "dg.DagsterInstance",
    run_config: dict | None,
    tags: dict[str, str],
) -> "dg.ExecuteInProcessResult":
    import dagster as dg
    from dagster._core.storage.defs_state.base import set_defs_state_storage

    from batch_assets.jobs import batch_assets

    instance.add_dynamic_partitions(BATCH_PARTITIONS, [key])
    # Dagster loads the definitions against the process's current instance state, not the
    # one passed in; make them the same (a closed instance left current would fail the load).
    with set_defs_state_storage(instance.defs_state_storage):
        return dg.materialize(
            batch_assets,
            selection=job.selection,
            partition_key=key,
            instance=instance,
            resources={"storage": storage, "engine": engine},
            run_config=run_config,
            raise_on_error=False,
            tags={**engine.run_tags(), **tags},
        )


def _after(
    storage: BatchStorage,
    batch_id: str,
    before: BatchRecord,
    result: "dg.ExecuteInProcessResult",
) -> dict[str, Any]:
    """batch.json as the user should see it after ``result``."""
    try:
        batch = read_batch(storage, batch_id)
    except Exception:
        if result.success:
            raise
        batch = before  # the storage itself failed: say why the run failed
    if result.success or batch.status.ended:
        return batch.as_dict()
    failure = next((e for e in result.all_events if e.is_step_failure), None)
    data = failure.step_failure_data if failure else None
    reason = root_cause_message(data.error) if data and data.error else "run failed"
    return failed_view(batch, reason).as_dict()


def register_file(file: Path, storage: BatchStorage, project: str | None = None) -> tuple[str, str]:
    """Put ``file`` in the inbox (of ``project``) and register its batch: (inbox key, batch id)."""
    tenant = storage.for_project(project)
    key = _inbox_key(tenant, file)
    return key, register_batch(tenant, key)


def run_batch(
    key: str,
    batch_id: str,
    storage: BatchStorage,
    engine: BatchEngine,
    instance: "dg.DagsterInstance | None" = None,
    run_config: dict | None = None,
    tags: dict[str, str] | None = None,
    project: str | None = None,
) -> dict[str, Any]:
    """Run a registered batch to its end, unless it ended already; its batch.json."""
    from batch_assets.jobs import batch_job

    tenant = storage.for_project(project)
    before = read_batch(tenant, batch_id)
    if before.status.ended:
        return before.as_dict()
    result = _materialize(
        batch_job,
        storage,
        engine,
        partition_key(project, batch_id),
        instance or local_instance(tenant),
        run_config,
        {INPUT_TAG: key, **(tags or {})},
    )
    return _after(tenant, batch_id, before, result)


def run_file(
    file: Path,
    storage: BatchStorage,
    engine: BatchEngine,
    instance: "dg.DagsterInstance | None" = None,
    run_config: dict | None = None,
    tags: dict[str, str] | None = None,
    project: str | None = None,
) -> dict[str, Any]:
    """Run ``file`` as a batch (of ``project``, if the storage has projects); its batch.json."""
    key, batch_id = register_file(file, storage, project)
    return run_batch(key, batch_id, storage, engine, instance, run_config, tags, project)


def cancel_batch(
    batch_id: str,
    storage: BatchStorage,
    engine: BatchEngine,
    instance: "dg.DagsterInstance | None" = None,
    project: str | None = None,
    wait_s: float = 30.0,
) -> dict[str, Any]:
    """Cancel ``batch_id``; publish its results here if no run does within ``wait_s``.

    ``engine`` only names the served model (for validating a batch never validated); the
    cancel job loads no engine.
    """
    from batch_assets.jobs import cancel_job

    tenant = storage.for_project(project)
    request_cancel(tenant, batch_id)
    deadline = time.monotonic() + wait_s
    while not (batch := read_batch(tenant, batch_id)).status.ended:
        if time.monotonic() >= deadline:
            key = partition_key(project, batch_id)
            instance = instance or local_instance(tenant)
            result = _materialize(cancel_job, storage, engine, key, instance, None, {})
            return _after(tenant, batch_id, batch, result)
        time.sleep(1)
    return batch.as_dict()
