"""The result asset: output.jsonl, errors.jsonl and batch.json in the outbox, in input order."""

import json
import time
from collections import Counter
from collections.abc import Iterator
from typing import Any, Literal

import dagster as dg

from batch_assets.inference.asset import batch_inference
from batch_assets.input.manifest import Manifest, manifest_or_fail
from batch_assets.input.shards import iter_line_errors, read_shard
from batch_assets.lifecycle.batches import (
    BatchUsage,
    InputTokensDetails,
    OutputTokensDetails,
    RequestCounts,
    Transition,
    batch_url,
    read_batch,
    transition,
)
from batch_assets.lifecycle.cancellation import CANCELLED, cancel_requested, mark_cancelling
from batch_assets.lifecycle.files import record_batch_file
from batch_assets.lifecycle.retention import output_expires_at
from batch_assets.partitions import batch_partitions, open_batch
from resources.engines.base import dumps, response_id
from resources.engines.progress import Progress, report_progress
from resources.journal import JournalIndex, JournalRecord
from resources.layout import BatchPaths
from resources.storage import BatchStorage

ACCOUNTED = "every_line_accounted_for"
UNIQUE_IDS = "no_duplicate_custom_id_in_output"


def success_line(batch_id: str, line: int, custom_id: str, record: JournalRecord) -> str:
    rid = response_id(batch_id, line)
    return (
        f'{{"id":"batch_req_{rid}","custom_id":{dumps(custom_id)},"response":'
        f'{{"status_code":{record.status_code},"request_id":"req_{rid}","body":'
        f'{record.body}}},"error":null}}\n'
    )


def line_error_line(
    batch_id: str, line: int, custom_id: str | None, code: str, message: str
) -> str:
    return (
        dumps(
            {
                "id": f"batch_req_{response_id(batch_id, line)}",
                "custom_id": custom_id,
                "response": None,
                "error": {"code": code, "message": message, "line": line},
            }
        )
        + "\n"
    )


EXPIRED_MESSAGE = "This request could not be executed before the completion window expired."


def _answers(
    storage: BatchStorage,
    paths: BatchPaths,
    manifest: Manifest,
    journal: JournalIndex,
    unfinished: tuple[str, str],
) -> Iterator[tuple[bool, str]]:
    """``(ok, output_line)`` for every non-blank input line, in input order.

    A valid request with no journal record (the batch expired or was cancelled first) gets
    the ``unfinished`` error code and message. One shard's answers are in memory at a time.
    """
    batch_id = paths.batch_id
    errors = iter_line_errors(storage, manifest.error_parts)
    next_error = next(errors, None)
    for shard in manifest.shards:
        requests = read_shard(storage, shard.key, ["line", "custom_id"]).sort("line")
        records = journal.records(shard.first_line, shard.last_line)
        for line, custom_id in requests.iter_rows():
            while next_error is not None and next_error[0] < line:
                yield False, line_error_line(batch_id, *next_error)
                next_error = next(errors, None)
            record = records.get(line)
            if record is None:
                yield False, line_error_line(batch_id, line, custom_id, *unfinished)
            else:
                yield record.status_code == 200, success_line(batch_id, line, custom_id, record)
    while next_error is not None:
        yield False, line_error_line(batch_id, *next_error)
        next_error = next(errors, None)


def _check_files(
    storage: BatchStorage, paths: BatchPaths, expected_lines: int
) -> list[dg.AssetCheckResult]:
    """Re-read the published files and check them against the input's counts."""
    ids: Counter = Counter()
    counts = {}
    for name, key in (("output", paths.output), ("errors", paths.errors)):
        n = 0
        with storage.open_read(key) as stream:
            for raw in stream:
                parsed = json.loads(raw)
                if name == "output":
                    ids[parsed["custom_id"]] += 1
                n += 1
        counts[name] = n
    total = counts["output"] + counts["errors"]
    duplicates = [cid for cid, n in ids.items() if n > 1]
    return [
        dg.AssetCheckResult(
            check_name=ACCOUNTED,
            passed=total == expected_lines,
            metadata={
                "non_blank_input_lines": expected_lines,
                "output_lines": counts["output"],
                "error_lines": counts["errors"],
            },
            description="Every non-blank input line yields exactly one result line.",
        ),
        dg.AssetCheckResult(
            check_name=UNIQUE_IDS,
            passed=not duplicates,
            metadata={"duplicates": dg.MetadataValue.json(duplicates[:20])},
        ),
    ]


