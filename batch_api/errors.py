"""OpenAI's error envelope, ``{"error": {"message", "type", "param", "code"}}``, and its status.

Every 4xx carries ``x-should-retry: false`` so that the official SDK does not retry what
cannot succeed (it retries 408, 409, 429 and 5xx by default).
"""

from typing import Any

from fastapi import Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import Route

ERROR_TYPES = {
    400: "invalid_request_error",
    401: "invalid_request_error",
    404: "invalid_request_error",
    405: "invalid_request_error",
    409: "invalid_request_error",
    413: "invalid_request_error",
    500: "server_error",
}


class APIError(Exception):
    """An answer in OpenAI's error envelope."""

    def __init__(self, status: int, message: str, code: str, param: str | None = None):
        super().__init__(message)
        self.status, self.message, self.code, self.param = status, message, code, param


def bad_request(message: str, param: str | None, code: str = "invalid_value") -> APIError:
    return APIError(400, message, code, param)


def not_found(kind: str, object_id: str, param: str = "id") -> APIError:
    """Unknown here, or another project's: the same answer, so no id is confirmed. ``param``
    names the field that held the id (``id`` for a path)."""
    return APIError(404, f"No such {kind}: '{object_id}'", f"{kind}_not_found", param)


def error_response(
    status: int,
    message: str,
    code: str,
    param: str | None = None,
    headers: dict[str, str] | None = None,
) -> JSONResponse:
    body: dict[str, Any] = {
        "error": {
            "message": message,
            "type": ERROR_TYPES.get(status, "invalid_request_error"),
            "param": param,
            "code": code,
        }
    }
    sent = {"x-should-retry": "false"} if 400 <= status < 500 else {}
    return JSONResponse(body, status_code=status, headers={**sent, **(headers or {})})


async def on_api_error(_: Request, error: Exception) -> JSONResponse:
    assert isinstance(error, APIError)
    return error_response(error.status, error.message, error.code, error.param)


async def on_validation_error(_: Request, error: Exception) -> JSONResponse:
    """FastAPI's 422 becomes OpenAI's 400, naming the first field at fault."""
    assert isinstance(error, RequestValidationError)
    first = error.errors()[0] if error.errors() else {}
    if first.get("type") == "json_invalid":  # its location is a character offset, no field
        reason = (first.get("ctx") or {}).get("error", "invalid JSON")
        message = f"We could not parse the JSON body of your request: {reason}"
        return error_response(400, message, "invalid_json")
    location = [str(part) for part in first.get("loc", ()) if part not in ("body", "query", "path")]
    param = ".".join(location) or None
    message = f"{param}: {first.get('msg', 'invalid value')}" if param else "invalid request"
    code = "missing_required_parameter" if first.get("type") == "missing" else "invalid_value"
    return error_response(400, message, code, param)


async def on_http_error(request: Request, error: Exception) -> JSONResponse:
    assert isinstance(error, StarletteHTTPException)
    code = {404: "unknown_url", 405: "method_not_allowed"}.get(error.status_code, "http_error")
    headers = dict(error.headers or {})
    if error.status_code == 405:  # every method of the path (Starlette names one route's)
        headers["Allow"] = ", ".join(_methods_of(request))
    return error_response(error.status_code, str(error.detail), code, None, headers)


def _methods_of(request: Request) -> list[str]:
    path = request.url.path
    return sorted(
        {
            method
            for route in request.app.router.routes
            if isinstance(route, Route) and route.path_regex.fullmatch(path)
            for method in route.methods or ()
            if method != "HEAD"
        }
    )
