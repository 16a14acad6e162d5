"""HTTP status mapping: exceptions (api/errors.classify's table) and request validation errors to
``{"error", "type"}`` bodies, with Retry-After on 429."""

from __future__ import annotations

import math

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from starlette.exceptions import HTTPException as StarletteHTTPException

from rewardserve.api.errors import MAPPED, classify
from rewardserve.api.http.cancel import CLIENT_GONE
from rewardserve.errors import ClientGone


def error_response(exc: BaseException) -> JSONResponse:
    info = classify(exc)
    headers = {"Retry-After": str(math.ceil(info.retry_after_s))} if info.retry_after_s else None
    body = {"error": info.message, "type": info.type}
    return JSONResponse(body, status_code=info.http_status, headers=headers)


def _validation_message(exc: RequestValidationError) -> str:
    parts = []
    for err in exc.errors()[:5]:
        loc = ".".join(str(p) for p in err.get("loc", ()) if p != "body")
        parts.append(f"{loc}: {err.get('msg', 'invalid')}" if loc else str(err.get("msg", "invalid")))
    return "; ".join(parts) or "invalid request"


# Starlette's own errors (no such route, wrong method, a body FastAPI could not read) in our format.
_HTTP_TYPES = {401: "auth", 403: "forbidden", 404: "not_found", 405: "not_found", 503: "unavailable"}
_HTTP_MESSAGES = {
    400: "the request body could not be read: send UTF-8 JSON",
    404: "no such route; see /docs for the API",
    405: "method not allowed on this route; see /docs for the API",
}


def install_error_handlers(app: FastAPI) -> None:
    """Answer every exception with the shared table's status and body."""

    async def on_http(_: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, StarletteHTTPException)
        status = exc.status_code
        kind = _HTTP_TYPES.get(status, "validation" if status < 500 else "internal")
        message = _HTTP_MESSAGES.get(status) or str(exc.detail)
        return JSONResponse({"error": message, "type": kind}, status_code=status, headers=exc.headers)

    async def on_validation(_: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, RequestValidationError)
        return JSONResponse({"error": _validation_message(exc), "type": "validation"}, status_code=422)

    async def on_error(_: Request, exc: Exception) -> Response:
        if isinstance(exc, ClientGone):  # nobody is listening; the status is for logs and metrics
            return Response(status_code=CLIENT_GONE)
        return error_response(exc)

    app.add_exception_handler(RequestValidationError, on_validation)
    app.add_exception_handler(StarletteHTTPException, on_http)
    app.add_exception_handler(Exception, on_error)
    # Expected errors also get the handler by class. One registered for plain Exception only runs in
    # Starlette's ServerErrorMiddleware, which re-raises after answering: uvicorn then logs a traceback
    # and closes the keep-alive connection, so a client's next request on it fails (connection reset).
    for expected in MAPPED:
        app.add_exception_handler(expected, on_error)
