"""The overnight slot's end, the completion window's expiry, and the preview, on the real
engine: nothing finished is lost and nothing is computed twice."""

import time
from pathlib import Path

import dagster as dg
import openai.types as oa

from batch_assets.cli.runner import run_file
from batch_assets.jobs import batch_assets, preview_job
from batch_assets.lifecycle.batches import read_batch, register_batch, update_batch
from resources.engines.vllm_engine import VLLMEngine
from resources.journal import read_journal
from resources.layout import BatchPaths
from resources.storage import BatchStorage
from tests.conftest import chat_body, quiet_instance, read_jsonl, request_line


def _inference_metadata(instance: dg.DagsterInstance) -> dict:
    event = instance.get_latest_materialization_event(dg.AssetKey("batch_inference"))
    return {k: v.value for k, v in event.asset_materialization.metadata.items()}


def test_the_slot_end_keeps_what_finished_and_the_next_slot_finishes(tmp_path, engine):
    # A small window: at the slot's end only these few queued requests still finish.
    # 48-token answers: a 2 s slot holds about an eighth of the batch here, so a faster
    # machine still cannot finish it all inside the slot.
    engine = VLLMEngine(**{**engine.model_dump(), "max_pending_requests": 32})
    engine.load()  # loaded before the slot starts, as a warm worker would be
    upload = tmp_path / "night.jsonl"
    upload.write_text(
        "\n".join(
            request_line(f"n{i}", chat_body(f"night {i}", max_tokens=48, ignore_eos=True))
            for i in range(3000)
        )
        + "\n"
    )
    storage = BatchStorage(root=str(tmp_path / "storage"))
    with quiet_instance() as instance:
        slot_end = time.time() + 2
        first = run_file(
            upload, storage, engine, instance=instance, tags={"batch/slot_end": f"{slot_end:.3f}"}
        )
        paths = BatchPaths(first["id"])
        assert first["status"] == "in_progress"  # not published: it waits for the next slot
        assert not storage.exists(paths.output)
        kept = len(read_journal(storage, paths.journal))
        assert 0 < kept < 3000
        assert instance.get_latest_materialization_event(dg.AssetKey("batch_inference")) is None

        second = run_file(upload, storage, engine, instance=instance)
        assert second["status"] == "completed"
        assert _inference_metadata(instance)["requests_done_before"] == kept
        output = read_jsonl(Path(storage.uri) / paths.output)
        assert [line["custom_id"] for line in output] == [f"n{i}" for i in range(3000)]


def test_an_expired_batch_keeps_finished_lines_and_expires_the_rest(tmp_path, engine):
    storage = BatchStorage(root=str(tmp_path / "storage"))
    content = (
        "\n".join([request_line("a", chat_body()), "not json", request_line("b", chat_body())])
        + "\n"
    )
    storage.write_bytes("inbox/late.jsonl", content.encode())
    batch_id = register_batch(storage, "inbox/late.jsonl")
    update_batch(storage, batch_id, expires_at=int(time.time()) - 1)
    with quiet_instance() as instance:
        batch = run_file(Path(storage.uri) / "inbox/late.jsonl", storage, engine, instance=instance)
    oa.Batch.model_validate(batch)
    assert batch["status"] == "expired" and batch["expired_at"]
    assert batch["request_counts"] == {"total": 3, "completed": 0, "failed": 3}
    errors = read_jsonl(Path(storage.uri) / BatchPaths(batch_id).errors)
    assert [(e["custom_id"], e["error"]["code"]) for e in errors] == [
        ("a", "batch_expired"),
        (None, "invalid_json_line"),
        ("b", "batch_expired"),
    ]
    assert errors[0]["response"] is None and errors[0]["error"]["line"] == 1


def test_the_preview_answers_the_first_requests_and_the_night_run_reuses_them(tmp_path, engine):
    storage = BatchStorage(root=str(tmp_path / "storage"))
    content = (
        "\n".join(["{oops"] + [request_line(f"p{i}", chat_body(f"preview {i}")) for i in range(25)])
        + "\n"
    )
    storage.write_bytes("inbox/overnight/big.jsonl", content.encode())
    batch_id = register_batch(storage, "inbox/overnight/big.jsonl")
    with quiet_instance() as instance:
        instance.add_dynamic_partitions("batches", [batch_id])
        result = dg.materialize(
            batch_assets,
            selection=preview_job.selection,
            partition_key=batch_id,
            instance=instance,
            resources={"storage": storage, "engine": engine},
        )
        assert result.success
        preview = read_jsonl(Path(storage.uri) / f"outbox/{batch_id}/preview.jsonl")
        assert [line["custom_id"] for line in preview] == [f"p{i}" for i in range(10)]
        for line in preview:
            oa.chat.ChatCompletion.model_validate(line["response"]["body"])
        assert read_batch(storage, batch_id).status == "validating"  # the night runs it

        batch = run_file(
            Path(storage.uri) / "inbox/overnight/big.jsonl", storage, engine, instance=instance
        )
        assert batch["status"] == "completed"
        assert _inference_metadata(instance)["requests_done_before"] == 10
        assert _inference_metadata(instance)["requests_done_this_run"] == 15
