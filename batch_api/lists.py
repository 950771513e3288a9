"""OpenAI's list pages, and the stored first answer of an ``Idempotency-Key``."""

import hashlib
from collections.abc import Callable
from typing import Any

from fastapi.responses import JSONResponse

from batch_api.auth import Tenant
from batch_api.errors import bad_request
from resources.layout import idempotency_key


def page(
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


def remembered(t: Tenant, route: str, key: str | None) -> tuple[str | None, JSONResponse | None]:
    """The storage key of an Idempotency-Key's answer, and the answer if there is one."""
    if not key:
        return None, None
    digest = hashlib.sha256(f"{t.project}\n{route}\n{key}".encode()).hexdigest()
    stored = idempotency_key(digest)
    if t.storage.exists(stored):
        return stored, JSONResponse(t.storage.read_json(stored))
    return stored, None
