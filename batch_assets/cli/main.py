"""``batch-infer``: run OpenAI-Batch files through the batch assets in-process, and look at batches.

    batch-infer run FILE.jsonl [--storage ROOT] [--project NAME] [--model PATH] [engine flags]
    batch-infer status BATCH_ID [--storage ROOT] [--project NAME] [--json]
    batch-infer list [--storage ROOT] [--project NAME] [--limit N] [--json]
    batch-infer cancel BATCH_ID [--storage ROOT] [--project NAME] [--wait SECONDS]
    batch-infer retry BATCH_ID [--storage ROOT] [--project NAME] [engine flags]
    batch-infer estimate FILE.jsonl [--storage ROOT] [--project NAME] [--json] [engine flags]
    batch-infer serve [--host 127.0.0.1] [--port 8000] [--storage ROOT]

``run`` puts the file through the very assets the sensors run (a local Dagster instance),
with a progress bar, then prints the batch id, counts, usage and the three result paths.
Dagster's and vLLM's logs go to a log file in the batch's work area (``--verbose`` shows
them here too). Run again on the same file, it resumes the same batch; a finished batch is
not computed again. ``cancel`` asks a batch to stop (a run in progress anywhere stops within
seconds and keeps its finished lines); if no run finishes the cancellation within
``--wait`` seconds, it publishes the results itself. ``serve`` answers OpenAI's Files and
Batches routes over the same storage (API keys from BATCH_API_KEYS or BATCH_API_KEYS_FILE).
"""

import argparse
import json
import logging
import multiprocessing
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from batch_assets.cli.display import (
    ProgressDisplay,
    error_lines,
    event_lines,
    live_lines,
    logs_to_file,
    summary_lines,
    table,
    timestamp_lines,
)
from batch_assets.cli.engine_flags import add_engine_arguments, engine_from_args
from batch_assets.cli.estimate import print_estimate
from batch_assets.cli.runner import cancel_batch, register_file, run_batch
from batch_assets.input.estimate import estimate_lines
from batch_assets.input.manifest import ManifestFormatError, read_manifest
from batch_assets.lifecycle.batches import (
    BatchRecord,
    BatchStatus,
    batch_exists,
    batch_url,
    index_entry,
    list_batches,
    page_batches,
    read_batch,
    read_batch_live,
    read_source,
    record_of,
)
from batch_assets.lifecycle.events import batch_event
from batch_assets.lifecycle.retry import RetryRefused, create_retry_batch
from batch_assets.lifecycle.throughput import read_runs
from resources.engines.base import BatchEngine
from resources.engines.config import EngineConfigError, engine_from_env
from resources.engines.progress import watching
from resources.layout import BatchPaths
from resources.storage import BatchStorage

EXIT_CODES = """exit codes:
  0    run: the batch completed (lines with errors included); cancel: the batch is
       cancelled; status, list: the batch or the storage was read
  1    the batch ended failed, expired or cancelled (run), or had already ended
       otherwise (cancel); the reason is printed on standard error
  2    a usage error: a bad flag, no such file, no such batch
  130  interrupted (Ctrl-C): finished answers stay journaled; run again to resume
"""


def _result_urls(storage: BatchStorage, batch_id: str) -> dict[str, str]:
    paths = BatchPaths(batch_id)
    urls = {"output": storage.url(paths.output), "errors": storage.url(paths.errors)}
    return urls | {"batch": batch_url(storage, batch_id)}


def _print_summary(
    storage: BatchStorage,
    batch: BatchRecord,
    elapsed_s: float | None = None,
    log: str | None = None,
) -> None:
    urls = _result_urls(storage, batch.id) | ({"log": log} if log else {})
    print("\n".join(summary_lines(batch, urls, elapsed_s)))
    for line in error_lines(batch):
        print(line, file=sys.stderr)


def _log_file(storage: BatchStorage, batch_id: str) -> tuple[str, Path]:
    """This run's log: its key in the batch's work area, and the local file written.

    In a folder the file is the key's own; on S3 it is a local file, uploaded at the end.
    """
    key = BatchPaths(batch_id).run_log(time.strftime("%Y%m%d-%H%M%S"))
    local = storage.local_path(key)
    return key, local or Path(tempfile.gettempdir()) / "batch-infer" / key


