"""The Files and Batches HTTP API, driven by the official `openai` SDK over real HTTP.

These need no engine and no Dagster: they check what the API itself answers (the SDK's types,
OpenAI's error envelope, keys and projects, uploads); the end-to-end tests with `dagster dev`
are in test_api_dagster.py.
"""

import asyncio
import io
import socket
import time
import urllib.parse

import httpx
import openai
import pytest
from openai.types import Batch, FileObject

from batch_api.keys import KeyRing, digest
from batch_api.server import ServeRefused, check_settings
from batch_assets.input.validation import Limits, save_manifest, validate_input
from batch_assets.lifecycle.batches import read_source, register_batch, update_batch
from batch_assets.lifecycle.files import read_file_record, record_batch_file
from resources.engines.base import ServedNames
from resources.layout import FILES, BatchPaths, FilePaths
from resources.storage import BatchStorage
from tests.api_server import api_server
from tests.conftest import MODEL_NAME, chat_requests, drive

CHAT = "/v1/chat/completions"
JSON = {"content-type": "application/json"}


def client(base_url: str, key: str = "unused", **kwargs) -> openai.OpenAI:
    return openai.OpenAI(
        base_url=base_url,
        api_key=key,
        max_retries=0,
        _strict_response_validation=True,
        **kwargs,
    )


def upload(sdk: openai.OpenAI, content: bytes, name: str = "requests.jsonl") -> FileObject:
    return sdk.files.create(file=(name, io.BytesIO(content)), purpose="batch")


@pytest.fixture
def storage(tmp_path) -> BatchStorage:
    return BatchStorage(root=str(tmp_path / "storage"))


@pytest.fixture
def api(storage):
    with api_server(storage) as base_url:
        yield base_url


def _stored_keys(storage: BatchStorage) -> list[str]:
    return [info.key for info in storage.list(FILES)]


def test_upload_list_retrieve_and_download_with_the_sdk(api, storage):
    sdk = client(api)
    content = chat_requests("u", 5).encode()
    created = upload(sdk, content)
    assert created.id.startswith("file-") and created.status == "processed"
    assert (created.bytes, created.filename, created.purpose) == (
        len(content),
        "requests.jsonl",
        "batch",
    )
    assert sdk.files.retrieve(created.id) == created
    assert [f.id for f in sdk.files.list()] == [created.id]
    assert sdk.files.content(created.id).read() == content
    record = read_file_record(storage, created.id)
    assert record is not None and record.content == FilePaths(created.id).content


def test_an_upload_can_expire_as_openai_allows(api):
    sdk = client(api)
    kept = sdk.files.create(
        file=("e.jsonl", b"{}\n"),
        purpose="batch",
        expires_after={"anchor": "created_at", "seconds": 3600},
    )
    assert kept.expires_at == kept.created_at + 3600
    with pytest.raises(openai.BadRequestError) as raised:
        sdk.files.create(
            file=("e.jsonl", b"{}\n"),
            purpose="batch",
            expires_after={"anchor": "created_at", "seconds": 60},
        )
    assert raised.value.body["param"] == "expires_after[seconds]"
    assert [f.id for f in sdk.files.list()] == [kept.id]


def test_a_batch_is_created_over_the_upload_without_a_copy(api, storage):
    sdk = client(api)
    file = upload(sdk, chat_requests("b", 3).encode())
    batch = sdk.batches.create(
        input_file_id=file.id, endpoint=CHAT, completion_window="24h", metadata={"team": "ml"}
    )
    assert batch.id.startswith("batch_") and batch.status == "validating"
    assert (batch.input_file_id, batch.endpoint, batch.metadata) == (file.id, CHAT, {"team": "ml"})
    assert sdk.batches.retrieve(batch.id) == batch
    assert [b.id for b in sdk.batches.list()] == [batch.id]
    # The batch reads the upload where it lies: one copy of the bytes in the storage.
    contents = [key for key in _stored_keys(storage) if key.endswith("/content")]
    assert contents == [FilePaths(file.id).content]
    # Without metadata, {} as OpenAI answers (instructor's list_batches refuses null), also
    # over raw HTTP, for records stored before with null.
    plain = sdk.batches.create(input_file_id=file.id, endpoint=CHAT, completion_window="24h")
    assert plain.metadata == {}
    update_batch(storage, plain.id, metadata=None)
    with httpx.Client(base_url=api) as http:
        assert http.get(f"/batches/{plain.id}").json()["metadata"] == {}


