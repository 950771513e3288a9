"""The inbox sensor and the overnight schedule, ticked against a real Dagster instance, on a
local folder and on a real S3 server."""

import datetime as dt
import gzip
import os
import time

import dagster as dg
import pytest

from batch_assets.lifecycle.batches import read_batch
from resources.storage import BatchStorage
from sensors.inbox import dump_cursors, inbox_sensor, parse_cursors
from sensors.overnight import overnight_schedule
from tests.conftest import chat_body, drive, quiet_instance, request_line

LINE = (request_line("a", chat_body()) + "\n").encode()


@pytest.fixture(params=["local", "s3"])
def storage(request, tmp_path) -> BatchStorage:
    if request.param == "local":
        return BatchStorage(root=str(tmp_path / "storage"))
    return request.getfixturevalue("s3_storage")


def tick(instance: dg.DagsterInstance, storage: BatchStorage, cursor: str | None):
    context = dg.build_sensor_context(
        instance=instance, cursor=cursor, resources={"storage": storage}
    )
    result = inbox_sensor(context)
    added = [key for req in result.dynamic_partitions_requests for key in req.partition_keys]
    if added:  # what the daemon does with the request
        instance.add_dynamic_partitions("batches", added)
    return result, added


def test_new_files_run_once_and_reuploads_run_again(storage, tmp_path):
    with quiet_instance() as instance:
        storage.write_bytes("inbox/a.jsonl", LINE)
        storage.write_bytes("inbox/b.jsonl", LINE + LINE)
        storage.write_bytes("inbox/c.jsonl.gz", gzip.compress(LINE))
        for ignored in (
            "inbox/.hidden.jsonl",
            "inbox/c.jsonl.tmp",
            "inbox/notes.txt",
            "inbox/_staging.jsonl",
        ):
            storage.write_bytes(ignored, LINE)
        storage.write_bytes("inbox/empty.jsonl", b"")
        result, added = tick(instance, storage, None)
        runs = {r.tags["batch/input"]: r for r in result.run_requests}
        assert set(runs) == {"inbox/a.jsonl", "inbox/b.jsonl", "inbox/c.jsonl.gz"}
        assert sorted(added) == sorted(r.partition_key for r in result.run_requests)
        for run in runs.values():
            assert run.run_key == run.partition_key
            assert read_batch(storage, run.partition_key).status == "validating"

        again, added_again = tick(instance, storage, result.cursor)  # duplicates: nothing
        assert again.run_requests == [] and added_again == []

        time.sleep(0.01 if storage.is_local else 1.1)  # S3 LastModified has 1 s resolution
        storage.write_bytes("inbox/a.jsonl", LINE + b"\n" + LINE)  # same name, new upload
        third, _ = tick(instance, storage, again.cursor)
        assert [r.tags["batch/input"] for r in third.run_requests] == ["inbox/a.jsonl"]
        assert third.run_requests[0].run_key != runs["inbox/a.jsonl"].run_key


def test_overnight_uploads_wait_for_the_nightly_slot(storage):
    with quiet_instance() as instance:
        storage.write_bytes("inbox/now.jsonl", LINE)
        storage.write_bytes("inbox/overnight/later.jsonl", LINE)
        result, added = tick(instance, storage, None)
        assert len(added) == 2
        jobs = {r.tags["batch/input"]: r for r in result.run_requests}
        assert jobs["inbox/now.jsonl"].job_name == "batch_job"
        preview = jobs["inbox/overnight/later.jsonl"]  # previewed at once, run at night
        assert preview.job_name == "preview_job"
        later = preview.partition_key
        assert preview.run_key == f"{later}:preview"
        assert read_batch(storage, later).metadata["slot"] == "overnight"

        night = dt.datetime(2026, 11, 23, 1, 0, tzinfo=dt.UTC)
        context = dg.build_schedule_context(
            instance=instance, scheduled_execution_time=night, resources={"storage": storage}
        )
        requests = overnight_schedule(context)
        assert [r.partition_key for r in requests] == [later]
        assert requests[0].run_key == f"{later}:2026-11-23"
        slot_end = dt.datetime(2026, 11, 23, 7, 0, tzinfo=dt.UTC).timestamp()
        assert requests[0].tags["batch/slot_end"] == f"{slot_end:.0f}"  # a 6-hour slot

        drive(storage, later, "completed")  # a finished batch is not relaunched
        context = dg.build_schedule_context(
            instance=instance, resources={"storage": storage}, scheduled_execution_time=night
        )
        assert isinstance(overnight_schedule(context), dg.SkipReason)


def test_more_than_1000_uploads_are_all_picked_up_across_ticks_and_a_restart(storage):
    with quiet_instance() as instance:
        if storage.is_local:
            for i in range(1203):
                path = storage.local_path(f"inbox/bulk/f{i:05d}.jsonl")
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_bytes(LINE)
                os.utime(path, ns=(10**18 + (1203 - i), 10**18 + (1203 - i)))  # reverse order
        else:
            client, prefix = storage.backend().client, storage.backend().prefix
            for i in range(1203):
                client.put_object(
                    Bucket="batches", Key=f"{prefix}/inbox/bulk/f{i:05d}.jsonl", Body=LINE
                )
        seen: list[str] = []
        cursor = None
        for n in range(7):  # 200 per tick
            result, _ = tick(instance, storage, cursor)
            seen += [r.tags["batch/input"] for r in result.run_requests]
            cursor = result.cursor
            if n == 2:  # a restart: a fresh sensor context that only has the stored cursor
                cursor = dump_cursors(parse_cursors(cursor))
        assert len(seen) == 1203 and len(set(seen)) == 1203
        final, _ = tick(instance, storage, cursor)
        assert final.run_requests == []
