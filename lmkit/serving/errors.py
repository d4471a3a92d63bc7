"""How ``lmkit serve`` answers what goes wrong: every error is a JSON ``{"error": {"message", "type", "param",
"code"}}`` (OpenAI's shape), a 4xx for the client's mistakes, and no traceback or server path ever reaches a
client (a bug is a logged 500)."""

from __future__ import annotations

import traceback

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException

from lmkit.errors import UserError
from lmkit.progress import reporter


class ApiError(Exception):
    """A request the server refuses: its HTTP status, a message naming the field (``param``) and OpenAI's type."""

    def __init__(self, status: int, message: str, param: str | None = None, kind: str = "invalid_request_error",
                 headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status, self.message, self.param, self.kind, self.headers = status, message, param, kind, headers


def error_response(status: int, message: str, param: str | None = None, kind: str = "invalid_request_error",
                   headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"error": {"message": message, "type": kind, "param": param, "code": status}},
                        status_code=status, headers=headers)


def install(app: FastAPI) -> None:
    """Answer ApiError, invalid bodies (400 naming the field), UserError (400), an unknown path (404) or method
    (405), and bugs (500) as JSON errors."""

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, exc: HTTPException):
        return error_response(exc.status_code, f"{request.method} {request.url.path}: {exc.detail}",
                              headers=exc.headers)

    @app.exception_handler(ApiError)
    async def api_error(_request: Request, exc: ApiError):
        return error_response(exc.status, exc.message, exc.param, exc.kind, exc.headers)

    @app.exception_handler(RequestValidationError)
    async def invalid(_request: Request, exc: RequestValidationError):
        first = exc.errors()[0]
        where = ".".join(str(part) for part in first.get("loc", ()) if part != "body") or "body"
        if first.get("type") == "json_invalid":
            return error_response(400, f"body: not valid JSON ({first.get('msg')})")
        return error_response(400, f"{where}: {first.get('msg')}", where)

    @app.exception_handler(UserError)
    async def user_error(_request: Request, exc: UserError):
        return error_response(400, str(exc))

    @app.exception_handler(Exception)
    async def bug(_request: Request, exc: Exception):
        reporter.warn("".join(traceback.format_exception(exc)).rstrip())  # for the server's log only
        return error_response(500, "internal server error", kind="server_error")