def test_every_answer_has_a_request_id_and_4xx_are_not_retried(api):
    with httpx.Client(base_url=api) as http:
        ok = http.get("/files")
        missing = http.get("/batches/batch_nope")
    assert ok.status_code == 200 and ok.headers["x-request-id"].startswith("req_")
    assert missing.status_code == 404 and missing.headers["x-request-id"]
    assert missing.headers["x-should-retry"] == "false"
    error = missing.json()["error"]
    assert set(error) == {"message", "type", "param", "code"} and isinstance(error["code"], str)


@pytest.mark.parametrize(
    ("fields", "param"),
    [
        ({"endpoint": "/v1/moderations"}, "endpoint"),
        ({"completion_window": "48h"}, "completion_window"),
        ({"metadata": {f"k{i}": "v" for i in range(17)}}, "metadata"),
        ({"metadata": {"k" * 65: "v"}}, "metadata"),
        ({"metadata": {"k": "v" * 513}}, "metadata"),
    ],
)
def test_bad_batch_fields_are_400_naming_the_field(api, fields, param):
    sdk = client(api)
    file = upload(sdk, chat_requests("x", 1).encode())
    params = {"input_file_id": file.id, "endpoint": CHAT, "completion_window": "24h", **fields}
    with pytest.raises(openai.BadRequestError) as raised:
        sdk.batches.create(**params)
    assert raised.value.status_code == 400
    assert raised.value.body["param"] == param
    assert raised.value.response.headers["x-should-retry"] == "false"


def test_a_missing_field_is_400_not_422(api):
    with httpx.Client(base_url=api) as http:
        answer = http.post("/batches", json={"endpoint": CHAT, "completion_window": "24h"})
    assert answer.status_code == 400
    assert answer.json()["error"]["param"] == "input_file_id"


def test_a_malformed_json_body_names_no_field(api):
    with httpx.Client(base_url=api) as http:
        answer = http.post("/batches", content=b'{"input_file_id": ', headers=JSON)
        wrong_method = http.put("/files")
    assert answer.status_code == 400
    error = answer.json()["error"]
    assert error["param"] is None and "could not parse the JSON body" in error["message"]
    assert wrong_method.status_code == 405
    assert set(wrong_method.headers["allow"].replace(" ", "").split(",")) == {"GET", "POST"}


def test_wait_for_processing_returns_at_once_and_an_invalid_file_is_an_error(api):
    """The documented flow "upload, wait, create": a batch upload is processed (or an error,
    with its reason) once its lines have been checked as JSONL."""
    sdk = client(api)
    good = upload(sdk, chat_requests("w", 3).encode())
    waited = sdk.files.wait_for_processing(good.id, poll_interval=0.1, max_wait_seconds=10)
    assert waited.status == "processed" and waited.status_details is None
    some_bad = upload(sdk, chat_requests("w", 2).encode() + b"[1, 2]\n\n{broken\n")
    assert some_bad.status == "processed"
    assert some_bad.status_details is not None
    assert "2 of 4 lines are not JSON objects (first: line 3" in some_bad.status_details
    for content, reason in (
        (b"not json\n{\n", "none of the 2 lines is a JSON object; first: line 1: not valid JSON"),
        (b"\n  \n", "the file has no request lines"),
        (b"", "the file has no request lines"),
    ):
        bad = upload(sdk, content, name="bad.jsonl")
        waited = sdk.files.wait_for_processing(bad.id, poll_interval=0.1, max_wait_seconds=10)
        assert waited.status == "error"
        assert waited.status_details is not None and waited.status_details.startswith(reason)


