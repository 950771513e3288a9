"""``batch-infer``: put one file through the batch assets in-process, like the sensor would.

    batch-infer run FILE.jsonl [--storage DIR] [--model PATH] [--project NAME]
    batch-infer cancel BATCH_ID [--storage DIR] [--project NAME]

``run`` prints the batch id and the result paths; it exits 0 when the batch completed
(per-line errors included), 1 with the reason otherwise. Run again on the same file, it
resumes the same batch and does not recompute a finished one. ``cancel`` asks a batch to stop
(a run in progress anywhere stops within seconds and keeps its finished lines); if no run
finishes the cancellation within ``--wait`` seconds, it publishes the results itself.
"""

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

import dagster as dg

from batch_assets.batch_object import (
    TERMINAL_STATUSES,
    BatchPaths,
    read_batch,
    register_batch,
    root_cause_message,
)
from batch_assets.cancellation import request_cancel
from batch_assets.definitions import DEFAULT_MODEL, DEFAULT_STORAGE
from batch_assets.jobs import batch_assets, batch_job, cancel_job
from batch_assets.partitions import batch_partitions, partition_key
from resources.storage import BatchStorage
from resources.vllm_engine import VLLMEngine


def _instance(storage: BatchStorage) -> dg.DagsterInstance:
    """The instance named by DAGSTER_HOME, else a persistent one beside the batches."""
    if os.environ.get("DAGSTER_HOME"):
        return dg.DagsterInstance.get()
    home = Path(storage.uri) / ".dagster" if storage.is_local else Path(".dagster_home")
    home.mkdir(parents=True, exist_ok=True)
    return dg.DagsterInstance.local_temp(tempdir=str(home))


def _inbox_key(storage: BatchStorage, file: Path) -> str:
    """Upload ``file`` to the inbox, unless it is already there (same content)."""
    file = file.resolve()
    if storage.is_local:
        root = Path(storage.uri)
        if file.is_relative_to(root / "inbox"):
            return file.relative_to(root).as_posix()
    key = f"inbox/{file.name}"
    if not storage.matches_file(file, key):
        storage.put_file(file, key)
    return key


def _materialize(
    job: Any,  # an asset job over batch_assets
    storage: BatchStorage,
    engine: VLLMEngine,
    key: str,
    instance: dg.DagsterInstance,
    run_config: dict | None,
    tags: dict[str, str],
) -> dg.ExecuteInProcessResult:
    instance.add_dynamic_partitions(batch_partitions.name, [key])
    return dg.materialize(
        batch_assets,
        selection=job.selection,
        partition_key=key,
        instance=instance,
        resources={"storage": storage, "engine": engine},
        run_config=run_config,
        raise_on_error=False,
        tags=tags,
    )


def _after(
    storage: BatchStorage, batch_id: str, before: dict, result: dg.ExecuteInProcessResult
) -> dict:
    """batch.json as the user should see it after ``result``."""
    try:
        batch = read_batch(storage, batch_id)
    except Exception:
        if result.success:
            raise
        batch = before  # the storage itself failed: say why the run failed
    if result.success or batch["status"] == "failed":
        return batch
    failure = next((e for e in result.all_events if e.is_step_failure), None)
    reason = root_cause_message(failure.step_failure_data.error) if failure else "run failed"
    error = {"code": "run_failed", "message": reason, "line": None, "param": None}
    return dict(batch, status="failed", errors={"object": "list", "data": [error]})


def run_file(
    file: Path,
    storage: BatchStorage,
    engine: VLLMEngine,
    instance: dg.DagsterInstance | None = None,
    run_config: dict | None = None,
    tags: dict[str, str] | None = None,
    project: str | None = None,
) -> dict:
    """Run ``file`` as a batch (of ``project``, if the storage has projects); its batch.json."""
    tenant = storage.for_project(project)
    key = _inbox_key(tenant, file)
    batch_id = register_batch(tenant, key)
    before = read_batch(tenant, batch_id)
    if before["status"] in TERMINAL_STATUSES:
        return before
    result = _materialize(
        batch_job,
        storage,
        engine,
        partition_key(project, batch_id),
        instance or _instance(tenant),
        run_config,
        {"batch/input": key, **(tags or {})},
    )
    return _after(tenant, batch_id, before, result)


