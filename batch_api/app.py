"""OpenAI's Files and Batches routes over the batch storage: a thin, stateless facade.

An upload is written into the project's storage, a batch request is recorded there, and the
sensors and assets do the work exactly as for an inbox upload; status is read from the
batch's record. Nothing is kept in memory between requests, so several replicas can serve
one storage, and the API answers while Dagster is down (batches then wait in
``validating``). Response bodies are the official SDK's own types.
"""

import uuid
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import Response
from starlette.exceptions import HTTPException as StarletteHTTPException

from batch_api.errors import APIError, on_api_error, on_http_error, on_validation_error
from batch_api.routers import batches, files
from batch_api.settings import APISettings

__all__ = ["APISettings", "create_app"]


async def _request_id(request: Request, call_next: Any) -> Response:
    response: Response = await call_next(request)
    response.headers["x-request-id"] = f"req_{uuid.uuid4().hex}"
    return response


def create_app(settings: APISettings) -> FastAPI:
    app = FastAPI(title="dagster-vllm-batch", redoc_url=None)
    app.state.settings = settings
    app.add_exception_handler(APIError, on_api_error)
    app.add_exception_handler(RequestValidationError, on_validation_error)
    app.add_exception_handler(StarletteHTTPException, on_http_error)
    app.middleware("http")(_request_id)
    app.include_router(files.router)
    app.include_router(batches.router)
    return app