def test_a_malformed_multipart_body_or_a_field_given_twice_is_400_and_leaves_nothing(api, storage):
    form = {"content-type": "multipart/form-data; boundary=b"}
    garbage = b"--b\r\n\xc3\x99<]\xf3\xbb--b--\r\n"
    twice = (
        b'--b\r\nContent-Disposition: form-data; name="purpose"\r\n\r\nbatch\r\n'
        b'--b\r\nContent-Disposition: form-data; name="purpose"\r\n\r\nbatch\r\n'
        b'--b\r\nContent-Disposition: form-data; name="file"; filename="a.jsonl"\r\n\r\n'
        b"{}\n\r\n--b--\r\n"
    )
    with httpx.Client(base_url=api) as http:
        answers = [http.post("/files", content=body, headers=form) for body in (garbage, twice)]
    for answer in answers:
        assert answer.status_code == 400, answer.text
        assert set(answer.json()["error"]) == {"message", "type", "param", "code"}
    assert "malformed" in answers[0].json()["error"]["message"]
    assert answers[1].json()["error"]["param"] == "purpose"
    assert _stored_keys(storage) == []


def test_file_names_with_quotes_or_only_an_rfc5987_name_are_kept(api):
    sdk = client(api)
    assert upload(sdk, b"{}\n", name='say "hi".jsonl').filename == 'say "hi".jsonl'
    disposition = "form-data; name=\"file\"; filename*=UTF-8''na%C3%AFve%20r%C3%A9sum%C3%A9.jsonl"
    body = (
        b'--b\r\nContent-Disposition: form-data; name="purpose"\r\n\r\nbatch\r\n'
        + b"--b\r\nContent-Disposition: "
        + disposition.encode()
        + b"\r\n\r\n{}\n\r\n--b--\r\n"
    )
    with httpx.Client(base_url=api) as http:
        answer = http.post(
            "/files", content=body, headers={"content-type": "multipart/form-data; boundary=b"}
        )
    assert answer.status_code == 200, answer.text
    assert answer.json()["filename"] == "naïve résumé.jsonl"


def test_unknown_or_wrong_purpose_input_files(api, storage):
    sdk = client(api)
    with pytest.raises(openai.NotFoundError) as missing:
        sdk.batches.create(input_file_id="file-nope", endpoint=CHAT, completion_window="24h")
    assert missing.value.body["param"] == "input_file_id"
    # A batch's own output file (purpose batch_output) is not an input.
    storage.write_bytes("inbox/done.jsonl", chat_requests("d", 1).encode())
    batch_id = register_batch(storage, "inbox/done.jsonl")
    storage.write_bytes(f"outbox/{batch_id}/output.jsonl", b"")
    key = f"outbox/{batch_id}/output.jsonl"
    output_id = record_batch_file(storage, batch_id, "output", key, int(time.time()))
    with pytest.raises(openai.BadRequestError) as raised:
        sdk.batches.create(input_file_id=output_id, endpoint=CHAT, completion_window="24h")
    assert raised.value.body["param"] == "input_file_id"


def test_uploads_of_another_purpose_or_without_a_file_are_refused_and_leave_nothing(api, storage):
    sdk = client(api)
    with pytest.raises(openai.BadRequestError) as raised:
        sdk.files.create(file=("x.jsonl", b"{}\n"), purpose="fine-tune")
    assert raised.value.body["param"] == "purpose"
    with httpx.Client(base_url=api) as http:
        answer = http.post("/files", data={"purpose": "batch"}, files={"other": ("a", b"x")})
    assert answer.status_code == 400 and answer.json()["error"]["param"] == "file"
    assert _stored_keys(storage) == []


def test_an_upload_over_the_limit_is_413_and_leaves_nothing(storage):
    with api_server(storage, max_file_bytes=1 << 20) as base_url:
        sdk = client(base_url)
        with pytest.raises(openai.APIStatusError) as raised:
            upload(sdk, b"x" * (3 << 20))
        assert raised.value.status_code == 413
        assert raised.value.body["code"] == "file_too_large"
        assert sdk.files.list().data == []
    assert _stored_keys(storage) == []
    spool = storage.local_path(".tmp")
    assert spool is None or not spool.exists() or list(spool.iterdir()) == []


