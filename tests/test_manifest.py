"""Formats across releases: a manifest of the current format reads and another fails the
batch; a journal written before reasoning tokens reads beside a new one."""

import json

import dagster as dg

from batch_assets.input.asset import batch_input
from batch_assets.input.manifest import MANIFEST_FORMAT, read_manifest
from batch_assets.jobs import batch_assets
from batch_assets.lifecycle.batches import read_batch, read_source, register_batch
from batch_assets.partitions import batch_partitions
from resources.journal import JournalIndex, JournalRecord, JournalWriter, read_journal
from resources.layout import BatchPaths, journal_segment
from resources.storage import BatchStorage
from tests.conftest import chat_requests, quiet_instance

# What the input stage of the previous release wrote (format 2, a plain dict, indented).
PREVIOUS_RELEASE_MANIFEST = {
    "format": 2,
    "source": {"key": "inbox/f.jsonl", "version": "12-345", "size": 12},
    "validated_at": 1764600000,
    "lines": 3,
    "blank_lines": 1,
    "requests": 1,
    "invalid": 1,
    "endpoint": "/v1/chat/completions",
    "models": {"tiny-chat": 1},
    "error_codes": {"invalid_json_line": 1},
    "est_prompt_tokens": 3,
    "shards": [
        {"key": "work/b/requests/shard-00000.parquet", "rows": 1, "first_line": 1, "last_line": 1}
    ],
    "error_parts": [
        {"key": "work/b/line_errors/part-00000.parquet", "rows": 1, "first_line": 3, "last_line": 3}
    ],
}


def test_a_manifest_of_the_previous_release_still_reads(tmp_path):
    storage = BatchStorage(root=str(tmp_path))
    paths = BatchPaths("b")
    storage.write_bytes(paths.manifest, json.dumps(PREVIOUS_RELEASE_MANIFEST, indent=2).encode())
    manifest = read_manifest(storage, paths)
    assert manifest.format == MANIFEST_FORMAT == 2
    assert manifest.source.key == "inbox/f.jsonl"
    assert manifest.request_lines == 2
    assert [s.key for s in manifest.shards] == ["work/b/requests/shard-00000.parquet"]
    assert manifest.error_parts[0].first_line == 3


def test_a_manifest_of_an_unknown_format_fails_the_batch_with_the_reason(tmp_path, engine):
    storage = BatchStorage(root=str(tmp_path))
    storage.write_bytes("inbox/f.jsonl", chat_requests("m", 2).encode())
    batch_id = register_batch(storage, "inbox/f.jsonl")
    paths = BatchPaths(batch_id)
    future = {**PREVIOUS_RELEASE_MANIFEST, "format": 7, "source": "written by a later release"}
    storage.write_bytes(paths.manifest, json.dumps(future).encode())
    assert read_source(storage, paths).key == "inbox/f.jsonl"
    with quiet_instance() as instance:
        instance.add_dynamic_partitions(batch_partitions.name or "", [batch_id])
        result = dg.materialize(
            batch_assets,
            selection=[batch_input],
            partition_key=batch_id,
            instance=instance,
            resources={"storage": storage, "engine": engine},
            raise_on_error=False,
        )
    assert not result.success
    batch = read_batch(storage, batch_id).as_dict()
    assert batch["status"] == "failed"
    (error,) = batch["errors"]["data"]
    assert error["code"] == "unknown_manifest_format"
    assert "format 7" in error["message"] and f"reads format {MANIFEST_FORMAT}" in error["message"]


def test_a_journal_of_the_previous_release_still_reads_beside_a_new_one(tmp_path):
    storage = BatchStorage(root=str(tmp_path))
    prefix = BatchPaths("batch_old").journal
    # Before reasoning tokens: line, status, prompt, completion, cached, body.
    old = b'1\t200\t5\t7\t2\t{"a":1}\n2\t400\t0\t0\t0\t{"error":{"message":"no"}}\n'
    storage.write_bytes(journal_segment(prefix, "0001-old"), old)
    with JournalWriter(storage, prefix, "0002-new") as journal:
        journal.write(JournalRecord(3, 200, 1, 4, 0, '{"b":2}', reasoning_tokens=3))
    records = read_journal(storage, prefix)
    assert records[1] == JournalRecord(1, 200, 5, 7, 2, '{"a":1}', 0)
    assert records[2].status_code == 400 and records[2].body == '{"error":{"message":"no"}}'
    assert records[3] == JournalRecord(3, 200, 1, 4, 0, '{"b":2}', 3)
    with JournalIndex(storage, prefix) as index:
        assert (index.prompt_tokens, index.completion_tokens, index.reasoning_tokens) == (6, 11, 3)
