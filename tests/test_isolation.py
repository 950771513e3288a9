"""Projects keep tenants apart: one project's runs never read or write another's keys."""

import boto3
import dagster as dg
import pytest

from batch_assets.cli.runner import run_file
from batch_assets.partitions import open_batch
from resources.storage import BatchStorage, UnsafeKeyError
from sensors.inbox import inbox_sensor
from tests.conftest import chat_body, quiet_instance, request_line

LINES = "\n".join(request_line(f"r{i}", chat_body(f"hello {i}")) for i in range(3)) + "\n"


@pytest.fixture
def s3_keys_touched(monkeypatch):
    """The key or prefix of every S3 call made by boto3 sessions created during the test."""
    touched: list[str] = []

    def record(params: dict, **_: object) -> None:
        for name in ("Key", "Prefix", "StartAfter"):
            if name in params:
                touched.append(params[name])
        for item in params.get("Delete", {}).get("Objects", []):
            touched.append(item["Key"])

    class RecordingSession(boto3.session.Session):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            self.events.register("before-parameter-build.s3", record)

    monkeypatch.setattr(boto3.session, "Session", RecordingSession)
    return touched


def test_a_project_run_touches_only_its_own_prefix_on_s3(
    s3_storage, s3_keys_touched, engine, instance, tmp_path
):
    storage = BatchStorage(**{**s3_storage.model_dump(), "projects": ["alpha", "beta"]})
    prefix = storage.backend().prefix
    beta = storage.for_project("beta")
    beta.write_bytes("inbox/secret.jsonl", LINES.encode())
    beta.write_bytes("outbox/batch_x/output.jsonl", b"beta's results\n")
    before = {info.key: info.version for info in beta.list("inbox")}

    upload = tmp_path / "alpha.jsonl"
    upload.write_text(LINES)
    s3_keys_touched.clear()
    batch = run_file(upload, storage, engine, instance=instance, project="alpha")
    touched = list(s3_keys_touched)
    assert batch["status"] == "completed"
    assert touched, "the hook saw no S3 call"
    outside = sorted({key for key in touched if not key.startswith(f"{prefix}/alpha/")})
    assert outside == []
    assert {info.key: info.version for info in beta.list("inbox")} == before
    assert beta.read_bytes("outbox/batch_x/output.jsonl") == b"beta's results\n"


def test_the_inbox_sensor_keys_batches_by_project(tmp_path):
    storage = BatchStorage(root=str(tmp_path / "root"), projects=["alpha", "beta"])
    for project in ("alpha", "beta"):
        storage.for_project(project).write_bytes("inbox/a.jsonl", LINES.encode())
    storage.write_bytes("inbox/not-a-project.jsonl", LINES.encode())  # the root is no tenant
    with quiet_instance() as instance:
        context = dg.build_sensor_context(instance=instance, resources={"storage": storage})
        result = inbox_sensor(context)
    keys = sorted(request.partition_key for request in result.run_requests)
    assert [key.split("/")[0] for key in keys] == ["alpha", "beta"]
    for key in keys:
        tenant, batch_id = open_batch(storage, key)
        assert tenant.exists(f"outbox/{batch_id}/batch.json")
    assert not (tmp_path / "root" / "outbox").exists()


@pytest.mark.parametrize("project", ["gamma", "../beta", "alpha/../beta", "", "Alpha"])
def test_a_project_outside_the_configured_ones_is_refused(tmp_path, project):
    storage = BatchStorage(root=str(tmp_path), projects=["alpha", "beta", "Alpha"])
    with pytest.raises(UnsafeKeyError):
        open_batch(storage, f"{project}/batch_0123")


def test_a_storage_split_into_projects_has_no_root_tenant(tmp_path):
    storage = BatchStorage(root=str(tmp_path), projects=["alpha"])
    with pytest.raises(UnsafeKeyError):
        open_batch(storage, "batch_0123")
