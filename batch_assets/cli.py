"""``batch-infer``: put one file through the batch assets in-process, like the sensor would.

    batch-infer run FILE.jsonl [--storage DIR] [--model PATH]

Prints the batch id and the result paths; exits 0 when the batch completed (per-line errors
included), 1 with the reason when it failed. Run again on the same file, it resumes the same
batch and does not recompute a finished one.
"""

import argparse
import json
import os
import sys
from pathlib import Path

import dagster as dg

from batch_assets.batch_object import BatchPaths, read_batch, register_batch, root_cause_message
from batch_assets.definitions import DEFAULT_MODEL, DEFAULT_STORAGE
from batch_assets.jobs import batch_assets, batch_job
from batch_assets.partitions import batch_partitions
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


def run_file(
    file: Path,
    storage: BatchStorage,
    engine: VLLMEngine,
    instance: dg.DagsterInstance | None = None,
    run_config: dict | None = None,
    tags: dict[str, str] | None = None,
) -> dict:
    """Run ``file`` as a batch and return its batch.json."""
    key = _inbox_key(storage, file)
    batch_id = register_batch(storage, key)
    if read_batch(storage, batch_id)["status"] == "completed":
        return read_batch(storage, batch_id)
    instance = instance or _instance(storage)
    instance.add_dynamic_partitions(batch_partitions.name, [batch_id])
    result = dg.materialize(
        batch_assets,
        selection=batch_job.selection,
        partition_key=batch_id,
        instance=instance,
        resources={"storage": storage, "engine": engine},
        run_config=run_config,
        raise_on_error=False,
        tags={"batch/input": key, **(tags or {})},
    )
    batch = read_batch(storage, batch_id)
    if not result.success and batch["status"] != "failed":
        failure = next((e for e in result.all_events if e.is_step_failure), None)
        reason = root_cause_message(failure.step_failure_data.error) if failure else "run failed"
        batch = dict(
            batch,
            status="failed",
            errors={
                "object": "list",
                "data": [{"code": "run_failed", "message": reason, "line": None, "param": None}],
            },
        )
    return batch


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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="batch-infer", description=__doc__.split("\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    run = commands.add_parser("run", help="run one OpenAI-Batch JSONL file")
    run.add_argument("file", type=Path)
    run.add_argument(
        "--storage",
        default=os.environ.get("BATCH_STORAGE", DEFAULT_STORAGE),
        help="storage root folder (BATCH_STORAGE; default ./data)",
    )
    run.add_argument(
        "--model",
        default=os.environ.get("BATCH_MODEL", DEFAULT_MODEL),
        help="model folder or name (BATCH_MODEL)",
    )
    run.add_argument(
        "--served-model-name",
        default=None,
        help="name body.model must use (default: the --model value)",
    )
    run.add_argument("--max-model-len", type=int, default=None)
    args = parser.parse_args(argv)
    if not args.file.is_file():
        parser.error(f"no such file: {args.file}")
    storage = BatchStorage(root=args.storage)
    engine = VLLMEngine(
        model=args.model, served_model_name=args.served_model_name, max_model_len=args.max_model_len
    )
    batch = run_file(args.file, storage, engine)
    return _print_result(storage, batch)


if __name__ == "__main__":
    sys.exit(main())
