"""A batch run that fails for good marks its batch failed; one with a retry left does not;
a run whose code server is gone is recognised as orphaned."""

import json
import socket

import dagster as dg

from batch_assets.inference.asset import batch_inference
from batch_assets.lifecycle.batches import read_batch, register_batch
from resources.storage import BatchStorage
from sensors.orphaned_runs import code_server_alive
from sensors.run_status import batch_failure_sensor
from tests.conftest import chat_body, quiet_instance, request_line


def _failed_run(
    instance: dg.DagsterInstance, storage: BatchStorage, engine, batch_id: str, tags: dict[str, str]
):
    # batch_inference before batch_input has written the manifest: the step fails.
    result = dg.materialize(
        [batch_inference],
        partition_key=batch_id,
        instance=instance,
        resources={"storage": storage, "engine": engine},
        raise_on_error=False,
        tags=tags,
    )
    assert not result.success
    failure = next(e for e in result.all_events if e.event_type_value == "PIPELINE_FAILURE")
    run = instance.get_run_by_id(result.run_id)
    return dg.build_run_status_sensor_context(
        sensor_name=batch_failure_sensor.name,
        dagster_event=failure,
        dagster_instance=instance,
        dagster_run=run,
        resources={"storage": storage},
    ).for_run_failure()


def test_exhausted_retries_mark_the_batch_failed(tmp_path, engine):
    storage = BatchStorage(root=str(tmp_path))
    storage.write_bytes("inbox/x.jsonl", request_line("a", chat_body()).encode())
    batch_id = register_batch(storage, "inbox/x.jsonl")
    with quiet_instance() as instance:
        instance.add_dynamic_partitions("batches", [batch_id])
        retrying = _failed_run(
            instance,
            storage,
            engine,
            batch_id,
            {"dagster/max_retries": "2", "dagster/retry_number": "1"},
        )
        batch_failure_sensor(retrying)
        assert read_batch(storage, batch_id).status == "validating"

        last = _failed_run(
            instance,
            storage,
            engine,
            batch_id,
            {"dagster/max_retries": "2", "dagster/retry_number": "2"},
        )
        batch_failure_sensor(last)
        batch = read_batch(storage, batch_id).as_dict()
        assert batch["status"] == "failed" and batch["failed_at"]
        error = batch["errors"]["data"][0]
        assert error["code"] == "run_failed"
        assert error["message"].startswith("batch_inference: ")
        assert "manifest.json" in error["message"]


def test_a_code_server_that_refuses_connections_is_gone(tmp_path):
    with socket.socket() as listening:
        listening.bind(("127.0.0.1", 0))
        listening.listen()
        port = listening.getsockname()[1]
        assert code_server_alive(json.dumps({"host": "127.0.0.1", "port": port}))
    assert not code_server_alive(json.dumps({"host": "127.0.0.1", "port": port}))
    assert not code_server_alive(json.dumps({"socket": str(tmp_path / "gone.sock")}))
