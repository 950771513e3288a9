"""The S3 backend against a real S3 server (SeaweedFS), and a whole batch stored on S3."""

import io
import json

import openai.types as oa
import pytest

from batch_assets.cli.runner import run_file
from resources.journal import JournalRecord, JournalWriter, read_journal
from resources.layout import BatchPaths
from resources.storage import UnsafeKeyError
from tests.conftest import chat_body, request_line


def test_write_read_stat_list_and_delete(s3_storage, s3_server):
    s3_storage.write_bytes("outbox/b1/batch.json", b'{"a": 1}')
    assert s3_storage.read_json("outbox/b1/batch.json") == {"a": 1}
    info = s3_storage.stat("outbox/b1/batch.json")
    assert info.size == 8 and info.version
    head = s3_server.client().head_object(
        Bucket="batches", Key=f"{s3_storage.uri[len('s3://batches/') :]}/outbox/b1/batch.json"
    )
    assert head["ServerSideEncryption"] == "AES256"
    assert not s3_storage.exists("outbox/b1/missing.json")
    s3_storage.delete_prefix("outbox/b1")
    assert list(s3_storage.list("outbox")) == []


def test_listing_pages_past_1000_objects_and_resumes_after_a_key(s3_storage):
    client = s3_storage.backend().client
    prefix = s3_storage.backend().prefix
    for i in range(1105):
        client.put_object(Bucket="batches", Key=f"{prefix}/inbox/f{i:05d}.jsonl", Body=b"x")
    keys = [info.key for info in s3_storage.list("inbox")]
    assert len(keys) == 1105 and keys == sorted(keys)
    after = [info.key for info in s3_storage.list("inbox", start_after="inbox/f01000.jsonl")]
    assert after[0] == "inbox/f01001.jsonl" and len(after) == 104


def test_reads_stream_line_by_line_and_large_writes_go_multipart(s3_storage):
    line = json.dumps({"x": "y" * 1000}).encode() + b"\n"
    big = line * 70_000  # ~70 MB: above the 64 MB multipart threshold
    with s3_storage.open_write("inbox/big.jsonl") as stream:
        for _ in range(70_000):
            stream.write(line)
    assert s3_storage.stat("inbox/big.jsonl").size == len(big)
    assert "-" in s3_storage.stat("inbox/big.jsonl").version  # a multipart ETag
    with s3_storage.open_read("inbox/big.jsonl") as stream:
        assert stream.peek(10)[:5] == b'{"x":'
        count = sum(1 for raw in iter(lambda: stream.readline(4096), b"") if raw == line)
    assert count == 70_000


def test_a_failed_write_publishes_nothing(s3_storage):
    s3_storage.write_bytes("outbox/b/output.jsonl", b"old\n")
    with pytest.raises(RuntimeError), s3_storage.open_write("outbox/b/output.jsonl") as stream:
        stream.write(b"half of the new file")
        raise RuntimeError("killed mid-write")
    assert s3_storage.read_bytes("outbox/b/output.jsonl") == b"old\n"


@pytest.mark.parametrize("key", ["../x", "/etc/passwd", "inbox/../../x", "a//b", "a\x00b"])
def test_keys_that_leave_the_root_are_refused(s3_storage, key):
    with pytest.raises(UnsafeKeyError):
        s3_storage.write_bytes(key, b"x")


def test_journal_goes_up_in_parts_and_reads_back(s3_storage):
    with JournalWriter(s3_storage, "work/b/journal", "a1", sync_interval_s=0) as journal:
        for line in range(1, 4):
            journal.write(JournalRecord(line, 200, 1, 2, 0, '{"ok":true}'))
            journal.flush()
    parts = [info.key for info in s3_storage.list("work/b/journal")]
    assert len(parts) == 3
    assert sorted(read_journal(s3_storage, "work/b/journal")) == [1, 2, 3]


def test_a_batch_runs_end_to_end_on_s3(s3_storage, engine, instance, tmp_path):
    upload = tmp_path / "s3batch.jsonl"
    upload.write_text(
        "\n".join(
            [request_line("a", chat_body("one")), "{bad json", request_line("b", chat_body("two"))]
        )
        + "\n"
    )
    batch = run_file(upload, s3_storage, engine, instance=instance)
    oa.Batch.model_validate(batch)
    assert batch["status"] == "completed"
    assert batch["request_counts"] == {"total": 3, "completed": 2, "failed": 1}
    paths = BatchPaths(batch["id"])
    output = [json.loads(x) for x in io.BytesIO(s3_storage.read_bytes(paths.output))]
    errors = [json.loads(x) for x in io.BytesIO(s3_storage.read_bytes(paths.errors))]
    assert [x["custom_id"] for x in output] == ["a", "b"]
    assert errors[0]["error"]["line"] == 2
    assert s3_storage.exists(f"{paths.shards}/shard-00000.parquet")
    # the same file again is the same, finished batch
    assert run_file(upload, s3_storage, engine, instance=instance)["id"] == batch["id"]
