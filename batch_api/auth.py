"""Who is asking: the API key of a request, as a FastAPI security dependency, and its project.

``Authorization: Bearer KEY`` (what the SDK sends) or ``x-api-key: KEY``. A key reaches one
project (or the root of a storage without projects); a request that names another project
(``OpenAI-Project``, ``x-project-id``) is refused. With no keys configured (a loopback-only
server), every request reaches the root.
"""

from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, Request
from fastapi.security import APIKeyHeader, HTTPAuthorizationCredentials, HTTPBearer

from batch_api.errors import APIError
from batch_api.settings import APISettings
from resources.storage import BatchStorage

_bearer = HTTPBearer(auto_error=False, description="An API key of BATCH_API_KEYS.")
_api_key_header = APIKeyHeader(name="x-api-key", auto_error=False)


@dataclass(frozen=True)
class Tenant:
    """The project a request's key reaches, and that project's storage."""

    project: str | None
    storage: BatchStorage


def settings_of(request: Request) -> APISettings:
    return request.app.state.settings


def authenticate(
    settings: Annotated[APISettings, Depends(settings_of)],
    bearer: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
    x_api_key: Annotated[str | None, Depends(_api_key_header)],
    request: Request,
) -> Tenant:
    if settings.keys.empty:
        return Tenant(None, settings.storage)
    key = (bearer.credentials.strip() if bearer else None) or x_api_key
    if not key:
        raise APIError(401, "No API key was given (Authorization: Bearer KEY).", "missing_api_key")
    found, project = settings.keys.project_of(key)
    if not found:
        raise APIError(401, "Incorrect API key provided.", "invalid_api_key")
    # Not declared as parameters: they are not credentials, and one that is given must be
    # the key's own project (which a document cannot state).
    for asked in (request.headers.get("openai-project"), request.headers.get("x-project-id")):
        if asked is not None and asked != (project or ""):
            raise APIError(
                401, "The project in the request does not match the API key's.", "invalid_project"
            )
    return Tenant(project, settings.storage.for_project(project))


Auth = Annotated[Tenant, Depends(authenticate)]
