"""Cancelling a batch on the real engine: finished lines kept, the rest ``batch_cancelled``."""

import threading
import time
from pathlib import Path

import dagster as dg
import openai.types as oa
import pytest

from batch_assets.cli.runner import cancel_batch, run_file
from batch_assets.lifecycle.batches import read_batch, register_batch
from batch_assets.lifecycle.cancellation import request_cancel
from resources.journal import journaled_lines
from resources.layout import BatchPaths
from resources.storage import BatchStorage
from sensors.cancel import cancel_sensor
from tests.conftest import (
    chat_body,
    chat_requests,
    drive,
    quiet_instance,
    read_jsonl,
    request_ids,
    request_line,
    wait_for,
)


def _upload(tmp_path: Path, requests: int, bad_lines: int = 0) -> Path:
    upload = tmp_path / "cancel-me.jsonl"
    # 128 tokens each: the batch runs for many seconds, so the cancel lands mid-run
    upload.write_text(chat_requests("c", requests, max_tokens=128) + "{not json\n" * bad_lines)
    return upload


def _published(storage: BatchStorage, batch_id: str) -> tuple[list[dict], list[dict]]:
    root, paths = Path(storage.uri), BatchPaths(batch_id)
    return read_jsonl(root / paths.output), read_jsonl(root / paths.errors)


def test_a_running_batch_stops_within_seconds_and_keeps_its_finished_lines(
    tmp_path, engine, instance
):
    storage = BatchStorage(root=str(tmp_path / "storage"))
    upload = _upload(tmp_path, requests=3000, bad_lines=2)
    result: dict = {}
    worker = threading.Thread(
        target=lambda: result.update(run_file(upload, storage, engine, instance=instance))
    )
    worker.start()
    wait_for(lambda: storage.exists("inbox/cancel-me.jsonl"), 60, "the upload")
    batch_id = register_batch(storage, "inbox/cancel-me.jsonl")
    journal = BatchPaths(batch_id).journal
    wait_for(lambda: len(journaled_lines(storage, journal)) >= 100, 300, "100 answers")
    asked = time.monotonic()
    assert request_cancel(storage, batch_id) == "cancelling"
    worker.join(timeout=120)
    assert not worker.is_alive()
    stopped_s = time.monotonic() - asked

    batch = oa.Batch.model_validate(result)
    assert batch.status == "cancelled"
    assert batch.cancelling_at is not None and batch.cancelled_at is not None
    assert stopped_s < 30, stopped_s  # the loop polls every 2 s; publishing takes the rest
    output, errors = _published(storage, batch_id)
    done = len(journaled_lines(storage, journal))
    assert 100 <= len(output) == done < 3000
    cancelled = [e for e in errors if e["error"]["code"] == "batch_cancelled"]
    assert len(cancelled) == 3000 - done
    assert sum(e["error"]["code"] == "invalid_json_line" for e in errors) == 2
    ids = [line["custom_id"] for line in output + cancelled]
    assert sorted(ids) == request_ids("c", 3000)  # each line exactly once
    assert batch.request_counts.model_dump() == {
        "total": 3002,
        "completed": done,
        "failed": 3002 - done,
    }
    # Running the file again does not restart a cancelled batch.
    again = run_file(upload, storage, engine, instance=instance)
    assert again["status"] == "cancelled"
    assert len(journaled_lines(storage, journal)) == done


def test_a_batch_cancelled_before_it_ran_publishes_every_line_without_an_engine(
    tmp_path, engine, instance
):
    storage = BatchStorage(root=str(tmp_path / "storage"))
    upload = _upload(tmp_path, requests=5, bad_lines=1)
    storage.put_file(upload, "inbox/cancel-me.jsonl")
    batch_id = register_batch(storage, "inbox/cancel-me.jsonl")
    batch = cancel_batch(batch_id, storage, engine, instance=instance, wait_s=0)
    assert batch["status"] == "cancelled"
    output, errors = _published(storage, batch_id)
    assert output == []
    assert [e["error"]["code"] for e in errors] == ["batch_cancelled"] * 5 + ["invalid_json_line"]
    assert journaled_lines(storage, BatchPaths(batch_id).journal).size == 0


def test_cancelling_a_finished_batch_changes_nothing(run_batch):
    run = run_batch(request_line("a", chat_body()))
    assert request_cancel(run.storage, run.batch["id"]) == "completed"
    assert not run.storage.exists(f"cancel/{run.batch['id']}")


def test_cancelling_an_unknown_batch_is_an_error(tmp_path):
    with pytest.raises(KeyError):
        request_cancel(BatchStorage(root=str(tmp_path)), "batch_nope")


def test_the_cancel_sensor_publishes_idle_batches_and_consumes_finished_requests(tmp_path):
    storage = BatchStorage(root=str(tmp_path))
    for name in ("idle", "done"):
        line = request_line(name, chat_body()) + "\n"
        storage.write_bytes(f"inbox/{name}.jsonl", line.encode())
    idle = register_batch(storage, "inbox/idle.jsonl")
    done = register_batch(storage, "inbox/done.jsonl")
    drive(storage, done, "completed")
    for batch_id in (idle, done):
        storage.write_bytes(f"cancel/{batch_id}", b"")
    with quiet_instance() as instance:
        context = dg.build_sensor_context(instance=instance, resources={"storage": storage})
        requests = cancel_sensor(context)
    assert [(r.job_name, r.partition_key, r.run_key) for r in requests] == [
        ("cancel_job", idle, f"{idle}:cancel")
    ]
    assert read_batch(storage, idle).status == "cancelling"
    assert read_batch(storage, done).status == "completed"  # too late: nothing changes
    assert not storage.exists(f"cancel/{done}") and storage.exists(f"cancel/{idle}")
