{%- set observed = cookiecutter.use_json_logging or cookiecutter.use_metrics or cookiecutter.use_tracing -%}
{%- if observed -%}
"""Per-request context read by {{ cookiecutter.__signals }}.

One pure-ASGI middleware (never BaseHTTPMiddleware, which breaks context
propagation and costs half the throughput of a small endpoint) assigns the
request id, times the request, resolves the route template once and hands a
`RequestInfo` to the signals that observe requests. Each signal module
registers its own callbacks, so turning a signal off is deleting its module.
"""
{%- else -%}
"""The request id: every response carries one, and so does every error body.

A pure-ASGI middleware (never BaseHTTPMiddleware, which breaks context
propagation and costs half the throughput of a small endpoint) assigns it.
"""
{%- endif %}

import logging
import os
import re
{%- if observed %}
from collections.abc import Callable, Iterable, Sequence
{%- endif %}
from contextvars import ContextVar
{%- if observed %}
from dataclasses import dataclass
from time import perf_counter
{%- if cookiecutter.use_tracing %}
from typing import Any, Protocol
{%- else %}
from typing import Any
{%- endif %}

from fastapi.routing import iter_route_contexts
from starlette.routing import BaseRoute, Match, Mount
from starlette.types import ASGIApp, Message, Receive, Scope, Send
{%- else %}

from starlette.types import ASGIApp, Message, Receive, Scope, Send
{%- endif %}
{%- if observed %}
{%- if cookiecutter.use_json_logging and cookiecutter.use_metrics and cookiecutter.use_tracing %}

# Requests to these paths are neither logged, measured nor traced: probes and
# scrapes would drown the signal they are there to collect.
{%- else %}

# Requests to these paths are left out of the {{ cookiecutter.__signals }}:
# probes{% if cookiecutter.use_metrics %} and scrapes{% endif %} would drown the signal they are there to collect.
{%- endif %}
EXCLUDED_PATHS = frozenset({ {%- if cookiecutter.use_metrics %}"/metrics", {% endif %}"/health", "/health/ready"})
UNMATCHED_ROUTE = "__unmatched__"
KNOWN_METHODS = frozenset(
    {"CONNECT", "DELETE", "GET", "HEAD", "OPTIONS", "PATCH", "POST", "PUT", "QUERY", "TRACE"}
)
OTHER_METHOD = "_OTHER"  # OpenTelemetry's value for methods outside the known set
{%- endif %}

# A caller's X-Request-ID is kept only if it is a short token; anything else
# (newlines, quotes, megabytes) is replaced, so it can never reach {% if cookiecutter.use_json_logging %}a log line
# or {% endif %}a response header raw.
_REQUEST_ID_RE = re.compile(r"[A-Za-z0-9._:\-]{1,128}")
_REQUEST_ID_HEADER = b"x-request-id"

request_id_var: ContextVar[str | None] = ContextVar("request_id", default=None)

_logger = logging.getLogger(__name__)


def current_request_id() -> str | None:
    return request_id_var.get()

{%- if observed %}


@dataclass(slots=True)
class RequestInfo:
    """What the signals need to know about one finished request."""

    method: str
    scheme: str
    route: str
    path: str
    status: int
    error_type: str | None  # the exception's class, or the status code of a 5xx
    duration: float
    client: str | None
    user_agent: str | None
    request_id: str
{%- if cookiecutter.use_tracing %}
    trace_id: str | None
    span_id: str | None
    sampled: bool


# (trace_id, span_id, sampled) in W3C hex form.
TraceIds = tuple[str, str, bool]
{%- endif %}


RequestStarted = Callable[[str, str], None]  # (method, scheme)
RequestFinished = Callable[[RequestInfo], None]