def cancel_batch(
    batch_id: str,
    storage: BatchStorage,
    engine: VLLMEngine,
    instance: dg.DagsterInstance | None = None,
    project: str | None = None,
    wait_s: float = 30.0,
) -> dict:
    """Cancel ``batch_id``; publish its results here if no run does within ``wait_s``.

    ``engine`` only names the served model (for validating a batch never validated); the
    cancel job loads no engine.
    """
    tenant = storage.for_project(project)
    request_cancel(tenant, batch_id)
    deadline = time.monotonic() + wait_s
    while read_batch(tenant, batch_id)["status"] not in TERMINAL_STATUSES:
        if time.monotonic() >= deadline:
            key = partition_key(project, batch_id)
            instance = instance or _instance(tenant)
            before = read_batch(tenant, batch_id)
            result = _materialize(cancel_job, storage, engine, key, instance, None, {})
            return _after(tenant, batch_id, before, result)
        time.sleep(1)
    return read_batch(tenant, batch_id)


def _print_result(storage: BatchStorage, batch: dict) -> int:
    paths = BatchPaths(batch["id"])
    print(f"batch_id: {batch['id']}")
    print(f"status: {batch['status']}")
    print(f"request_counts: {json.dumps(batch['request_counts'])}")
    for name, key in (
        ("output", paths.output),
        ("errors", paths.errors),
        ("batch", paths.batch_json),
    ):
        print(f"{name}: {storage.url(key)}")
    if batch["status"] == "completed":
        return 0
    for error in (batch.get("errors") or {}).get("data", []):
        where = f" (line {error['line']})" if error.get("line") else ""
        print(f"error: {error['code']}: {error['message']}{where}", file=sys.stderr)
    return 1


def _storage_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--storage",
        default=os.environ.get("BATCH_STORAGE", DEFAULT_STORAGE),
        help="storage root: a folder or s3://bucket/prefix (BATCH_STORAGE; default ./data)",
    )
    parser.add_argument(
        "--project",
        default=None,
        help="the project (tenant) whose inbox and outbox to use, under <storage>/<project>",
    )


def _engine_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--model",
        default=os.environ.get("BATCH_MODEL", DEFAULT_MODEL),
        help="model folder or name (BATCH_MODEL)",
    )
    parser.add_argument(
        "--served-model-name",
        default=os.environ.get("BATCH_SERVED_MODEL_NAME"),
        help="name body.model must use (BATCH_SERVED_MODEL_NAME; default: the --model value)",
    )
    for name, kind in ENGINE_FLAGS.items():
        flag = f"--{name.replace('_', '-')}"
        if kind is bool:
            parser.add_argument(flag, action=argparse.BooleanOptionalAction, default=None)
        else:
            parser.add_argument(flag, type=kind, default=None)


# Engine settings a one-shot run can set (fields of resources.vllm_engine.VLLMEngine).
ENGINE_FLAGS: dict[str, type] = {
    "max_model_len": int,
    "max_num_seqs": int,
    "max_num_batched_tokens": int,
    "gpu_memory_utilization": float,
    "tensor_parallel_size": int,
    "kv_cache_memory_bytes": int,
    "dtype": str,
    "seed": int,
    "load_format": str,
    "enable_prefix_caching": bool,
    "enforce_eager": bool,
    "engine_in_process": bool,
}


def _engine(args: argparse.Namespace) -> VLLMEngine:
    settings = {name: getattr(args, name) for name in ENGINE_FLAGS}
    return VLLMEngine(
        model=args.model,
        served_model_name=args.served_model_name,
        **{name: value for name, value in settings.items() if value is not None},
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="batch-infer", description=__doc__.split("\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    run = commands.add_parser("run", help="run one OpenAI-Batch JSONL file")
    run.add_argument("file", type=Path)
    _storage_arguments(run)
    _engine_arguments(run)
    cancel = commands.add_parser("cancel", help="cancel a batch, keeping its finished lines")
    cancel.add_argument("batch_id")
    _storage_arguments(cancel)
    _engine_arguments(cancel)
    cancel.add_argument(
        "--wait",
        type=float,
        default=30.0,
        help="seconds to let a running batch stop by itself before publishing here",
    )
    args = parser.parse_args(argv)
    projects = [args.project] if args.project else []
    storage = BatchStorage(root=args.storage, projects=projects)
    tenant = storage.for_project(args.project)
    engine = _engine(args)
    if args.command == "cancel":
        try:
            batch = cancel_batch(
                args.batch_id, storage, engine, project=args.project, wait_s=args.wait
            )
        except KeyError as missing:
            parser.error(str(missing.args[0]))
        _print_result(tenant, batch)
        return 0 if batch["status"] == "cancelled" else 1
    if not args.file.is_file():
        parser.error(f"no such file: {args.file}")
    batch = run_file(args.file, storage, engine, project=args.project)
    return _print_result(tenant, batch)


if __name__ == "__main__":
    sys.exit(main())