def test_a_file_name_with_folders_or_control_characters_is_stored_safely(api, storage):
    sdk = client(api)
    created = upload(sdk, b'{"a": 1}\n', name="../../etc/passwd.jsonl")
    assert created.filename == "passwd.jsonl"
    # Raw bytes in the header (the SDK would percent-encode them): control characters go.
    boundary = "rawname"
    body = (
        f'--{boundary}\r\nContent-Disposition: form-data; name="purpose"\r\n\r\nbatch\r\n'
        f'--{boundary}\r\nContent-Disposition: form-data; name="file"; '
        'filename="..\\..\\x\x01y\x1bz.jsonl"\r\n\r\n{}\n\r\n'
        f"--{boundary}--\r\n"
    ).encode()
    with httpx.Client(base_url=api) as http:
        raw = http.post(
            "/files",
            content=body,
            headers={"content-type": f"multipart/form-data; boundary={boundary}"},
        ).json()
    assert raw["filename"] == "xyz.jsonl"
    ids = [created.id, raw["id"]]
    expected = sorted(key for i in ids for key in (FilePaths(i).content, FilePaths(i).record))
    assert sorted(_stored_keys(storage)) == expected
    assert not (storage.local_path("etc") or storage.local_path("inbox")).exists()


def test_an_upload_cut_off_mid_stream_leaves_no_file(api, storage):
    url = urllib.parse.urlsplit(api)
    boundary = "cutoffboundary"
    head = (
        f'--{boundary}\r\nContent-Disposition: form-data; name="purpose"\r\n\r\nbatch\r\n'
        f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="a.jsonl"\r\n'
        "Content-Type: application/octet-stream\r\n\r\n"
    ).encode()
    body = head + b"x" * 200_000
    request = (
        f"POST /v1/files HTTP/1.1\r\nHost: {url.hostname}\r\n"
        f"Content-Type: multipart/form-data; boundary={boundary}\r\n"
        f"Content-Length: {len(body) + 10_000_000}\r\n\r\n"
    ).encode()
    with socket.create_connection((url.hostname, url.port)) as sock:
        sock.sendall(request + body)  # far less than the announced length, then gone
    sdk = client(api)
    assert sdk.files.list().data == []
    # And a body that ends without its closing boundary is refused the same way.
    with httpx.Client(base_url=api) as http:
        answer = http.post(
            "/files",
            content=head + b"y" * 1000,
            headers={"content-type": f"multipart/form-data; boundary={boundary}"},
        )
    assert answer.status_code == 400
    assert sdk.files.list().data == []
    assert _stored_keys(storage) == []


def test_lists_page_with_the_sdk_newest_first(api, storage):
    sdk = client(api)
    files = [upload(sdk, chat_requests(f"p{i}", 1).encode(), f"f{i}.jsonl") for i in range(5)]
    batches = [
        sdk.batches.create(input_file_id=f.id, endpoint=CHAT, completion_window="24h")
        for f in files
        for _ in range(2)
    ]
    for n, batch in enumerate(batches):  # distinct creation times, the last newest
        update_batch(storage, batch.id, created_at=1_800_000_000 + n)
    page = sdk.batches.list(limit=3)
    assert len(page.data) == 3 and page.has_more
    listed = [b.id for b in sdk.batches.list(limit=3)]  # auto-pagination over 4 pages
    assert listed == [b.id for b in reversed(batches)]
    files_listed = [f.id for f in sdk.files.list(limit=2, order="asc")]
    assert sorted(files_listed) == sorted(f.id for f in files) and len(files_listed) == 5
    with pytest.raises(openai.NotFoundError) as unknown:
        sdk.batches.list(after="batch_unknown")
    assert unknown.value.body["param"] == "after"


