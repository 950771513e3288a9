"""A rerun of a partition resumes from the journal: nothing lost, nothing computed twice."""

import json
from pathlib import Path

import dagster as dg

from batch_assets.cli.runner import run_file
from resources.layout import BatchPaths
from tests.conftest import chat_body, read_jsonl, request_line, store_status


def _texts(lines: list[dict]) -> dict[str, str]:
    return {
        line["custom_id"]: line["response"]["body"]["choices"][0]["message"]["content"]
        for line in lines
    }


def test_rerun_after_a_crash_runs_only_what_the_journal_lacks(run_batch, engine, instance):
    content = "\n".join(
        request_line(f"r{i:02d}", chat_body(f"explain {i} rivers")) for i in range(40)
    )
    first = run_batch(content)
    batch_id = first.batch["id"]
    paths = BatchPaths(batch_id)
    root = Path(first.storage.uri)

    # Simulate a kill mid-inference: 15 records survive, the 16th is torn mid-write, and the
    # result files were never published.
    segments = sorted((root / paths.journal).glob("*.tsv"))
    assert len(segments) == 1
    records = segments[0].read_text().splitlines(keepends=True)
    assert len(records) == 40
    segments[0].write_text("".join(records[:15]) + records[15][:30])
    (root / paths.output).unlink()
    (root / paths.errors).unlink()
    store_status(first.storage, batch_id, "in_progress")  # as the crash left it

    upload = root.parent / "upload" / "batch.jsonl"
    batch = run_file(upload, first.storage, engine, instance=instance)
    assert batch["id"] == batch_id
    assert batch["status"] == "completed"
    event = instance.get_latest_materialization_event(dg.AssetKey("batch_inference"))
    metadata = event.asset_materialization.metadata
    assert metadata["requests_done_before"].value == 15
    assert metadata["requests_done_this_run"].value == 25

    second = read_jsonl(root / paths.output)
    assert [line["custom_id"] for line in second] == [f"r{i:02d}" for i in range(40)]
    assert _texts(second) == _texts(first.output)  # greedy: the same answers
    assert [line["id"] for line in second] == [line["id"] for line in first.output]


def test_a_completed_batch_is_not_computed_again(run_batch, engine, instance):
    first = run_batch(request_line("a", chat_body()))
    root = Path(first.storage.uri)
    paths = BatchPaths(first.batch["id"])
    before = sorted(p.name for p in (root / paths.journal).glob("*.tsv"))
    runs_before = len(instance.get_run_records())
    again = run_file(
        root.parent / "upload" / "batch.jsonl", first.storage, engine, instance=instance
    )
    assert again["id"] == first.batch["id"] and again["status"] == "completed"
    assert len(instance.get_run_records()) == runs_before
    assert sorted(p.name for p in (root / paths.journal).glob("*.tsv")) == before
    assert json.loads((root / paths.batch_json).read_text())["status"] == "completed"


def test_a_new_upload_under_the_same_name_is_a_new_batch(run_batch):
    first = run_batch(request_line("a", chat_body("one")))
    second = run_batch(request_line("a", chat_body("two")) + "\n")
    assert first.batch["id"] != second.batch["id"]
    assert second.batch["status"] == "completed"
