"""Retrying only a finished batch's failed lines: through the API (the error file as
``input_file_id``) and on the real engine after a cancel mid-run."""

import io
import json
import re
import subprocess
import threading

import openai
import pytest

from batch_assets.cli.runner import cancel_batch, run_batch, run_file
from batch_assets.lifecycle.batches import (
    list_batches,
    read_batch,
    read_source,
    register_batch,
)
from batch_assets.lifecycle.cancellation import request_cancel
from batch_assets.lifecycle.files import read_file_record
from batch_assets.lifecycle.retry import RetryRefused, create_retry_batch, plan_retry
from resources.journal import journaled_lines
from resources.layout import BatchPaths
from resources.storage import BatchStorage
from tests.api_server import api_server
from tests.conftest import (
    MODEL_NAME,
    ROOT,
    chat_requests,
    read_jsonl,
    request_ids,
    wait_for,
)

CHAT = "/v1/chat/completions"


def _client(base_url: str, key: str) -> openai.OpenAI:
    return openai.OpenAI(
        base_url=base_url, api_key=key, max_retries=0, _strict_response_validation=True
    )


def test_an_error_file_as_input_retries_its_unfinished_lines_in_its_own_project(
    tmp_path, engine, instance
):
    storage = BatchStorage(root=str(tmp_path / "s"), projects=["team-a", "team-b"])
    lines = chat_requests("r", 6).splitlines(keepends=True)
    content = "".join(lines[:3]) + "{not json\n" + "".join(lines[3:])
    with api_server(storage, keys="team-a:key-a,team-b:key-b") as base_url:
        a, b = _client(base_url, "key-a"), _client(base_url, "key-b")
        upload = a.files.create(file=("r.jsonl", io.BytesIO(content.encode())), purpose="batch")
        batch = a.batches.create(input_file_id=upload.id, endpoint=CHAT, completion_window="24h")
        assert a.batches.cancel(batch.id).status == "cancelling"
        cancel_batch(batch.id, storage, engine, instance=instance, wait_s=0, project="team-a")
        cancelled = a.batches.retrieve(batch.id)
        assert cancelled.status == "cancelled" and cancelled.error_file_id

        with pytest.raises(openai.NotFoundError):  # another project's error file
            b.batches.create(
                input_file_id=cancelled.error_file_id, endpoint=CHAT, completion_window="24h"
            )
        with pytest.raises(openai.BadRequestError, match="its retry runs the same"):
            a.batches.create(
                input_file_id=cancelled.error_file_id,
                endpoint="/v1/embeddings",
                completion_window="24h",
            )
        retry = a.batches.create(
            input_file_id=cancelled.error_file_id,
            endpoint=CHAT,
            completion_window="24h",
            metadata={"why": "cancelled by mistake"},
        )
        assert retry.status == "validating" and retry.id != batch.id
        assert retry.metadata == {
            "why": "cancelled by mistake",
            "retry_of": batch.id,
            "retry_error_file_id": cancelled.error_file_id,
            "retry_lines": "6",
            "retry_skipped": "1",  # the invalid line: a retry would fail it the same way
        }
        # Its input is the original's own lines of the retried requests, downloadable.
        assert a.files.content(retry.input_file_id).read() == "".join(lines).encode()
        assert [x.id for x in b.batches.list()] == []
        with pytest.raises(openai.NotFoundError):
            b.batches.retrieve(retry.id)