def _command_run(args: argparse.Namespace, storage: BatchStorage) -> int:
    if not args.file.is_file():
        raise _UsageError(f"no such file: {args.file}")
    engine = engine_from_args(args)
    started = time.monotonic()
    key, batch_id = register_file(args.file, storage, args.project)
    return _run_to_end(args, storage, engine, key, batch_id, started)


def _run_to_end(
    args: argparse.Namespace,
    storage: BatchStorage,
    engine: BatchEngine,
    key: str,
    batch_id: str,
    started: float,
) -> int:
    """Run a registered batch in this process with a progress bar; print its summary."""
    tenant = storage.for_project(args.project)
    log: str | None = None
    batch = read_batch(tenant, batch_id)
    if batch.status.ended:
        print(f"{key}: batch {batch_id} had finished already", file=sys.stderr)
    elif args.verbose:
        display = ProgressDisplay(sys.stderr, batch_id)
        with watching(display.update):
            batch = record_of(run_batch(key, batch_id, storage, engine, project=args.project))
        display.close()
    else:
        log_key, log_file = _log_file(tenant, batch_id)
        log = str(log_file)
        print(f"{key}: batch {batch_id}; logs in {log}", file=sys.stderr)
        try:
            with logs_to_file(log_file) as terminal:
                display = ProgressDisplay(terminal, batch_id)
                with watching(display.update):
                    batch = record_of(
                        run_batch(key, batch_id, storage, engine, project=args.project)
                    )
                display.close()
        finally:
            if not tenant.is_local:  # keep it beside the batch, as in a folder
                try:
                    tenant.put_file(log_file, log_key)
                    log = f"{tenant.url(log_key)} (and {log_file})"
                except Exception as error:  # the storage failing must not hide why the run did
                    print(f"the log stays at {log_file}: {error}", file=sys.stderr)
    _print_summary(tenant, batch, time.monotonic() - started, log)
    return 0 if batch.status is BatchStatus.COMPLETED else 1


def _command_retry(args: argparse.Namespace, storage: BatchStorage) -> int:
    project, tenant = _find_batch(storage, args.batch_id)
    args.project = project
    engine = engine_from_args(args)
    started = time.monotonic()
    try:
        batch = create_retry_batch(tenant, read_batch(tenant, args.batch_id), queued=False)
    except RetryRefused as refused:
        raise _UsageError(str(refused)) from None
    meta = batch.metadata or {}
    print(
        f"batch {batch.id} retries {meta['retry_lines']} failed lines of {args.batch_id} "
        f"({meta['retry_skipped']} failed lines that a retry would not change are left)",
        file=sys.stderr,
    )
    key = read_source(tenant, BatchPaths(batch.id)).key
    return _run_to_end(args, storage, engine, key, batch.id, started)


def _command_estimate(args: argparse.Namespace, storage: BatchStorage) -> int:
    if not args.file.is_file():
        raise _UsageError(f"no such file: {args.file}")
    return print_estimate(args, storage, engine_from_args(args))


def _find_batch(storage: BatchStorage, batch_id: str) -> tuple[str | None, BatchStorage]:
    """The project holding ``batch_id``, and its storage."""
    for project, tenant in storage.tenants():
        if batch_exists(tenant, batch_id):
            return project, tenant
    raise _UsageError(f"no batch {batch_id} in {storage.uri}")


def _command_status(args: argparse.Namespace, storage: BatchStorage) -> int:
    _, tenant = _find_batch(storage, args.batch_id)
    batch, live = read_batch_live(tenant, args.batch_id)
    if args.json:
        print(json.dumps(batch.as_dict(), indent=2))
        return 0
    _print_summary(tenant, batch)
    lines = live_lines(live) if live else []
    lines += [f"input: {batch.input_key}", f"endpoint: {batch.endpoint or '-'}"]
    lines += [f"model: {batch.model or '-'}", *timestamp_lines(batch)]
    lines += _estimate_lines(tenant, batch)
    if batch.status.ended and (event := batch_event(tenant, batch.id, batch.status)):
        lines += event_lines(event)
    print("\n".join(lines))
    return 0


