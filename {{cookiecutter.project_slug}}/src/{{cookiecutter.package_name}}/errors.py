"""One JSON error format for every error the service returns.
{%- if cookiecutter.use_tracing %}

    {"error": {"status": 404, "message": "...", "request_id": "...", "trace_id": "..."}}

Server errors carry the trace_id (also in the `X-Trace-Id` header) so that a user can paste it
into the tracing UI. Stack traces go to the logs, never to the client, unless in debug mode.
{%- else %}

    {"error": {"status": 404, "message": "...", "request_id": "..."}}

The request_id is also in the `X-Request-ID` response header. Stack traces go to the logs,
never to the client, unless in debug mode.
{%- endif %}
"""

import asyncio
import traceback
from collections.abc import Mapping
from http import HTTPStatus
from typing import Any

from fastapi import FastAPI, Request
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

{%- if cookiecutter.use_tracing %}

from .observability.tracing import current_trace_ids
{%- endif %}


def error_response(
    request: Request,
    status: int,
    message: str,
    *,
    details: Any = None,
    headers: Mapping[str, str] | None = None,
) -> JSONResponse:
{%- if cookiecutter.use_tracing %}
    ids = current_trace_ids()
    trace_id = ids[0] if ids else None
{%- endif %}
    body: dict[str, Any] = {
        "status": status,
        "message": message,
        "request_id": getattr(request.state, "request_id", None),
{%- if cookiecutter.use_tracing %}
        "trace_id": trace_id,
{%- endif %}
    }
    if details is not None:
        body["details"] = details
    headers = dict(headers or {})
{%- if cookiecutter.use_tracing %}
    if trace_id is not None and status >= 500:
        headers["X-Trace-Id"] = trace_id
{%- endif %}
    return JSONResponse({"error": body}, status_code=status, headers=headers)


class BodyLimit:
    """Refuse request bodies over `max_body_bytes` with a 413, and slower than `timeout` with a 408.

    A declared Content-Length is checked before the app runs, a body of unknown length as it
    streams in. The timeout runs from the app's first read: a client trickling its body would
    otherwise hold its connection for ever (the server bounds only the request head).
    """

    def __init__(self, app: ASGIApp, max_body_bytes: int, timeout: float) -> None:
        self.app = app
        self.max_body_bytes = max_body_bytes
        self.timeout = timeout

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        for name, value in scope["headers"]:
            if name == b"content-length" and (
                not value.isdigit() or int(value) > self.max_body_bytes
            ):
                response = error_response(Request(scope), 413, "Content Too Large")
                await response(scope, receive, send)
                return
        received = 0
        deadline: float | None = None
        complete = False

        async def limited_receive() -> Message:
            nonlocal received, deadline, complete
            if complete:  # what follows the body (a disconnect) may take any time
                return await receive()
            if deadline is None:
                deadline = asyncio.get_running_loop().time() + self.timeout
            try:
                async with asyncio.timeout_at(deadline):
                    message = await receive()
            except TimeoutError:
                # The rest of the body may still come: nothing more is read on this connection.
                raise HTTPException(408, "Request body too slow", {"Connection": "close"}) from None
            complete = message["type"] != "http.request" or not message.get("more_body", False)
            received += len(message.get("body", b""))
            if received > self.max_body_bytes:
                raise HTTPException(status_code=413, detail="Content Too Large")
            return message

        await self.app(scope, limited_receive, send)


def install_error_handlers(app: FastAPI, *, debug: bool) -> None:
    @app.exception_handler(HTTPException)
    async def http_error(request: Request, exc: HTTPException) -> JSONResponse:
        if isinstance(exc.detail, str):
            return error_response(request, exc.status_code, exc.detail, headers=exc.headers)
        try:
            phrase = HTTPStatus(exc.status_code).phrase
        except ValueError:  # a code of the service's own, such as 499
            phrase = "Error"
        # A structured detail (`HTTPException(409, detail={"code": ...})`) is for the client.
        detail = jsonable_encoder(exc.detail)
        return error_response(request, exc.status_code, phrase, details=detail, headers=exc.headers)

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
        # Echo where and why, never the rejected input: it may be huge or hostile.
        details = [
            {"loc": list(e["loc"]), "msg": e["msg"], "type": e["type"]} for e in exc.errors()
        ]
        return error_response(request, 422, "Request validation failed", details=details)

    @app.exception_handler(Exception)
    async def unhandled_error(request: Request, exc: Exception) -> JSONResponse:
        # Logged by the server with its stack trace; the client only gets the {% if cookiecutter.use_tracing %}ids{% else %}request id{% endif %}.
        details = traceback.format_exception(exc) if debug else None
        # The server closes the connection after an unhandled exception: saying so keeps
        # a client from sending its next request down it (a reset, a 502 behind a proxy).
        headers = {"Connection": "close"}
        # Sent from outside the request middleware, which adds X-Request-ID to the others.
        if request_id := getattr(request.state, "request_id", None):
            headers["X-Request-ID"] = request_id
        return error_response(
            request, 500, "Internal Server Error", details=details, headers=headers
        )
