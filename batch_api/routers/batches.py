"""``/v1/batches``: create, list, retrieve and cancel batches, as OpenAI's Batch API.

A batch is recorded in the storage (:mod:`batch_assets.lifecycle.batches`); the API sensor
launches its run, and its status is read from its record.
"""

from typing import Annotated, Any

from fastapi import APIRouter, Query, Request
from fastapi.responses import JSONResponse
from openai.types import Batch
from pydantic import BaseModel, Field

from batch_api.auth import Auth, Tenant
from batch_api.errors import APIError, bad_request, not_found
from batch_api.lists import page, remembered, unknown_cursor
from batch_api.schemas import BatchList, errors
from batch_assets.lifecycle.batches import (
    BatchRecord,
    BatchStatus,
    batch_exists,
    create_api_batch,
    page_batches,
    read_batch_view,
)
from batch_assets.lifecycle.cancellation import request_cancel
from batch_assets.lifecycle.files import read_file_record
from batch_assets.lifecycle.retention import MAX_EXPIRY_S, MIN_EXPIRY_S, set_output_retention
from batch_assets.lifecycle.retry import RetryRefused, batch_of_error_file, create_retry_batch
from resources.endpoints import SUPPORTED_URLS

MAX_METADATA_PAIRS, MAX_METADATA_KEY, MAX_METADATA_VALUE = 16, 64, 512

router = APIRouter(tags=["Batch API"])


class CreateBatch(BaseModel):
    """``batches.create``'s body. The document states the values accepted; the route checks
    them itself, so that a refusal names its field as OpenAI's does."""

    input_file_id: str
    endpoint: str = Field(json_schema_extra={"enum": list(SUPPORTED_URLS)})
    completion_window: str = Field(json_schema_extra={"enum": ["24h"]})
    metadata: dict[str, str] | None = Field(
        default=None,
        json_schema_extra={
            "maxProperties": MAX_METADATA_PAIRS,
            "propertyNames": {"maxLength": MAX_METADATA_KEY},
            "additionalProperties": {"type": "string", "maxLength": MAX_METADATA_VALUE},
        },
    )
    output_expires_after: dict[str, Any] | None = Field(
        default=None,
        json_schema_extra={
            "required": ["anchor", "seconds"],
            "properties": {
                "anchor": {"type": "string", "enum": ["created_at"]},
                "seconds": {"type": "integer", "minimum": MIN_EXPIRY_S, "maximum": MAX_EXPIRY_S},
            },
        },
    )


def batch_body(batch: BatchRecord) -> dict[str, Any]:
    """The record as the SDK's Batch (validated), ready to send; ``metadata`` is ``{}``, not
    null, when none was given, as OpenAI answers (clients such as instructor refuse null)."""
    body = Batch.model_validate(batch.as_dict()).model_dump(mode="json")
    return {**body, "metadata": body.get("metadata") or {}}


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


def _check_request(body: CreateBatch) -> None:
    if body.endpoint not in SUPPORTED_URLS:
        raise bad_request(
            f"endpoint {body.endpoint!r} is not supported; use one of {', '.join(SUPPORTED_URLS)}",
            "endpoint",
        )
    if body.completion_window != "24h":
        raise bad_request("completion_window: only '24h' is supported", "completion_window")
    _check_metadata(body.metadata)


def _output_retention(body: CreateBatch) -> int | None:
    """``output_expires_after``'s seconds (anchor ``created_at``, as OpenAI), or None."""
    after = body.output_expires_after
    if after is None:
        return None
    if after.get("anchor") != "created_at":
        raise bad_request(
            "output_expires_after.anchor: must be 'created_at'", "output_expires_after.anchor"
        )
    seconds = after.get("seconds")
    if isinstance(seconds, float) and seconds.is_integer():  # 7200.0 is an integer in JSON
        seconds = int(seconds)
    if not isinstance(seconds, int) or not MIN_EXPIRY_S <= seconds <= MAX_EXPIRY_S:
        raise bad_request(
            f"output_expires_after.seconds: between {MIN_EXPIRY_S} and {MAX_EXPIRY_S}",
            "output_expires_after.seconds",
        )
    return seconds