@pytest.mark.parametrize("order", ["desc", "asc"])
def test_deleting_each_file_while_auto_paginating_deletes_them_all(api, storage, order):
    """``for f in client.files.list(limit=2): client.files.delete(f.id)``: the cursor is the
    deleted file's place in the list, not a lookup of it. A batch's own files are in it too."""
    sdk = client(api)
    uploads = [upload(sdk, chat_requests(f"d{i}", 1).encode(), f"d{i}.jsonl") for i in range(5)]
    storage.write_bytes("inbox/done.jsonl", chat_requests("o", 1).encode())
    batch_id = register_batch(storage, "inbox/done.jsonl")
    storage.write_bytes(f"outbox/{batch_id}/output.jsonl", b"{}\n")
    created = sdk.batches.retrieve(batch_id).created_at
    key = f"outbox/{batch_id}/output.jsonl"
    output_id = record_batch_file(storage, batch_id, "output", key, created)
    expected = {f.id for f in uploads} | {output_id, sdk.batches.retrieve(batch_id).input_file_id}
    seen = []
    for file in sdk.files.list(limit=2, order=order):
        seen.append(file.id)
        sdk.files.delete(file.id)
    assert sorted(seen) == sorted(expected)
    assert sdk.files.list().data == []


def test_every_object_there_for_the_whole_listing_is_seen_once(api, storage):
    """Pagination while other clients upload and delete: what existed from the first page to
    the last is listed exactly once; nothing is listed twice."""
    sdk = client(api)
    stay = [upload(sdk, b"{}\n", f"stay{i}.jsonl").id for i in range(12)]
    doomed = [upload(sdk, b"{}\n", f"doomed{i}.jsonl").id for i in range(12)]
    seen: list[str] = []
    for n, file in enumerate(sdk.files.list(limit=3)):
        seen.append(file.id)
        if n < len(doomed):  # another client, between pages
            sdk.files.delete(doomed[n])
            upload(sdk, b"{}\n", f"new{n}.jsonl")
    assert len(seen) == len(set(seen))
    assert set(stay) <= set(seen)
    batches = [
        sdk.batches.create(input_file_id=stay[0], endpoint=CHAT, completion_window="24h").id
        for _ in range(7)
    ]
    listed = []
    for batch in sdk.batches.list(limit=2):  # each cancelled as it is met: still listed once
        listed.append(batch.id)
        sdk.batches.cancel(batch.id)
        sdk.batches.create(input_file_id=stay[1], endpoint=CHAT, completion_window="24h")
    assert len(listed) == len(set(listed)) and set(batches) <= set(listed)


def test_cancel_is_idempotent_and_409_on_a_finished_batch(api, storage):
    sdk = client(api)
    file = upload(sdk, chat_requests("c", 2).encode())
    first = sdk.batches.create(input_file_id=file.id, endpoint=CHAT, completion_window="24h")
    assert sdk.batches.cancel(first.id).status == "cancelling"
    assert sdk.batches.cancel(first.id).status == "cancelling"
    drive(storage, first.id, "cancelled")
    assert sdk.batches.cancel(first.id).status == "cancelled"
    second = sdk.batches.create(input_file_id=file.id, endpoint=CHAT, completion_window="24h")
    drive(storage, second.id, "completed")
    with pytest.raises(openai.ConflictError) as raised:
        sdk.batches.cancel(second.id)
    assert raised.value.response.headers["x-should-retry"] == "false"


def test_a_file_read_by_an_active_batch_cannot_be_deleted(api, storage):
    sdk = client(api)
    file = upload(sdk, chat_requests("del", 2).encode())
    batch = sdk.batches.create(input_file_id=file.id, endpoint=CHAT, completion_window="24h")
    with pytest.raises(openai.ConflictError):
        sdk.files.delete(file.id)
    drive(storage, batch.id, "completed")
    deleted = sdk.files.delete(file.id)
    assert (deleted.id, deleted.deleted) == (file.id, True)
    with pytest.raises(openai.NotFoundError):
        sdk.files.retrieve(file.id)
    assert _stored_keys(storage) == []


