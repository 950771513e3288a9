"""Faults and cancellation under `dagster dev` with the shipped instance config.

A run's process killed with -9 is retried automatically and resumes from the journal; the
whole `dagster dev` process tree killed with -9 and started again finishes the batch; a run
terminated through the GraphQL API, and a queued batch cancelled by a cancel request, both
end ``cancelled`` with nothing lost.
"""

import os
import signal
import time
from collections.abc import Callable
from pathlib import Path

import dagster as dg
import openai.types as oa
import pytest
from dagster_graphql import DagsterGraphQLClient

from resources.layout import BatchPaths
from resources.storage import BatchStorage
from tests.conftest import (
    MODEL_NAME,
    ROOT,
    chat_requests,
    read_jsonl,
    request_ids,
    result_key,
)
from tests.dagster_dev import DagsterDev, wait_for_batches

pytestmark = pytest.mark.slow


def _dev(home: Path, storage: BatchStorage) -> DagsterDev:
    dev = DagsterDev(
        home,
        {
            "BATCH_STORAGE": storage.root,
            "BATCH_MODEL": str(ROOT / "models" / "tiny-chat"),
            "BATCH_SERVED_MODEL_NAME": MODEL_NAME,
        },
    )
    dev.wait_ready()
    return dev


def _upload(storage: BatchStorage, name: str, requests: int, max_tokens: int = 16) -> set[str]:
    body = chat_requests(f"{name}-", requests, max_tokens=max_tokens)
    storage.write_bytes(f"inbox/{name}.jsonl", body.encode())
    return set(request_ids(f"{name}-", requests))


def _journal_segments(root: Path) -> list[Path]:
    return sorted(root.glob("work/*/journal/*.tsv"))


def _journaled(root: Path) -> int:
    return sum(path.read_bytes().count(b"\n") for path in _journal_segments(root))


def _wait(condition: Callable[[], bool], dev: DagsterDev, what: str, timeout_s=600) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert dev.process.poll() is None, dev.tail()
        assert time.monotonic() < deadline, f"timed out waiting for {what}\n{dev.tail()}"
        time.sleep(0.2)


def _pids_writing(path: Path) -> list[int]:
    """The processes holding ``path`` open (the run's process that journals)."""
    pids = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            if any(os.readlink(fd) == str(path) for fd in (proc / "fd").iterdir()):
                pids.append(int(proc.name))
        except OSError:
            continue
    return pids


def test_a_killed_run_retries_and_a_crashed_dagster_dev_finishes_the_batch(tiny_model, tmp_path):
    storage = BatchStorage(root=str(tmp_path / "storage"))
    root, home = Path(storage.uri), tmp_path / "home"
    dev = _dev(home, storage)
    try:
        ids = _upload(storage, "long", 3000, max_tokens=64)  # long enough to strike twice

        # 1. kill -9 the process running the batch: the run fails, a retry resumes.
        _wait(lambda: _journaled(root) >= 300, dev, "300 journaled answers")
        writers = _pids_writing(_journal_segments(root)[0])
        assert writers, "no process holds the journal open"
        for pid in writers:
            os.kill(pid, signal.SIGKILL)
        _wait(lambda: len(_journal_segments(root)) == 2, dev, "the retry's journal segment")
        first_kept = _journal_segments(root)[0].read_bytes().count(b"\n")
        assert first_kept >= 300

        # 2. kill -9 the whole dagster dev tree mid-retry, then start it again.
        _wait(lambda: _journaled(root) >= first_kept + 300, dev, "the retry to make progress")
        dev.crash()
        dev = _dev(home, storage)
        [batch] = wait_for_batches(storage, dev, 1, timeout_s=900)
    finally:
        dev.stop()

    assert oa.Batch.model_validate(batch).status == "completed", batch
    output = read_jsonl(root / result_key(storage, batch["output_file_id"]))
    assert sorted(line["custom_id"] for line in output) == sorted(ids)  # each exactly once
    segments = [
        {int(raw.split(b"\t", 1)[0]) for raw in path.read_bytes().splitlines(keepends=True)}
        for path in _journal_segments(root)
    ]
    assert len(segments) == 3  # the killed run, its retry, the retry after the crash
    assert sum(len(lines) for lines in segments) == 3000  # no answer computed and kept twice
    with dg.DagsterInstance.from_config(str(home)) as instance:
        runs = instance.get_runs(dg.RunsFilter(job_name="batch_job"))
    statuses = sorted(str(run.status.value) for run in runs)
    assert statuses == ["FAILURE", "FAILURE", "SUCCESS"], statuses


def test_a_terminated_run_and_a_cancel_request_cancel_their_batches(tiny_model, tmp_path):
    storage = BatchStorage(root=str(tmp_path / "storage"))
    root = Path(storage.uri)
    dev = _dev(tmp_path / "home", storage)
    try:
        # A long batch runs; a short one uploaded after it waits (one engine run at a time).
        # 128-token answers: minutes of decoding, so the long run is still going after the
        # sensor ticks below (with 16 it finished first on a fast CI machine).
        ids = {"long": _upload(storage, "long", 20_000, max_tokens=128)}
        _wait(lambda: _journaled(root) >= 200, dev, "200 journaled answers")
        ids["short"] = _upload(storage, "short", 50)
        _wait(lambda: len(dev.runs()) == 2, dev, "the short batch's run")
        runs = {r.tags["batch/input"]: r for r in dev.runs()}
        running, queued = runs["inbox/long.jsonl"], runs["inbox/short.jsonl"]
        assert running.status == dg.DagsterRunStatus.STARTED

        # A cancel request for the queued batch: its run is cancelled before it starts.
        storage.write_bytes(f"cancel/{queued.tags['dagster/partition']}", b"")
        _wait(
            lambda: (
                next(r for r in dev.runs() if r.run_id == queued.run_id).status
                == dg.DagsterRunStatus.CANCELED
            ),
            dev,
            "the queued run to be cancelled",
        )
        # Terminating the running batch's run (GraphQL, as the UI does) cancels it.
        DagsterGraphQLClient("127.0.0.1", port_number=dev.port).terminate_run(running.run_id)
        batches = wait_for_batches(storage, dev, 2, timeout_s=600, statuses=("cancelled",))
    finally:
        dev.stop()

    by_input = {b["metadata"]["input"]: b for b in batches}
    for run in (running, queued):
        batch = oa.Batch.model_validate(by_input[run.tags["batch/input"]])
        assert batch.cancelling_at and batch.cancelled_at
        output = read_jsonl(root / BatchPaths(batch.id).output)  # no file id when empty
        errors = read_jsonl(root / result_key(storage, batch.error_file_id))
        assert {e["error"]["code"] for e in errors} <= {"batch_cancelled"}
        name = run.tags["batch/input"].removeprefix("inbox/").removesuffix(".jsonl")
        assert sorted(line["custom_id"] for line in output + errors) == sorted(ids[name])
        assert batch.request_counts.completed == len(output)
    assert 200 <= by_input["inbox/long.jsonl"]["request_counts"]["completed"] < 20_000
    assert by_input["inbox/short.jsonl"]["request_counts"]["completed"] == 0
