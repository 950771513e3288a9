"""Retention through the SDK: expiry times on uploads and on a batch's output and error files,
and what the retention pass deletes with the clock moved ahead (and what it must keep)."""

import io
import time

import openai
import pytest

from batch_assets.cli.runner import cancel_batch
from batch_assets.lifecycle.retention import apply_retention
from resources.layout import BatchPaths
from resources.storage import BatchStorage
from tests.api_server import api_server
from tests.conftest import chat_requests

CHAT = "/v1/chat/completions"
DAY = 24 * 3600


def test_expired_files_and_old_work_areas_go_and_active_batches_stay(tmp_path, engine, instance):
    storage = BatchStorage(root=str(tmp_path / "storage"))
    content = chat_requests("k", 3).encode()
    with api_server(storage) as base_url:
        sdk = openai.OpenAI(base_url=base_url, api_key="unused", max_retries=0)

        def upload(name: str, expires: int | None = None):
            extra = {"expires_after": {"anchor": "created_at", "seconds": expires}}
            return sdk.files.create(
                file=(name, io.BytesIO(content)), purpose="batch", **(extra if expires else {})
            )

        expiring, kept, in_use = upload("e.jsonl", 3600), upload("k.jsonl"), upload("u.jsonl", 3600)
        assert expiring.expires_at == expiring.created_at + 3600 and kept.expires_at is None
        active = sdk.batches.create(input_file_id=in_use.id, endpoint=CHAT, completion_window="24h")
        for bad in ({"anchor": "created_at", "seconds": 60}, {"anchor": "now", "seconds": 3600}):
            with pytest.raises(openai.BadRequestError, match="output_expires_after"):
                sdk.batches.create(
                    input_file_id=kept.id,
                    endpoint=CHAT,
                    completion_window="24h",
                    extra_body={"output_expires_after": bad},
                )
        ended = sdk.batches.create(
            input_file_id=kept.id,
            endpoint=CHAT,
            completion_window="24h",
            extra_body={"output_expires_after": {"anchor": "created_at", "seconds": 7200}},
        )
        sdk.batches.cancel(ended.id)
        cancel_batch(ended.id, storage, engine, instance=instance, wait_s=0)
        ended = sdk.batches.retrieve(ended.id)
        # Nothing ran: its errors have a file (every line batch_cancelled), its output none.
        assert ended.status == "cancelled" and ended.error_file_id and not ended.output_file_id
        assert sdk.files.retrieve(ended.error_file_id).expires_at == ended.created_at + 7200

        # Three hours on: the expired upload and the batch's files are gone; the upload an
        # active batch reads waits for it; the ended batch's work area is kept for a week.
        report = apply_retention(storage, time.time() + 3 * 3600, 7 * DAY)
        gone = {expiring.id, ended.error_file_id}
        assert set(report.files_deleted) == gone
        assert report.files_kept_in_use == [in_use.id]
        assert report.work_areas_deleted == []
        for file_id in gone:
            with pytest.raises(openai.NotFoundError):
                sdk.files.retrieve(file_id)
        assert {f.id for f in sdk.files.list()} == {kept.id, in_use.id}
        assert not storage.exists(BatchPaths(ended.id).errors)
        assert sdk.batches.retrieve(active.id).status == "validating"

        # Eight days on: the ended batch's work area goes (its small notes stay), its record
        # stays; the active batch's work area is untouched.
        report = apply_retention(storage, time.time() + 8 * DAY, 7 * DAY)
        assert report.work_areas_deleted == [ended.id]
        left = [info.key for info in storage.list(BatchPaths(ended.id).work)]
        assert set(left) == {BatchPaths(ended.id).source, BatchPaths(ended.id).output_retention}
        assert sdk.batches.retrieve(ended.id).status == "cancelled"
        assert storage.exists(BatchPaths(active.id).source)
        assert apply_retention(storage, time.time() + 9 * DAY, 7 * DAY).work_areas_deleted == []
