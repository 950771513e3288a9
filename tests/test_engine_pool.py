"""Pool mode on real vLLM OpenAI servers (vLLM's own entry point, CPU, the generated model)."""

import threading
import time
from pathlib import Path

import dagster as dg
import openai.types as oa
import openai.types.chat as oc
import pytest

from batch_assets.cli.runner import run_file
from batch_assets.inference.asset import OVERNIGHT_PRIORITY
from batch_assets.lifecycle.batches import register_batch
from batch_assets.lifecycle.cancellation import request_cancel
from resources.engines.pool import VLLMServerPool
from resources.engines.vllm_engine import VLLMEngine
from resources.journal import journaled_lines
from resources.layout import JOURNAL_SEGMENT_SUFFIX, SLOT_END_TAG, SLOT_TAG, BatchPaths
from resources.storage import BatchStorage
from tests.conftest import (
    MODEL_NAME,
    chat_body,
    chat_requests,
    quiet_instance,
    read_jsonl,
    request_ids,
    request_line,
    wait_for,
)
from tests.test_run_batch_parity import _requests as parity_requests
from tests.vllm_servers import VLLMServer, failing_server, start_all

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def servers(tiny_model, tmp_path_factory):
    """Two servers, started together. The pool's retries, 5xx accounting, back-off and model
    checks are tests/test_server_loop.py's, on small servers that fail exactly as told."""
    logs = tmp_path_factory.mktemp("vllm-servers")
    pair = [VLLMServer(tiny_model, logs), VLLMServer(tiny_model, logs)]
    start_all(pair)
    yield pair
    for server in pair:
        server.stop()


@pytest.fixture
def up(servers) -> list[VLLMServer]:
    start_all(servers)
    return servers


def _pool(engine: VLLMEngine, urls: list[str], **fields) -> VLLMServerPool:
    return VLLMServerPool(
        model=engine.model,
        served_model_name=MODEL_NAME,
        engine_urls=urls,
        server_down_timeout_s=5,
        **fields,
    )


def _journal_records(storage: BatchStorage, batch_id: str) -> list[int]:
    """The line of every record in every journal segment: a duplicate shows up twice."""
    lines = []
    for info in storage.list(BatchPaths(batch_id).journal):
        if info.key.endswith(JOURNAL_SEGMENT_SUFFIX):
            text = storage.read_bytes(info.key).decode()
            lines += [int(raw.split("\t", 1)[0]) for raw in text.splitlines() if raw]
    return lines


def _published(storage: BatchStorage, batch_id: str) -> tuple[list[dict], list[dict]]:
    root, paths = Path(storage.uri), BatchPaths(batch_id)
    errors = read_jsonl(root / paths.errors) if storage.exists(paths.errors) else []
    return read_jsonl(root / paths.output), errors


def _run_in_thread(upload: Path, storage: BatchStorage, engine: VLLMEngine, **kwargs):
    result: dict = {}
    worker = threading.Thread(
        target=lambda: result.update(run_file(upload, storage, engine, **kwargs)), daemon=True
    )
    worker.start()
    wait_for(lambda: storage.exists(f"inbox/{upload.name}"), 60, "the upload")
    return worker, result, register_batch(storage, f"inbox/{upload.name}")


