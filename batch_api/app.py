"""OpenAI's Files and Batches routes over the batch storage: a thin, stateless facade.

An upload is written into the project's storage, a batch request is recorded there, and the
sensors and assets do the work exactly as for an inbox upload; status is read from
``batch.json``. Nothing is kept in memory between requests, so several replicas can serve
one storage, and the API answers while Dagster is down (batches then wait in
``validating``). Response bodies are the official SDK's own types.
"""

import hashlib
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Annotated, Any, Literal

import anyio
import anyio.from_thread
import anyio.to_thread
from fastapi import Depends, FastAPI, Header, Query, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response, StreamingResponse
from openai.types import Batch, FileDeleted, FileObject
from pydantic import BaseModel
from starlette.exceptions import HTTPException as StarletteHTTPException

from batch_api.errors import (
    APIError,
    bad_request,
    not_found,
    on_api_error,
    on_http_error,
    on_validation_error,
)
from batch_api.keys import KeyRing
from batch_api.uploads import stream_upload
from batch_assets.lifecycle.batches import (
    TERMINAL_STATUSES,
    create_api_batch,
    list_batches,
    read_batch,
)
from batch_assets.lifecycle.cancellation import request_cancel
from batch_assets.lifecycle.files import (
    FileRecord,
    iter_file_records,
    new_file_id,
    read_file_record,
    write_file_record,
)
from resources.endpoints import SUPPORTED_URLS
from resources.layout import BatchPaths, FilePaths, idempotency_key
from resources.storage import BatchStorage

MAX_METADATA_PAIRS, MAX_METADATA_KEY, MAX_METADATA_VALUE = 16, 64, 512
MIN_EXPIRY_S, MAX_EXPIRY_S = 3600, 30 * 24 * 3600
READ_CHUNK = 1 << 20


@dataclass(frozen=True)
class APISettings:
    storage: BatchStorage
    keys: KeyRing
    max_file_bytes: int = 8 << 30


@dataclass(frozen=True)
class Tenant:
    """The project a request's key reaches, and that project's storage."""

    project: str | None
    storage: BatchStorage


class CreateBatch(BaseModel):
    input_file_id: str
    endpoint: str
    completion_window: str
    metadata: dict[str, str] | None = None
    output_expires_after: dict[str, Any] | None = None


def _batch_body(batch: dict[str, Any]) -> dict[str, Any]:
    """batch.json as the SDK's Batch (validated), ready to send."""
    return Batch.model_validate(batch).model_dump(mode="json")


def _file_body(record: FileRecord) -> dict[str, Any]:
    return FileObject.model_validate(record.file_object()).model_dump(mode="json")


def _page(
    items: list[Any],
    ident: Callable[[Any], str],
    body: Callable[[Any], dict[str, Any]],
    after: str | None,
    limit: int,
) -> dict[str, Any]:
    """OpenAI's list of the ``limit`` items after the one whose id is ``after``."""
    if after is not None:
        ids = [ident(item) for item in items]
        if after not in ids:
            raise bad_request(f"after: no object {after!r} in this list", "after")
        items = items[ids.index(after) + 1 :]
    data = [body(item) for item in items[:limit]]
    return {
        "object": "list",
        "data": data,
        "first_id": data[0]["id"] if data else None,
        "last_id": data[-1]["id"] if data else None,
        "has_more": len(items) > limit,
    }


def _check_metadata(metadata: dict[str, str] | None) -> None:
    if metadata is None:
        return
    if len(metadata) > MAX_METADATA_PAIRS:
        raise bad_request(f"metadata: at most {MAX_METADATA_PAIRS} pairs", "metadata")
    for key, value in metadata.items():
        if len(key) > MAX_METADATA_KEY:
            raise bad_request(
                f"metadata: keys are at most {MAX_METADATA_KEY} characters", "metadata"
            )
        if len(value) > MAX_METADATA_VALUE:
            raise bad_request(
                f"metadata: values are at most {MAX_METADATA_VALUE} characters", "metadata"
            )


