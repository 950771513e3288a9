"""``/v1/files``: upload, list, retrieve, download and delete files, as OpenAI's Files API."""

import re
import time
from collections.abc import Iterator
from typing import Annotated, Any, Literal

import anyio
import anyio.from_thread
import anyio.to_thread
from fastapi import APIRouter, Depends, Query, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse, StreamingResponse
from openai.types import FileDeleted, FileObject

from batch_api.auth import Auth, Tenant, settings_of
from batch_api.errors import APIError, bad_request, not_found
from batch_api.lists import page, remembered, unknown_cursor
from batch_api.schemas import FILE_CONTENT, UPLOAD_BODY, FileList, errors
from batch_api.settings import APISettings
from batch_api.uploads import stream_upload
from batch_assets.lifecycle.files import (
    FileRecord,
    new_file_id,
    page_file_records,
    read_file_record,
    write_file_record,
)
from batch_assets.lifecycle.retention import MAX_EXPIRY_S, MIN_EXPIRY_S, active_reader
from batch_assets.lifecycle.retention import delete_file as delete_stored_file
from resources.layout import FilePaths

READ_CHUNK = 1 << 20

router = APIRouter(tags=["Batch API"])


def file_body(record: FileRecord) -> dict[str, Any]:
    return FileObject.model_validate(record.file_object()).model_dump(mode="json")


def live_file(t: Tenant, file_id: str) -> FileRecord:
    """The file's record; unknown, expired or another project's: 404."""
    record = read_file_record(t.storage, file_id)
    if record is None or record.expired():
        raise not_found("file", file_id)
    return record


@router.post(
    "/v1/files",
    response_model=None,
    responses={200: {"model": FileObject}, **errors(413)},
    openapi_extra=UPLOAD_BODY,
)
async def create_file(
    request: Request,
    t: Auth,
    settings: Annotated[APISettings, Depends(settings_of)],
) -> JSONResponse:
    stored, answer = await run_in_threadpool(
        remembered, t, "POST /v1/files", request.headers.get("idempotency-key")
    )
    if answer is not None:
        return answer
    file_id = new_file_id()
    paths = FilePaths(file_id)
    body = request.stream().__aiter__()

    async def next_chunk() -> bytes | None:
        try:
            return await body.__anext__()
        except StopAsyncIteration:
            return None

    form = await anyio.to_thread.run_sync(
        stream_upload,
        lambda: anyio.from_thread.run(next_chunk),
        request.headers.get("content-type", ""),
        t.storage,
        paths.content,
        settings.max_file_bytes,
    )
    created = int(time.time())
    status, details = form.check.finish()  # processed once its lines are JSON objects
    record = FileRecord(
        id=file_id,
        bytes=form.size,
        created_at=created,
        filename=form.filename or "upload",
        purpose="batch",
        status=status,
        status_details=details,
        expires_at=_expiry(form.fields, created),
        content=paths.content,
    )
    answer_body = file_body(record)
    await run_in_threadpool(write_file_record, t.storage, record)
    if stored:
        await run_in_threadpool(t.storage.write_json, stored, answer_body)
    return JSONResponse(answer_body)


@router.get("/v1/files", response_model=None, responses={200: {"model": FileList}, **errors(404)})
def list_files(
    t: Auth,
    purpose: str | None = None,
    limit: Annotated[int, Query(ge=1, le=10_000)] = 10_000,
    order: Literal["asc", "desc"] = "desc",
    after: str | None = None,
) -> dict[str, Any]:
    now = time.time()

    def keep(record: FileRecord) -> bool:
        return (purpose is None or record.purpose == purpose) and not record.expired(now)

    try:
        records, more = page_file_records(t.storage, after, limit, order == "desc", keep)
    except KeyError:
        raise unknown_cursor(str(after)) from None
    return page([file_body(r) for r in records], more)


@router.get(
    "/v1/files/{file_id}",
    response_model=None,
    responses={200: {"model": FileObject}, **errors(404)},
)
def get_file(file_id: str, t: Auth) -> dict[str, Any]:
    return file_body(live_file(t, file_id))


@router.get(
    "/v1/files/{file_id}/content", response_model=None, responses={**FILE_CONTENT, **errors(404)}
)
def file_content(file_id: str, t: Auth) -> StreamingResponse:
    record = live_file(t, file_id)
    if not t.storage.exists(record.content):
        raise not_found("file", file_id)

    def chunks() -> Iterator[bytes]:
        with t.storage.open_read(record.content) as stream:
            while chunk := stream.read(READ_CHUNK):
                yield chunk

    return StreamingResponse(
        chunks(),
        media_type="application/octet-stream",
        headers={"content-length": str(record.bytes)},
    )


@router.delete(
    "/v1/files/{file_id}",
    response_model=None,
    responses={200: {"model": FileDeleted}, **errors(404, 409)},
)
def delete_file(file_id: str, t: Auth) -> dict[str, Any]:
    record = live_file(t, file_id)
    if (reader := active_reader(t.storage, file_id)) is not None:
        raise APIError(
            409,
            f"File {file_id} is read by batch {reader.id} ({reader.status}); "
            "delete it once the batch has ended.",
            "file_in_use",
            "file_id",
        )
    delete_stored_file(t.storage, record, with_outbox_content=False)
    return FileDeleted(id=file_id, object="file", deleted=True).model_dump(mode="json")


def _expiry(fields: dict[str, str], created: int) -> int | None:
    """``expires_after[anchor]`` / ``expires_after[seconds]`` of an upload, as ``expires_at``."""
    anchor = fields.get("expires_after[anchor]")
    seconds = fields.get("expires_after[seconds]")
    if anchor is None and seconds is None:
        return None
    if anchor != "created_at":
        raise bad_request("expires_after[anchor]: must be 'created_at'", "expires_after[anchor]")
    value = int(seconds) if seconds and re.fullmatch("[0-9]{1,9}", seconds) else -1
    if not MIN_EXPIRY_S <= value <= MAX_EXPIRY_S:
        raise bad_request(
            f"expires_after[seconds]: between {MIN_EXPIRY_S} and {MAX_EXPIRY_S}",
            "expires_after[seconds]",
        )
    return created + value