@pytest.mark.slow
def test_a_batch_cancelled_mid_run_is_finished_by_retrying_its_error_file(
    tmp_path, engine, instance
):
    storage = BatchStorage(root=str(tmp_path / "storage"))
    upload = tmp_path / "long.jsonl"
    # 96 tokens each: long enough that the cancel lands mid-run on a fast machine too
    upload.write_text(chat_requests("c", 3000, max_tokens=96) + "{not json\n")
    result: dict = {}
    worker = threading.Thread(
        target=lambda: result.update(run_file(upload, storage, engine, instance=instance))
    )
    worker.start()
    wait_for(lambda: storage.exists("inbox/long.jsonl"), 60, "the upload")
    batch_id = register_batch(storage, "inbox/long.jsonl")
    journal = BatchPaths(batch_id).journal
    wait_for(lambda: len(journaled_lines(storage, journal)) >= 50, 300, "50 answers")
    request_cancel(storage, batch_id)
    worker.join(timeout=300)
    assert result["status"] == "cancelled"
    errors = read_jsonl(tmp_path / "storage" / BatchPaths(batch_id).errors)
    unfinished = {e["custom_id"] for e in errors if e["error"]["code"] == "batch_cancelled"}
    assert 0 < len(unfinished) < 3000

    original = read_batch(storage, batch_id)
    retry = create_retry_batch(storage, original, queued=False)
    key = read_source(storage, BatchPaths(retry.id)).key
    done = run_batch(key, retry.id, storage, engine, instance=instance)
    assert done["status"] == "completed"
    assert done["metadata"]["retry_of"] == batch_id
    output = read_jsonl(tmp_path / "storage" / BatchPaths(retry.id).output)
    assert sorted(line["custom_id"] for line in output) == sorted(unfinished)
    assert done["request_counts"] == {
        "total": len(unfinished),
        "completed": len(unfinished),
        "failed": 0,
    }
    kept = read_jsonl(tmp_path / "storage" / BatchPaths(batch_id).output)
    assert sorted([line["custom_id"] for line in kept + output]) == request_ids("c", 3000)

    # Answered as a fresh run of the same requests answers them (greedy).
    sample = sorted(unfinished)[:20]
    fresh_file = tmp_path / "fresh.jsonl"
    originals = {json.loads(raw)["custom_id"]: raw for raw in upload.read_text().splitlines()[:-1]}
    fresh_file.write_text("".join(originals[cid] + "\n" for cid in sample))
    fresh = run_file(
        fresh_file, BatchStorage(root=str(tmp_path / "fresh")), engine, instance=instance
    )
    fresh_out = read_jsonl(tmp_path / "fresh" / BatchPaths(fresh["id"]).output)
    texts = {
        line["custom_id"]: line["response"]["body"]["choices"][0]["message"]["content"]
        for line in output
    }
    for line in fresh_out:
        assert (
            texts[line["custom_id"]] == line["response"]["body"]["choices"][0]["message"]["content"]
        )

    # The retry completed everything: nothing is left to retry.
    with pytest.raises(RetryRefused, match="no line to retry"):
        plan_retry(storage, read_batch(storage, retry.id))


@pytest.mark.slow
def test_batch_infer_retry_runs_the_unfinished_lines_here(tmp_path, engine, instance):
    """The command line: ``batch-infer retry BATCH_ID`` on a batch cancelled before it ran."""
    storage = BatchStorage(root=str(tmp_path / "storage"))
    storage.write_bytes("inbox/few.jsonl", (chat_requests("f", 3) + "{not json\n").encode())
    batch_id = register_batch(storage, "inbox/few.jsonl")
    cancel_batch(batch_id, storage, engine, instance=instance, wait_s=0)
    command = [str(ROOT / ".venv" / "bin" / "batch-infer"), "retry", batch_id]
    command += ["--storage", storage.root, "--model", str(ROOT / "models" / "tiny-chat")]
    command += ["--served-model-name", MODEL_NAME]
    done = subprocess.run(command, capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert done.returncode == 0, done.stderr[-3000:]
    assert f"retries 3 failed lines of {batch_id} (1 failed lines" in done.stderr
    assert "status: completed" in done.stdout
    retried = [b for b in list_batches(storage) if (b.metadata or {}).get("retry_of") == batch_id]
    (retry,) = retried
    output = read_jsonl(tmp_path / "storage" / BatchPaths(retry.id).output)
    assert sorted(line["custom_id"] for line in output) == request_ids("f", 3)
    command[2] = retry.id  # the retry left nothing to retry: a usage error, no new batch
    again = subprocess.run(command, capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert again.returncode == 2 and "has no line to retry" in again.stderr
    assert len(list_batches(storage)) == 2


def test_a_retry_reads_the_work_area_and_is_refused_once_it_and_the_input_are_gone(
    tmp_path, engine, instance
):
    storage = BatchStorage(root=str(tmp_path / "storage"))
    requests = chat_requests("g", 3)
    storage.write_bytes("inbox/gone.jsonl", requests.encode())
    batch_id = register_batch(storage, "inbox/gone.jsonl")
    cancel_batch(batch_id, storage, engine, instance=instance, wait_s=0)  # validates, cancels
    storage.delete("inbox/gone.jsonl")
    retry = create_retry_batch(storage, read_batch(storage, batch_id), queued=False)
    record = read_file_record(storage, retry.input_file_id)
    assert record is not None
    rebuilt = [json.loads(line) for line in storage.read_bytes(record.content).splitlines()]
    assert rebuilt == [json.loads(line) for line in requests.splitlines()]  # in input order
    # Retention removed the work area's requests too: nothing is left to retry from.
    storage.delete_prefix(BatchPaths(batch_id).shards)
    with pytest.raises(RetryRefused, match=re.escape("(inbox/gone.jsonl) was removed or replaced")):
        create_retry_batch(storage, read_batch(storage, batch_id), queued=False)
    assert len(list_batches(storage)) == 2
