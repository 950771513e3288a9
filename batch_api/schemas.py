"""What the OpenAPI document (``/openapi.json``, ``/docs``) says each route answers.

The bodies are the official SDK's own types; every error is OpenAI's envelope, with the status
codes each route can really answer. Only the document uses these models: the routes build
their bodies from the SDK types themselves.
"""

from typing import Any, Literal

from openai.types import Batch, FileObject
from pydantic import BaseModel


class ErrorBody(BaseModel):
    message: str
    type: str
    param: str | None
    code: str | None


class ErrorEnvelope(BaseModel):
    """OpenAI's error envelope."""

    error: ErrorBody


class FileList(BaseModel):
    object: Literal["list"]
    data: list[FileObject]
    first_id: str | None
    last_id: str | None
    has_more: bool


class BatchList(BaseModel):
    object: Literal["list"]
    data: list[Batch]
    first_id: str | None
    last_id: str | None
    has_more: bool


_WHY = {
    400: "A bad request: the field at fault is `param`.",
    401: "No API key, a wrong one, or a project header that is not the key's.",
    404: "No such object in the key's project.",
    409: "The object is in use or in a state that refuses this.",
    413: "The upload is larger than this server accepts.",
}


def errors(*codes: int) -> dict[int | str, dict[str, Any]]:
    """The error answers of a route (OpenAI's envelope), 400 and 401 always."""
    return {
        code: {"model": ErrorEnvelope, "description": _WHY[code]}
        for code in sorted({400, 401, *codes})
    }


# 3600 to 2592000 (OpenAI's bounds of expires_after.seconds), in decimal digits.
SECONDS_PATTERN = (
    r"^(3[6-9][0-9]{2}|[4-9][0-9]{3}|[1-9][0-9]{4,5}|1[0-9]{6}|2[0-4][0-9]{5}"
    r"|25[0-8][0-9]{4}|259[01][0-9]{3}|2592000)$"
)

UPLOAD_BODY: dict[str, Any] = {
    "requestBody": {
        "required": True,
        "content": {
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "required": ["file", "purpose"],
                    "properties": {
                        "file": {
                            "type": "string",
                            "format": "binary",
                            "description": "The JSONL file of batch requests.",
                        },
                        "purpose": {"type": "string", "enum": ["batch"]},
                        "expires_after[anchor]": {"type": "string", "enum": ["created_at"]},
                        "expires_after[seconds]": {  # a form field is text: 3600 to 2592000
                            "type": "string",
                            "pattern": SECONDS_PATTERN,
                        },
                    },
                    "dependentRequired": {
                        "expires_after[anchor]": ["expires_after[seconds]"],
                        "expires_after[seconds]": ["expires_after[anchor]"],
                    },
                }
            }
        },
    }
}

FILE_CONTENT: dict[int | str, dict[str, Any]] = {
    200: {
        "description": "The file's bytes.",
        "content": {"application/octet-stream": {"schema": {"type": "string", "format": "binary"}}},
    }
}