class RouteResolver:
    """Finds the template of the route serving a request: `/items/{item_id}`.

    It walks FastAPI's public `iter_route_contexts`, which flattens included
    routers with their prefixes (FastAPI >= 0.137 no longer copies them into
    `app.routes`), and descends into mounted applications. Matches are cached
    per method and path, so the usual request costs one dict lookup.
    """

    _CACHE_SIZE = 2048

    def __init__(self, routes: Callable[[], Sequence[BaseRoute]]) -> None:
        self._routes = routes
        self._cache: dict[tuple[str, str], str] = {}

    def __call__(self, scope: Scope) -> str:
        key = (scope["method"], scope["path"])
        route = self._cache.get(key)
        if route is None:
            route, cacheable = self._resolve(self._routes(), scope, "")
            if cacheable:
                if len(self._cache) >= self._CACHE_SIZE:
                    self._cache.clear()
                self._cache[key] = route
        return route

    def _resolve(self, routes: Iterable[Any], scope: Scope, prefix: str) -> tuple[str, bool]:
        partial: str | None = None
        for context in iter_route_contexts(list(routes)):
            match, child_scope = context.matches(scope)
            if match is Match.NONE:
                continue
            template = prefix + (context.path_format or "")
            if isinstance(context.original_route, Mount):
                mount_prefix = template.removesuffix("/{path}")
                inner, found = self._resolve(
                    context.original_route.routes, {**scope, **child_scope}, mount_prefix
                )
                template = inner if found else mount_prefix + "/{path}"
            if match is Match.FULL:
                return template, True
            partial = partial or template  # path matched, method did not: a 405
        return (partial, True) if partial is not None else (UNMATCHED_ROUTE, False)


{%- if cookiecutter.use_tracing %}


class ServerSpans(Protocol):
    """Records the server span of each request; tracing.py has the implementation."""

    def start(self, scope: Scope, method: str, route: str) -> Any:
        """Start the request's span and make it current; returns what `end` needs."""

    def end(
        self,
        started: Any,
        status: int,
        error_type: str | None,
        *,
        finished_ago: float = 0.0,
        keep_current: bool = False,
    ) -> TraceIds | None:
        """End the span, failed if `error_type` is set (as in `RequestInfo`).

        The span ends `finished_ago` seconds ago, when the response was sent.
        With `keep_current` the span stays current for the rest of the task.
        Returns (trace_id, span_id, sampled) of the request, if it has a trace.
        """
{%- endif %}
{%- endif %}