def create_app(settings: APISettings) -> FastAPI:
    app = FastAPI(title="dagster-vllm-batch", docs_url=None, redoc_url=None)
    app.add_exception_handler(APIError, on_api_error)
    app.add_exception_handler(RequestValidationError, on_validation_error)
    app.add_exception_handler(StarletteHTTPException, on_http_error)

    @app.middleware("http")
    async def request_id(request: Request, call_next: Any) -> Response:
        rid = f"req_{uuid.uuid4().hex}"
        response: Response = await call_next(request)
        response.headers["x-request-id"] = rid
        return response

    def tenant(
        authorization: Annotated[str | None, Header()] = None,
        x_api_key: Annotated[str | None, Header()] = None,
        x_project_id: Annotated[str | None, Header()] = None,
        openai_project: Annotated[str | None, Header()] = None,
    ) -> Tenant:
        if settings.keys.empty:
            return Tenant(None, settings.storage)
        key = None
        if authorization and authorization.lower().startswith("bearer "):
            key = authorization[7:].strip()
        key = key or x_api_key
        if not key:
            raise APIError(
                401, "No API key was given (Authorization: Bearer KEY).", "missing_api_key"
            )
        found, project = settings.keys.project_of(key)
        if not found:
            raise APIError(401, "Incorrect API key provided.", "invalid_api_key")
        for asked in (openai_project, x_project_id):
            if asked is not None and asked != (project or ""):
                raise APIError(
                    401,
                    "The project in the request does not match the API key's.",
                    "invalid_project",
                )
        return Tenant(project, settings.storage.for_project(project))

    Auth = Annotated[Tenant, Depends(tenant)]

    def _remembered(
        t: Tenant, route: str, key: str | None
    ) -> tuple[str | None, JSONResponse | None]:
        """The storage key of an Idempotency-Key's answer, and the answer if there is one."""
        if not key:
            return None, None
        digest = hashlib.sha256(f"{t.project}\n{route}\n{key}".encode()).hexdigest()
        stored = idempotency_key(digest)
        if t.storage.exists(stored):
            return stored, JSONResponse(t.storage.read_json(stored))
        return stored, None

    def _live_file(t: Tenant, file_id: str) -> FileRecord:
        record = read_file_record(t.storage, file_id)
        if record is None or record.expired():
            raise not_found("file", file_id)
        return record

    @app.post("/v1/files")
    async def create_file(
        request: Request,
        t: Auth,
        idempotency_key_header: Annotated[str | None, Header(alias="idempotency-key")] = None,
    ) -> JSONResponse:
        stored, answer = await run_in_threadpool(
            _remembered, t, "POST /v1/files", idempotency_key_header
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
        expires_at = _expiry(form.fields, created)
        record = FileRecord(
            id=file_id,
            bytes=form.size,
            created_at=created,
            filename=form.filename or "upload",
            purpose="batch",
            expires_at=expires_at,
            content=paths.content,
        )
        answer_body = _file_body(record)
        await run_in_threadpool(write_file_record, t.storage, record)
        if stored:
            await run_in_threadpool(t.storage.write_json, stored, answer_body)
        return JSONResponse(answer_body)

    @app.get("/v1/files")
    def list_files(
        t: Auth,
        purpose: str | None = None,
        limit: Annotated[int, Query(ge=1, le=10_000)] = 10_000,
        order: Literal["asc", "desc"] = "desc",
        after: str | None = None,
    ) -> dict[str, Any]:
        now = time.time()
        records = [
            r
            for r in iter_file_records(t.storage)
            if (purpose is None or r.purpose == purpose) and not r.expired(now)
        ]
        records.sort(key=lambda r: (r.created_at, r.id), reverse=order == "desc")
        return _page(records, lambda r: r.id, _file_body, after, limit)

    @app.get("/v1/files/{file_id}")
    def get_file(file_id: str, t: Auth) -> dict[str, Any]:
        return _file_body(_live_file(t, file_id))

    @app.get("/v1/files/{file_id}/content")
    def file_content(file_id: str, t: Auth) -> StreamingResponse:
        record = _live_file(t, file_id)
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

    @app.delete("/v1/files/{file_id}")
    def delete_file(file_id: str, t: Auth) -> dict[str, Any]:
        record = _live_file(t, file_id)
        paths = FilePaths(file_id)
        for info in t.storage.list(paths.readers):
            batch_id = info.key.rsplit("/", 1)[-1]
            if t.storage.exists(BatchPaths(batch_id).batch_json):
                status = read_batch(t.storage, batch_id)["status"]
                if status not in TERMINAL_STATUSES:
                    raise APIError(
                        409,
                        f"File {file_id} is read by batch {batch_id} ({status}); "
                        "delete it once the batch has ended.",
                        "file_in_use",
                        "file_id",
                    )
        t.storage.delete(paths.record)  # first: the file is gone even if the rest fails
        if record.content.startswith(f"{paths.folder}/"):
            t.storage.delete(record.content)
        t.storage.delete_prefix(paths.readers)
        return FileDeleted(id=file_id, object="file", deleted=True).model_dump(mode="json")

    @app.post("/v1/batches")
    def create_batch(
        body: CreateBatch,
        t: Auth,
        idempotency_key_header: Annotated[str | None, Header(alias="idempotency-key")] = None,
    ) -> JSONResponse:
        stored, answer = _remembered(t, "POST /v1/batches", idempotency_key_header)
        if answer is not None:
            return answer
        if body.endpoint not in SUPPORTED_URLS:
            raise bad_request(
                f"endpoint {body.endpoint!r} is not supported; use one of "
                f"{', '.join(SUPPORTED_URLS)}",
                "endpoint",
            )
        if body.completion_window != "24h":
            raise bad_request("completion_window: only '24h' is supported", "completion_window")
        _check_metadata(body.metadata)
        record = read_file_record(t.storage, body.input_file_id)
        if record is None or record.expired():
            raise not_found("file", body.input_file_id)
        if record.purpose != "batch":
            raise bad_request(
                f"input_file_id: file {record.id} has purpose {record.purpose!r}, not 'batch'",
                "input_file_id",
            )
        batch = create_api_batch(t.storage, record, body.endpoint, body.metadata)
        answer_body = _batch_body(batch)
        if stored:
            t.storage.write_json(stored, answer_body)
        return JSONResponse(answer_body)

    @app.get("/v1/batches")
    def list_all_batches(
        t: Auth,
        limit: Annotated[int, Query(ge=1, le=100)] = 20,
        after: str | None = None,
    ) -> dict[str, Any]:
        return _page(list_batches(t.storage), lambda b: b["id"], _batch_body, after, limit)

    def _existing_batch(t: Tenant, batch_id: str) -> dict[str, Any]:
        if not batch_id.startswith("batch_") or "/" in batch_id:
            raise not_found("batch", batch_id)
        if not t.storage.exists(BatchPaths(batch_id).batch_json):
            raise not_found("batch", batch_id)
        return read_batch(t.storage, batch_id)

    @app.get("/v1/batches/{batch_id}")
    def get_batch(batch_id: str, t: Auth) -> dict[str, Any]:
        return _batch_body(_existing_batch(t, batch_id))

    @app.post("/v1/batches/{batch_id}/cancel")
    def cancel_batch(batch_id: str, t: Auth) -> dict[str, Any]:
        batch = _existing_batch(t, batch_id)
        if batch["status"] in ("completed", "failed", "expired"):
            raise APIError(
                409,
                f"Batch {batch_id} has already ended ({batch['status']}); it cannot be cancelled.",
                "batch_not_cancellable",
                "batch_id",
            )
        request_cancel(t.storage, batch_id)
        return _batch_body(read_batch(t.storage, batch_id))

    return app


def _expiry(fields: dict[str, str], created: int) -> int | None:
    """``expires_after[anchor]`` / ``expires_after[seconds]`` of an upload, as ``expires_at``."""
    anchor = fields.get("expires_after[anchor]")
    seconds = fields.get("expires_after[seconds]")
    if anchor is None and seconds is None:
        return None
    if anchor != "created_at":
        raise bad_request("expires_after[anchor]: must be 'created_at'", "expires_after[anchor]")
    try:
        value = int(seconds or "")
    except ValueError:
        value = -1
    if not MIN_EXPIRY_S <= value <= MAX_EXPIRY_S:
        raise bad_request(
            f"expires_after[seconds]: between {MIN_EXPIRY_S} and {MAX_EXPIRY_S}",
            "expires_after[seconds]",
        )
    return created + value