@dg.asset(
    partitions_def=batch_partitions,
    deps=[batch_inference],
    group_name="batch",
    kinds={"json"},
    description="output.jsonl, errors.jsonl and batch.json in the batch's outbox folder.",
    check_specs=[
        dg.AssetCheckSpec(
            ACCOUNTED,
            asset="batch_results",
            description="Every non-blank input line appears exactly once "
            "across output.jsonl and errors.jsonl.",
        ),
        dg.AssetCheckSpec(
            UNIQUE_IDS,
            asset="batch_results",
            description="No custom_id appears twice in output.jsonl.",
        ),
    ],
)
def batch_results(context: dg.AssetExecutionContext, storage: BatchStorage) -> dg.MaterializeResult:
    storage, batch_id = open_batch(storage, context.partition_key)
    paths = BatchPaths(batch_id)
    manifest = manifest_or_fail(storage, paths)
    with JournalIndex(storage, paths.journal) as journal:
        missing = manifest.requests - len(journal)
        batch = read_batch(storage, batch_id)
        cancelled = cancel_requested(storage, batch_id, batch.status)
        expired = missing > 0 and time.time() >= batch.expires_at
        if missing > 0 and not (expired or cancelled):
            raise dg.Failure(
                f"batch {batch_id}: {missing} requests have no result yet; "
                "materialize batch_inference for this partition first"
            )
        if cancelled:
            mark_cancelling(storage, batch_id)
            publish, unfinished = Transition.CONFIRM_CANCEL, CANCELLED
        else:
            transition(storage, batch_id, Transition.FINALIZE)
            publish = Transition.EXPIRE if expired else Transition.COMPLETE
            unfinished = ("batch_expired", EXPIRED_MESSAGE)
        report_progress(Progress(batch_id, "publishing", len(journal), manifest.requests))
        completed = failed = 0
        preview: list[dict[str, Any]] = []
        with storage.open_write(paths.output) as out, storage.open_write(paths.errors) as err:
            for ok, text in _answers(storage, paths, manifest, journal, unfinished):
                (out if ok else err).write(text.encode())
                completed += ok
                failed += not ok
                if len(preview) < 5:
                    preview.append(json.loads(text))
        usage = BatchUsage(
            input_tokens=journal.prompt_tokens,
            input_tokens_details=InputTokensDetails(journal.cached_tokens),
            output_tokens=journal.completion_tokens,
            output_tokens_details=OutputTokensDetails(journal.reasoning_tokens),
            total_tokens=journal.prompt_tokens + journal.completion_tokens,
        )
    counts = RequestCounts(completed + failed, completed, failed)
    checks = _check_files(storage, paths, manifest.request_lines)
    expires_at = output_expires_at(storage, batch)

    # As OpenAI: a file id only for a file with lines (both files are in the outbox anyway).
    def file_id(role: Literal["output", "errors"], key: str, lines: int) -> str | None:
        if not lines:
            return None
        return record_batch_file(storage, batch_id, role, key, batch.created_at, None, expires_at)

    final = transition(
        storage,
        batch_id,
        publish,
        request_counts=counts,
        usage=usage,
        output_file_id=file_id("output", paths.output, completed),
        error_file_id=file_id("errors", paths.errors, failed),
    )
    record = final.as_dict()
    return dg.MaterializeResult(
        metadata={
            "status": str(final.status),
            "request_counts": dg.MetadataValue.json(record["request_counts"]),
            "usage": dg.MetadataValue.json(record["usage"]),
            "output": dg.MetadataValue.path(storage.url(paths.output)),
            "errors": dg.MetadataValue.path(storage.url(paths.errors)),
            "batch_json": dg.MetadataValue.path(batch_url(storage, batch_id)),
            "preview": dg.MetadataValue.md(preview_table(preview)),
        },
        check_results=checks,
    )


def preview_table(rows: list[dict[str, Any]]) -> str:
    lines = ["| custom_id | status | result |", "|---|---|---|"]
    for row in rows:
        response = row.get("response")
        if response is None:
            status, text = "invalid", row["error"]["message"]
        else:
            status, text = str(response["status_code"]), _preview_text(response["body"])
        text = text.replace("|", "\\|").replace("\n", " ")[:80]
        lines.append(f"| {row.get('custom_id')} | {status} | {text} |")
    return "\n".join(lines)


def _preview_text(body: dict[str, Any]) -> str:
    """A short text of an answer body, whichever endpoint gave it."""
    if "error" in body:
        return str((body.get("error") or {}).get("message", ""))
    if body.get("choices"):
        choice = body["choices"][0]
        return choice.get("message", {}).get("content") or choice.get("text") or ""
    data = body.get("data") or [{}]
    if "embedding" in data[0]:
        return f"embedding[{len(data[0]['embedding'])}]"
    if "score" in data[0]:  # /v1/score
        return "scores " + ", ".join(f"{d['score']:.4g}" for d in data)
    if body.get("results"):  # /v1/rerank: the documents, most relevant first
        best = body["results"][0]
        return f"best {best['relevance_score']:.4g}: {(best.get('document') or {}).get('text')}"
    return str(body.get("output_text") or body.get("status") or "")