def test_greedy_answers_through_two_servers_equal_the_in_process_answers(
    run_batch, engine, up, tmp_path
):
    too_long = chat_body("too long", max_tokens=100_000)  # past the context: a 400 either way
    content = "\n".join([*parity_requests(), request_line("too-long", too_long)]) + "\n"
    served_before = [s.metric("vllm:request_success_total") for s in up]
    ours = run_batch(content, name="local.jsonl")
    pooled = run_batch(
        content, name="pooled.jsonl", engine_override=_pool(engine, [s.url for s in up])
    )

    assert pooled.batch["status"] == "completed"
    assert (
        pooled.batch["request_counts"]
        == ours.batch["request_counts"]
        == {
            "total": 41,
            "completed": 40,
            "failed": 1,
        }
    )
    local, remote = ours.by_id(), pooled.by_id()
    assert local.keys() == remote.keys()
    for custom_id, line in remote.items():
        response = line["response"]
        assert response["status_code"] == local[custom_id]["response"]["status_code"], custom_id
        if response["status_code"] != 200:
            assert "max_tokens" in response["body"]["error"]["message"], response
            continue
        body = oc.ChatCompletion.model_validate(response["body"], strict=True)
        expected = oc.ChatCompletion.model_validate(local[custom_id]["response"]["body"])
        assert body.model == MODEL_NAME
        assert body.choices[0].message.content == expected.choices[0].message.content, custom_id
        assert body.choices[0].finish_reason == expected.choices[0].finish_reason
        assert body.usage and expected.usage
        assert body.usage.prompt_tokens == expected.usage.prompt_tokens
        assert body.usage.completion_tokens == expected.usage.completion_tokens
    for tokens in ("input_tokens", "output_tokens", "total_tokens"):
        assert pooled.batch["usage"][tokens] == ours.batch["usage"][tokens]
    # Both servers took a share: least-outstanding-requests balancing.
    served = [
        s.metric("vllm:request_success_total") - b for s, b in zip(up, served_before, strict=True)
    ]
    assert all(n > 0 for n in served) and sum(n for n in served) >= 40, served


def test_a_server_killed_mid_batch_loses_nothing_and_duplicates_nothing(
    engine, up, tmp_path, instance
):
    storage = BatchStorage(root=str(tmp_path / "storage"))
    upload = tmp_path / "kill.jsonl"
    upload.write_text(chat_requests("k", 1500, max_tokens=48))
    worker, result, batch_id = _run_in_thread(
        upload, storage, _pool(engine, [s.url for s in up]), instance=instance
    )
    journal = BatchPaths(batch_id).journal
    wait_for(lambda: len(journaled_lines(storage, journal)) >= 100, 300, "100 answers")
    up[1].kill()
    worker.join(timeout=300)
    assert not worker.is_alive()

    assert result["status"] == "completed", result
    assert result["request_counts"] == {"total": 1500, "completed": 1500, "failed": 0}
    output, errors = _published(storage, batch_id)
    assert errors == []
    assert [line["custom_id"] for line in output] == request_ids("k", 1500)
    records = _journal_records(storage, batch_id)
    assert len(records) == len(set(records)) == 1500  # each answer journaled once


def test_all_servers_down_then_back_resumes_from_the_journal(engine, up, tmp_path, instance):
    storage = BatchStorage(root=str(tmp_path / "storage"))
    upload = tmp_path / "down.jsonl"
    upload.write_text(chat_requests("d", 1500, max_tokens=48))
    pool = _pool(engine, [s.url for s in up])
    worker, result, batch_id = _run_in_thread(upload, storage, pool, instance=instance)
    journal = BatchPaths(batch_id).journal
    wait_for(lambda: len(journaled_lines(storage, journal)) >= 100, 300, "100 answers")
    for server in up:
        server.kill()
    worker.join(timeout=300)
    assert not worker.is_alive()
    assert result["status"] == "failed", result
    assert "no vLLM server answered" in result["errors"]["data"][0]["message"]
    kept = len(journaled_lines(storage, journal))
    assert 100 <= kept < 1500

    start_all(up)
    again = run_file(upload, storage, pool, instance=instance)
    assert again["status"] == "completed", again
    event = instance.get_latest_materialization_event(dg.AssetKey("batch_inference"))
    metadata = {k: v.value for k, v in event.asset_materialization.metadata.items()}
    assert metadata["requests_done_before"] == kept
    assert metadata["engine_load_s"] == 0
    output, _ = _published(storage, batch_id)
    assert [line["custom_id"] for line in output] == request_ids("d", 1500)
    records = _journal_records(storage, batch_id)
    assert len(records) == len(set(records)) == 1500