def test_once_its_batch_has_validated_a_cancelled_batchs_input_can_be_deleted(api, storage):
    """The cleanup flow "cancel, then delete the input": refused only while the batch still
    reads the upload; once validated, its requests are in its work area."""
    sdk = client(api)
    file = upload(sdk, chat_requests("val", 2).encode())
    batch = sdk.batches.create(input_file_id=file.id, endpoint=CHAT, completion_window="24h")
    assert sdk.batches.cancel(batch.id).status == "cancelling"
    with pytest.raises(openai.ConflictError, match="is read by batch"):
        sdk.files.delete(file.id)  # not validated yet: the cancel's run validates it
    paths = BatchPaths(batch.id)
    source = read_source(storage, paths)
    limits = Limits(1 << 20, 100, 1 << 30)
    report = validate_input(storage, source.key, paths, ServedNames((MODEL_NAME,)), limits, CHAT)
    save_manifest(storage, paths, source, report)
    before = sdk.batches.retrieve(batch.id)
    assert sdk.files.delete(file.id).deleted
    assert sdk.batches.retrieve(batch.id) == before
    with pytest.raises(openai.NotFoundError):
        sdk.files.retrieve(file.id)


def test_an_idempotency_key_returns_the_first_answer(api, storage):
    sdk = client(api)
    once = {"Idempotency-Key": "upload-1"}
    first = sdk.files.create(file=("a.jsonl", b"{}\n"), purpose="batch", extra_headers=once)
    again = sdk.files.create(file=("a.jsonl", b"{}\n"), purpose="batch", extra_headers=once)
    assert again.id == first.id and len(sdk.files.list().data) == 1
    params = {"input_file_id": first.id, "endpoint": CHAT, "completion_window": "24h"}
    made = sdk.batches.create(**params, extra_headers={"Idempotency-Key": "create-1"})
    repeat = sdk.batches.create(**params, extra_headers={"Idempotency-Key": "create-1"})
    other = sdk.batches.create(**params, extra_headers={"Idempotency-Key": "create-2"})
    assert repeat.id == made.id != other.id
    assert len(sdk.batches.list().data) == 2


def test_dozens_of_concurrent_uploads_and_creates_lose_and_duplicate_nothing(api):
    async def run() -> tuple[list[FileObject], list[Batch]]:
        sdk = openai.AsyncOpenAI(
            base_url=api, api_key="unused", max_retries=0, _strict_response_validation=True
        )
        files = await asyncio.gather(
            *[
                sdk.files.create(
                    file=(f"c{i}.jsonl", chat_requests(f"c{i}", 3).encode()), purpose="batch"
                )
                for i in range(40)
            ]
        )
        batches = await asyncio.gather(
            *[
                sdk.batches.create(input_file_id=f.id, endpoint=CHAT, completion_window="24h")
                for f in files
            ]
        )
        listed_files = [f async for f in sdk.files.list(limit=7)]
        listed_batches = [b async for b in sdk.batches.list(limit=7)]
        assert sorted(f.id for f in listed_files) == sorted(f.id for f in files)
        assert sorted(b.id for b in listed_batches) == sorted(b.id for b in batches)
        contents = await asyncio.gather(*[sdk.files.content(f.id) for f in files[:5]])
        for i, content in enumerate(contents):
            assert content.read() == chat_requests(f"c{i}", 3).encode()
        await sdk.close()
        return files, batches

    files, batches = asyncio.run(run())
    assert len({f.id for f in files}) == 40 and len({b.id for b in batches}) == 40


