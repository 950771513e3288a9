"""The API sensor starts batches first in, first out, whatever their random ids."""

import dagster as dg

from batch_assets.lifecycle.batches import create_api_batch
from batch_assets.lifecycle.files import FileRecord, new_file_id, write_file_record
from resources.layout import FilePaths
from resources.storage import BatchStorage
from sensors.api_batches import api_batch_sensor
from tests.conftest import chat_requests

CHAT = "/v1/chat/completions"


def test_batches_created_in_one_second_start_in_the_order_they_were_created(tmp_path):
    storage = BatchStorage(root=str(tmp_path / "storage"), projects=["team-a", "team-b"])
    created = []
    for n in range(12):  # within a second or two: created_at alone cannot order them
        project = ("team-a", "team-b")[n % 2]
        tenant = storage.for_project(project)
        file_id = new_file_id()
        tenant.write_bytes(FilePaths(file_id).content, chat_requests(f"b{n}", 1).encode())
        record = FileRecord(
            id=file_id,
            bytes=1,
            created_at=0,
            filename="x.jsonl",
            purpose="batch",
            content=FilePaths(file_id).content,
        )
        write_file_record(tenant, record)
        created.append(f"{project}/{create_api_batch(tenant, record, CHAT, None).id}")
    with dg.DagsterInstance.ephemeral() as instance:
        context = dg.build_sensor_context(instance=instance, resources={"storage": storage})
        result = api_batch_sensor(context)
    assert [request.partition_key for request in result.run_requests] == created