def test_cancel_stops_a_pool_run_within_seconds_and_the_servers_drop_its_requests(
    engine, up, tmp_path, instance
):
    storage = BatchStorage(root=str(tmp_path / "storage"))
    upload = tmp_path / "cancel.jsonl"
    upload.write_text(chat_requests("c", 3000, max_tokens=128))
    worker, result, batch_id = _run_in_thread(
        upload, storage, _pool(engine, [s.url for s in up]), instance=instance
    )
    journal = BatchPaths(batch_id).journal
    wait_for(lambda: len(journaled_lines(storage, journal)) >= 50, 300, "50 answers")
    asked = time.monotonic()
    assert request_cancel(storage, batch_id) == "cancelling"
    worker.join(timeout=120)
    assert not worker.is_alive()
    assert time.monotonic() - asked < 30  # the loop polls every 2 s; publishing takes the rest

    batch = oa.Batch.model_validate(result)
    assert batch.status == "cancelled"
    output, errors = _published(storage, batch_id)
    done = len(journaled_lines(storage, journal))
    assert 50 <= len(output) == done < 3000
    assert sorted(line["custom_id"] for line in output + errors) == request_ids("c", 3000)
    # The servers aborted what was in flight: nothing of the batch keeps their GPUs busy.
    wait_for(
        lambda: sum(s.metric("vllm:num_requests_running") for s in up) == 0, 30, "idle servers"
    )


def test_the_slot_end_stops_a_pool_run_and_the_next_slot_finishes(engine, up, tmp_path):
    storage = BatchStorage(root=str(tmp_path / "storage"))
    upload = tmp_path / "night.jsonl"
    upload.write_text(chat_requests("n", 1000, max_tokens=48))
    # A narrow window in the slot, so that a 2 s slot holds a small share of the batch; the
    # next slot runs with the default one. (The loop's deadline logic itself is
    # tests/test_server_loop.py's; this is the assets' slot handling on real servers.)
    narrow = _pool(engine, [s.url for s in up], server_window=4)
    with quiet_instance() as instance:
        slot_end = time.time() + 2
        first = run_file(
            upload, storage, narrow, instance=instance, tags={"batch/slot_end": f"{slot_end:.3f}"}
        )
        stopped_s = time.time() - slot_end
        assert first["status"] == "in_progress"  # not published: it waits for the next slot
        assert stopped_s < 30, stopped_s
        paths = BatchPaths(first["id"])
        kept = len(journaled_lines(storage, paths.journal))
        assert 0 < kept < 1000
        second = run_file(upload, storage, _pool(engine, [s.url for s in up]), instance=instance)
        assert second["status"] == "completed"
        output, _ = _published(storage, first["id"])
        assert [line["custom_id"] for line in output] == request_ids("n", 1000)
        assert len(_journal_records(storage, first["id"])) == 1000


def test_overnight_pool_runs_yield_priority_when_the_servers_schedule_by_it(
    engine, up, tmp_path, instance
):
    storage = BatchStorage(root=str(tmp_path / "storage"))
    night, day = tmp_path / "night.jsonl", tmp_path / "day.jsonl"
    night.write_text(chat_requests("n", 2, max_tokens=4))
    day.write_text(chat_requests("d", 2, max_tokens=4))
    slot = {SLOT_TAG: "overnight", SLOT_END_TAG: f"{time.time() + 3600:.0f}"}
    # A stand-in that records the bodies it gets (and answers 503): the test is about what
    # this project sends, which a real server does not report.
    with failing_server(up[0]) as recorder:
        pool = _pool(engine, [recorder.url], priority_scheduling=True)
        run_file(night, storage, pool, instance=instance, tags=slot)
        run_file(day, storage, pool, instance=instance)
        plain = _pool(engine, [recorder.url])
        run_file(
            tmp_path / "day.jsonl",
            BatchStorage(root=str(tmp_path / "other")),
            plain,
            instance=instance,
        )
    sent = {}
    for body in recorder.bodies:
        sent.setdefault(body["messages"][0]["content"].split()[1][0], set()).add(
            body.get("priority")
        )
    # vLLM's priority: lower goes first. Without priority_scheduling none is sent (an fcfs
    # server refuses a non-zero one).
    assert sent == {"n": {OVERNIGHT_PRIORITY}, "d": {0, None}}