def _estimate_lines(storage: BatchStorage, batch: BatchRecord) -> list[str]:
    """The token estimate of a validated batch (none before validation or after retention)."""
    try:
        manifest = read_manifest(storage, BatchPaths(batch.id))
    except (FileNotFoundError, ManifestFormatError):
        return []
    runs = read_runs(storage, batch.model) if batch.model else []
    return estimate_lines(manifest.estimate, manifest.requests, runs, batch.model or "the model")


def _command_list(args: argparse.Namespace, storage: BatchStorage) -> int:
    # Each project's newest ``limit`` batches from its index (one page each), merged.
    batches, more = [], False
    for project, tenant in storage.tenants():
        if args.limit:
            found, older = page_batches(tenant, None, args.limit)
        else:
            found, older = list_batches(tenant), False
        batches += [(project, batch) for batch in found]
        more = more or older
    batches.sort(key=lambda item: index_entry(item[1]))
    shown = batches[: args.limit] if args.limit else batches
    more = more or len(shown) < len(batches)
    if args.json:
        data = [{**batch.as_dict(), "project": project} for project, batch in shown]
        print(json.dumps({"object": "list", "data": data, "has_more": more}))
        return 0
    header = ["BATCH ID", "STATUS", "TOTAL", "DONE", "FAILED", "CREATED", "INPUT"]
    rows = []
    for project, batch in shown:
        counts = batch.request_counts
        created = time.strftime("%Y-%m-%d %H:%M", time.localtime(batch.created_at))
        row = [
            batch.id,
            str(batch.status),
            str(counts.total),
            str(counts.completed),
            str(counts.failed),
            created,
            batch.input_key or "",
        ]
        rows.append(([project or "-"] if storage.projects else []) + row)
    if storage.projects:
        header = ["PROJECT", *header]
    if not rows:
        print(f"no batches in {storage.uri}")
        return 0
    print("\n".join(table(rows, header)))
    if more:
        print("... and older batches (--limit 0 shows all)")
    return 0


def _command_cancel(args: argparse.Namespace, storage: BatchStorage) -> int:
    project, tenant = _find_batch(storage, args.batch_id)
    # The cancel job loads no engine. The served model's names matter only for validating a
    # batch that was never validated: they come from the environment, as in the code location.
    engine = engine_from_env()
    batch = record_of(
        cancel_batch(args.batch_id, storage, engine, project=project, wait_s=args.wait)
    )
    _print_summary(tenant, batch)
    return 0 if batch.status is BatchStatus.CANCELLED else 1


def _command_serve(args: argparse.Namespace, storage: BatchStorage) -> int:
    from batch_api.server import ServeRefused, serve

    engine_from_env()  # the engine settings the code location reads: refused here as there
    try:
        serve(storage, args.host, args.port, args.max_file_bytes)
    except ServeRefused as refused:
        raise _UsageError(str(refused)) from refused
    return 0


class _UsageError(Exception):
    """A usage error the parser reports (exit code 2)."""


def _storage_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--storage",
        default=None,
        help="storage root: a folder or s3://bucket/prefix (env BATCH_STORAGE; default ./data)",
    )
    parser.add_argument(
        "--project",
        default=None,
        help="the project (tenant) whose batches to use, under <storage>/<project> "
        "(default: every project of env BATCH_PROJECTS, or the root)",
    )


def _run_arguments(command: argparse.ArgumentParser) -> None:
    """What the commands that run a batch here take: the storage, --verbose, engine flags."""
    _storage_arguments(command)
    command.add_argument(
        "--verbose", action="store_true", help="show Dagster's and vLLM's logs here too"
    )
    add_engine_arguments(command)