def _retry(t: Tenant, original: BatchRecord, body: CreateBatch) -> BatchRecord:
    """A batch over the retryable failed lines of ``original`` (its error file was given)."""
    if original.endpoint != body.endpoint:
        raise bad_request(
            f"endpoint: batch {original.id} ran {original.endpoint}; its retry runs the same",
            "endpoint",
        )
    try:
        return create_retry_batch(t.storage, original, body.metadata)
    except RetryRefused as refused:
        raise bad_request(f"input_file_id: {refused}", "input_file_id") from None


@router.post("/v1/batches", response_model=None, responses={200: {"model": Batch}, **errors(404)})
def create_batch(body: CreateBatch, t: Auth, request: Request) -> JSONResponse:
    # Idempotency-Key (what the SDK's retries send) is read here, not declared: a transport
    # header of the SDK, not a parameter of OpenAI's API.
    stored, answer = remembered(t, "POST /v1/batches", request.headers.get("idempotency-key"))
    if answer is not None:
        return answer
    _check_request(body)
    retention_s = _output_retention(body)
    record = read_file_record(t.storage, body.input_file_id)
    if record is None or record.expired():
        raise not_found("file", body.input_file_id, "input_file_id")
    if record.purpose == "batch":
        created = create_api_batch(t.storage, record, body.endpoint, body.metadata)
    elif (original := batch_of_error_file(t.storage, record.id)) is not None:
        created = _retry(t, original, body)
    else:
        raise bad_request(
            f"input_file_id: file {record.id} has purpose {record.purpose!r}: use an upload "
            "of purpose 'batch', or a finished batch's error file to retry its failed lines",
            "input_file_id",
        )
    if retention_s is not None:
        set_output_retention(t.storage, created.id, retention_s)
    answer_body = batch_body(created)
    if stored:
        t.storage.write_json(stored, answer_body)
    return JSONResponse(answer_body)


@router.get(
    "/v1/batches", response_model=None, responses={200: {"model": BatchList}, **errors(404)}
)
def list_all_batches(
    t: Auth,
    limit: Annotated[int, Query(ge=1, le=100)] = 20,
    after: str | None = None,
) -> dict[str, Any]:
    try:
        batches, more = page_batches(t.storage, after, limit)
    except KeyError:
        raise unknown_cursor(str(after)) from None
    return page([batch_body(b) for b in batches], more)


def existing_batch(t: Tenant, batch_id: str) -> BatchRecord:
    """The batch's record; unknown or another project's: 404."""
    if not batch_id.startswith("batch_") or "/" in batch_id:
        raise not_found("batch", batch_id)
    if not batch_exists(t.storage, batch_id):
        raise not_found("batch", batch_id)
    return read_batch_view(t.storage, batch_id)


@router.get(
    "/v1/batches/{batch_id}", response_model=None, responses={200: {"model": Batch}, **errors(404)}
)
def get_batch(batch_id: str, t: Auth) -> dict[str, Any]:
    return batch_body(existing_batch(t, batch_id))


@router.post(
    "/v1/batches/{batch_id}/cancel",
    response_model=None,
    responses={200: {"model": Batch}, **errors(404, 409)},
)
def cancel_batch(batch_id: str, t: Auth) -> dict[str, Any]:
    batch = existing_batch(t, batch_id)
    if batch.status.ended and batch.status is not BatchStatus.CANCELLED:
        raise APIError(
            409,
            f"Batch {batch_id} has already ended ({batch.status}); it cannot be cancelled.",
            "batch_not_cancellable",
            "batch_id",
        )
    request_cancel(t.storage, batch_id)
    return batch_body(read_batch_view(t.storage, batch_id))