class RequestContextMiddleware:
{%- if observed %}
    """Request id, timing and route of every HTTP request, in one pass.

{%- if cookiecutter.use_tracing %}

    The signals see each finished request through `on_finish`; `spans`, when
    tracing is on, records the request's server span around the app.
{%- else %}

    The signals see each finished request through `on_finish`.
{%- endif %}
    """

    def __init__(
        self,
        app: ASGIApp,
        *,
        on_start: Sequence[RequestStarted] = (),
        on_finish: Sequence[RequestFinished] = (),
        resolve_route: Callable[[Scope], str],
{%- if cookiecutter.use_tracing %}
        spans: ServerSpans | None = None,
{%- endif %}
    ) -> None:
        self.app = app
        self.on_start = tuple(on_start)
        self.on_finish = tuple(on_finish)
        self.resolve_route = resolve_route
{%- if cookiecutter.use_tracing %}
        self.spans = spans
{%- endif %}
{%- else %}
    """The id of every HTTP request, sent back in `X-Request-ID`.

    The caller's id is kept if it is a short token, else a fresh one is made.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app
{%- endif %}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request_id = _incoming_request_id(scope) or os.urandom(16).hex()
        scope.setdefault("state", {})["request_id"] = request_id
        token = request_id_var.set(request_id)
{%- if observed %}
        if scope["path"] in EXCLUDED_PATHS:
            try:
                await _pass_through(self.app, scope, receive, send, request_id)
            finally:
                request_id_var.reset(token)
            return

        method = scope["method"] if scope["method"] in KNOWN_METHODS else OTHER_METHOD
        # Resolved before the app runs: routing rewrites root_path inside mounts.
        route = self.resolve_route(scope)
        scheme = scope.get("scheme", "http")
        for started in self.on_start:
            started(method, scheme)
        status = 500  # what the client gets if the app raises before responding
        error_type: str | None = None
{%- if cookiecutter.use_tracing %}
        spans = self.spans
        span = spans.start(scope, method, route) if spans is not None else None
{%- endif %}
        start = perf_counter()
        sent: float | None = None  # when the response's last byte was handed to the server

        async def send_with_ids(message: Message) -> None:
            nonlocal status, sent
            if message["type"] == "http.response.start":
                status = message["status"]
                _add_request_id(message, request_id)
            await send(message)
            if message["type"] == "http.response.body" and not message.get("more_body", False):
                sent = perf_counter()

        raised = False
        try:
            await self.app(scope, receive, send_with_ids)
        except BaseException as exc:
            error_type = type(exc).__qualname__
            if sent is None or not isinstance(exc, Exception):
                raised = True
                raise
            _log_after_response(exc)
        finally:
            now = perf_counter()
            # The client's wait: background tasks run after the response, off the clock.
            duration = (now if sent is None else sent) - start
            if error_type is None and status >= 500:
                error_type = str(status)  # failed without raising: the status names the error
{%- if cookiecutter.use_tracing %}
            ids = (
                spans.end(
                    span, status, error_type, finished_ago=now - (sent or now), keep_current=raised
                )
                if spans is not None
                else None
            )
{%- endif %}
            info = RequestInfo(
                method=method,
                scheme=scheme,
                route=route,
                path=scope["path"],
                status=status,
                error_type=error_type,
                duration=duration,
                client=scope["client"][0] if scope.get("client") else None,
                user_agent=_header(scope, b"user-agent"),
                request_id=request_id,
{%- if cookiecutter.use_tracing %}
                trace_id=ids[0] if ids is not None else None,
                span_id=ids[1] if ids is not None else None,
                sampled=ids is not None and ids[2],
{%- endif %}
            )
            for finished in self.on_finish:
                finished(info)
            # What the app raised goes on to the error handler and the server's exception
            # log line, both after this returns, in this request's own task: the request's
            # ids stay set for them.
            if not raised:
                request_id_var.reset(token)
{%- else %}
        try:
            await _pass_through(self.app, scope, receive, send, request_id)
        finally:
            request_id_var.reset(token)
{%- endif %}


async def _pass_through(
    app: ASGIApp, scope: Scope, receive: Receive, send: Send, request_id: str
) -> None:
    """Run the app, adding the `X-Request-ID` header to its response."""
    sent = False

    async def send_with_id(message: Message) -> None:
        nonlocal sent
        if message["type"] == "http.response.start":
            _add_request_id(message, request_id)
        await send(message)
        if message["type"] == "http.response.body" and not message.get("more_body", False):
            sent = True

    try:
        await app(scope, receive, send_with_id)
    except Exception as exc:
        if not sent:
            raise
        _log_after_response(exc)


def _add_request_id(start: Message, request_id: str) -> None:
    """Add `X-Request-ID` to a response's headers, unless a mounted app's 500 has it (errors.py)."""
    headers = start.setdefault("headers", [])
    if start["status"] < 500 or all(name.lower() != _REQUEST_ID_HEADER for name, _ in headers):
        headers.append((_REQUEST_ID_HEADER, request_id.encode()))


def _log_after_response(exc: Exception) -> None:
    """Log what failed once the client had its whole response (a background task).

    Re-raised, it would reach the server, which closes the connection after an
    exception; a client that already reuses it for its next request would get
    a reset (a 502 behind a load balancer) for a failure that was not its own.
    """
    _logger.error("Exception after the response was sent", exc_info=exc)


def _header(scope: Scope, name: bytes) -> str | None:
    for key, value in scope["headers"]:
        if key == name:
            return str(value.decode("latin-1"))
    return None


def _incoming_request_id(scope: Scope) -> str | None:
    value = _header(scope, _REQUEST_ID_HEADER)
    if value is not None and _REQUEST_ID_RE.fullmatch(value):
        return value
    return None
