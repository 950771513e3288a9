"""A full disk while writing: a readable failure, no file left looking complete, and a rerun
after space is freed finishes the batch (a real full filesystem: a small tmpfs)."""

import errno
import subprocess
from pathlib import Path

import dagster as dg
import pytest

from batch_assets.cli.runner import run_file
from batch_assets.jobs import batch_assets
from batch_assets.lifecycle.batches import read_batch, register_batch
from batch_assets.results.asset import batch_results
from resources.journal import journaled_lines
from resources.layout import BatchPaths
from resources.storage import BatchStorage
from tests.conftest import chat_requests, quiet_instance, read_jsonl, request_ids

REQUESTS = 300


@pytest.fixture
def small_disk(tmp_path):
    mount = tmp_path / "disk"
    mount.mkdir()
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(mount)], capture_output=True
    )
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.decode().strip()}")
    yield mount
    subprocess.run(["umount", "-l", str(mount)], check=False)


def _fill(disk: Path, leave_bytes: int) -> Path:
    """Fill ``disk`` until the filesystem refuses, then free ``leave_bytes``."""
    filler = disk / "filler"
    with filler.open("wb", buffering=0) as stream:
        try:
            while stream.write(b"\0" * 4096):
                pass
        except OSError as error:
            assert error.errno == errno.ENOSPC
    with filler.open("r+b") as stream:
        stream.truncate(max(0, filler.stat().st_size - leave_bytes))
    return filler


def _upload(tmp_path: Path) -> Path:
    upload = tmp_path / "full.jsonl"
    upload.write_text(chat_requests("f", REQUESTS))
    return upload


def test_a_full_disk_while_publishing_leaves_no_result_file(small_disk, tmp_path, engine):
    storage = BatchStorage(root=str(small_disk / "root"))
    upload = _upload(tmp_path)
    storage.put_file(upload, "inbox/full.jsonl")
    batch_id = register_batch(storage, "inbox/full.jsonl")
    paths = BatchPaths(batch_id)
    resources = {"storage": storage, "engine": engine}
    with quiet_instance() as instance:
        instance.add_dynamic_partitions("batches", [batch_id])
        ran = dg.materialize(
            batch_assets,
            selection=["batch_input", "batch_inference"],
            partition_key=batch_id,
            instance=instance,
            resources=resources,
        )
        assert ran.success
        filler = _fill(small_disk, leave_bytes=64 << 10)  # batch.json fits, output.jsonl not

        failed = dg.materialize(
            batch_assets,
            selection=[batch_results],
            partition_key=batch_id,
            instance=instance,
            resources=resources,
            raise_on_error=False,
        )
        assert not failed.success
        error = next(e for e in failed.all_events if e.is_step_failure)
        assert "No space left on device" in str(error.step_failure_data.error.to_string())
        outbox = Path(storage.uri) / paths.outbox
        assert sorted(p.name for p in outbox.iterdir()) == ["batch.json"]  # no partial file
        assert read_batch(storage, batch_id).status == "finalizing"

        filler.unlink()
        again = dg.materialize(
            batch_assets,
            selection=[batch_results],
            partition_key=batch_id,
            instance=instance,
            resources=resources,
        )
        assert again.success
    assert read_batch(storage, batch_id).status == "completed"
    output = read_jsonl(Path(storage.uri) / paths.output)
    assert [line["custom_id"] for line in output] == request_ids("f", REQUESTS)


def test_a_full_disk_while_journaling_fails_the_run_and_the_rerun_resumes(
    small_disk, tmp_path, engine, instance
):
    storage = BatchStorage(root=str(small_disk / "root"))
    upload = _upload(tmp_path)
    storage.put_file(upload, "inbox/full.jsonl")
    batch_id = register_batch(storage, "inbox/full.jsonl")
    filler = _fill(small_disk, leave_bytes=96 << 10)  # validation fits, the journal does not

    first = run_file(upload, storage, engine, instance=instance)
    assert first["status"] == "failed"
    assert "No space left on device" in first["errors"]["data"][0]["message"]
    assert storage.exists(BatchPaths(batch_id).manifest)  # validated: the journal hit the wall
    kept = journaled_lines(storage, BatchPaths(batch_id).journal)
    assert 0 < len(kept) < REQUESTS

    filler.unlink()
    second = run_file(upload, storage, engine, instance=instance)
    assert second["status"] == "completed"
    output = read_jsonl(Path(storage.uri) / BatchPaths(batch_id).output)
    assert [line["custom_id"] for line in output] == request_ids("f", REQUESTS)