def build_parser() -> argparse.ArgumentParser:
    formatter = argparse.RawDescriptionHelpFormatter
    parser = argparse.ArgumentParser(
        prog="batch-infer",
        description=(__doc__ or "").split("\n")[0],
        epilog=EXIT_CODES,
        formatter_class=formatter,
    )
    commands = parser.add_subparsers(dest="command", required=True)

    def command(name: str, help: str) -> argparse.ArgumentParser:
        return commands.add_parser(name, help=help, epilog=EXIT_CODES, formatter_class=formatter)

    run = command("run", "run one OpenAI-Batch JSONL file")
    run.add_argument("file", type=Path, help="the .jsonl (or .jsonl.gz) file of requests")
    _run_arguments(run)
    status = command("status", "one batch: status, counts, usage, times, paths")
    status.add_argument("batch_id")
    _storage_arguments(status)
    status.add_argument("--json", action="store_true", help="print batch.json as it is")
    listing = command("list", "the batches in the storage, newest first")
    _storage_arguments(listing)
    listing.add_argument("--limit", type=int, default=50, help="most batches shown; 0: all")
    listing.add_argument("--json", action="store_true", help="one JSON object, for scripts")
    estimate = command(
        "estimate", "what a file will cost before it runs: tokens, lines, an ETA (no engine)"
    )
    estimate.add_argument("file", type=Path, help="the .jsonl (or .jsonl.gz) file of requests")
    estimate.add_argument("--json", action="store_true", help="one JSON object, for scripts")
    _run_arguments(estimate)
    retry = command(
        "retry",
        "a new batch over an ended batch's failed lines (cancelled, expired, 5xx), run here",
    )
    retry.add_argument("batch_id")
    _run_arguments(retry)
    cancel = command("cancel", "cancel a batch, keeping its finished lines")
    cancel.add_argument("batch_id")
    _storage_arguments(cancel)
    cancel.add_argument(
        "--wait",
        type=float,
        default=30.0,
        help="seconds to let a running batch stop by itself before publishing here",
    )
    server = command("serve", "OpenAI's Files and Batches HTTP API over the storage")
    server.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    server.add_argument("--port", type=int, default=8000, help="port (default 8000)")
    server.add_argument(
        "--storage",
        default=None,
        help="storage root: a folder or s3://bucket/prefix (env BATCH_STORAGE; default ./data); "
        "projects come from env BATCH_PROJECTS",
    )
    server.add_argument(
        "--max-file-bytes",
        type=int,
        default=8 << 30,
        help="largest upload accepted; larger ones get 413 (default 8 GiB)",
    )
    server.set_defaults(project=None)
    return parser


COMMANDS = {
    "serve": _command_serve,
    "run": _command_run,
    "status": _command_status,
    "list": _command_list,
    "cancel": _command_cancel,
    "retry": _command_retry,
    "estimate": _command_estimate,
}


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    fields: dict[str, Any] = {"root": args.storage} if args.storage else {}
    if args.project or args.command == "run":  # a run goes to one project, or to the root
        fields["projects"] = [args.project] if args.project else []
    storage = BatchStorage.from_env(**fields)
    try:
        return COMMANDS[args.command](args, storage)
    except (_UsageError, EngineConfigError) as error:
        parser.error(str(error))
    except KeyboardInterrupt:
        print("interrupted: finished answers are journaled; run again to resume", file=sys.stderr)
        return 130


def console_main() -> None:
    """The ``batch-infer`` command: :func:`main`, then an exit that skips the teardown.

    After a run, the interpreter's own teardown (atexit handlers, freeing vLLM's, torch's and
    Dagster's modules) took about 5 s of a 40 s ``batch-infer run``, with nothing left to do:
    the run's instance is closed and its engine released (an engine process of vLLM's is
    stopped here, as multiprocessing's own exit handler would). So the output is flushed,
    the logs are closed, and the process ends at once.
    """
    code = main()
    for child in multiprocessing.active_children():
        child.terminate()
        child.join(5)
    sys.stdout.flush()
    sys.stderr.flush()
    logging.shutdown()
    os._exit(code)


if __name__ == "__main__":
    console_main()
