"""OpenAI's list pages, and the stored first answer of an ``Idempotency-Key``."""

import hashlib
from typing import Any

from fastapi.responses import JSONResponse

from batch_api.auth import Tenant
from batch_api.errors import APIError
from resources.layout import idempotency_key


def page(data: list[dict[str, Any]], has_more: bool) -> dict[str, Any]:
    """OpenAI's list object of one page."""
    return {
        "object": "list",
        "data": data,
        "first_id": data[0]["id"] if data else None,
        "last_id": data[-1]["id"] if data else None,
        "has_more": has_more,
    }


def unknown_cursor(after: str) -> APIError:
    """A cursor naming no object of the list (one deleted since keeps its place, but an id
    of an earlier version carries no place of its own)."""
    return APIError(404, f"after: no object {after!r} in this list", "cursor_not_found", "after")


def remembered(t: Tenant, route: str, key: str | None) -> tuple[str | None, JSONResponse | None]:
    """The storage key of an Idempotency-Key's answer, and the answer if there is one."""
    if not key:
        return None, None
    digest = hashlib.sha256(f"{t.project}\n{route}\n{key}".encode()).hexdigest()
    stored = idempotency_key(digest)
    if t.storage.exists(stored):
        return stored, JSONResponse(t.storage.read_json(stored))
    return stored, None