def test_keys_reach_only_their_project_and_404_elsewhere(tmp_path):
    storage = BatchStorage(root=str(tmp_path / "s"), projects=["team-a", "team-b"])
    with api_server(storage, keys="team-a:key-a,team-b:key-b") as base_url:
        a, b = client(base_url, "key-a"), client(base_url, "key-b")
        file_a = upload(a, chat_requests("a", 1).encode())
        batch_a = a.batches.create(input_file_id=file_a.id, endpoint=CHAT, completion_window="24h")
        file_b = upload(b, chat_requests("b", 1).encode())
        for call in (
            lambda: b.files.retrieve(file_a.id),
            lambda: b.files.content(file_a.id),
            lambda: b.files.delete(file_a.id),
            lambda: b.batches.retrieve(batch_a.id),
            lambda: b.batches.cancel(batch_a.id),
            lambda: b.batches.create(
                input_file_id=file_a.id, endpoint=CHAT, completion_window="24h"
            ),
            lambda: a.files.retrieve(file_b.id),
        ):
            with pytest.raises(openai.NotFoundError):
                call()
        assert [f.id for f in b.files.list()] == [file_b.id]
        assert b.batches.list().data == []
        assert [x.id for x in a.batches.list()] == [batch_a.id]
        # Each project's objects lie under its own root.
        assert storage.for_project("team-a").exists(FilePaths(file_a.id).record)
        assert not storage.for_project("team-b").exists(FilePaths(file_a.id).record)
        with pytest.raises(openai.AuthenticationError):
            client(base_url, "key-c").files.list()
        with httpx.Client(base_url=base_url) as http:
            no_key = http.get("/files")
        assert no_key.status_code == 401 and no_key.json()["error"]["code"] == "missing_api_key"
        # The SDK's OpenAI-Project header must match the key's project.
        with pytest.raises(openai.AuthenticationError):
            client(base_url, "key-a", project="team-b").files.list()
        assert client(base_url, "key-a", project="team-a").files.list().data
        # ZeroGPU's headers work too.
        with httpx.Client(base_url=base_url) as http:
            answer = http.get("/files", headers={"x-api-key": "key-b", "x-project-id": "team-b"})
            assert [f["id"] for f in answer.json()["data"]] == [file_b.id]
            wrong = http.get("/files", headers={"x-api-key": "key-b", "x-project-id": "team-a"})
            assert wrong.status_code == 401


def test_an_inbox_batch_is_visible_and_downloadable_through_its_projects_api(storage, api):
    content = chat_requests("inbox", 2).encode()
    storage.write_bytes("inbox/dropped.jsonl", content)
    batch_id = register_batch(storage, "inbox/dropped.jsonl")
    sdk = client(api)
    batch = sdk.batches.retrieve(batch_id)
    assert batch.input_file_id.startswith("file-")
    assert sdk.files.content(batch.input_file_id).read() == content


def test_several_replicas_over_one_storage_agree(storage):
    with api_server(storage) as first, api_server(storage) as second:
        file = upload(client(first), chat_requests("r", 1).encode())
        batch = client(second).batches.create(
            input_file_id=file.id, endpoint=CHAT, completion_window="24h"
        )
        assert client(first).batches.retrieve(batch.id).id == batch.id


def test_the_server_refuses_an_open_port_without_keys_and_unknown_projects():
    plain = BatchStorage(root="unused")
    check_settings(plain, KeyRing.parse(""), "127.0.0.1")
    with pytest.raises(ServeRefused, match="without API keys"):
        check_settings(plain, KeyRing.parse(""), "0.0.0.0")
    check_settings(plain, KeyRing.parse("secret"), "0.0.0.0")
    split = BatchStorage(root="unused", projects=["team-a"])
    with pytest.raises(ServeRefused):
        check_settings(split, KeyRing.parse(""), "127.0.0.1")
    with pytest.raises(ServeRefused, match="team-z"):
        check_settings(split, KeyRing.parse("team-z:k"), "127.0.0.1")


def test_a_keys_file_holds_hashes_only(tmp_path):
    keys_file = tmp_path / "keys"
    keys_file.write_text(f"# deploy keys\nteam-a:{digest('secret-a').hex()}\n")
    ring = KeyRing.parse("", str(keys_file))
    assert ring.project_of("secret-a") == (True, "team-a")
    assert ring.project_of("secret-b") == (False, None)
    assert "secret-a" not in keys_file.read_text()
