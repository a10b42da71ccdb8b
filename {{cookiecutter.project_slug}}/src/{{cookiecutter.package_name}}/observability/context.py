{%- set observed = cookiecutter.use_json_logging or cookiecutter.use_metrics or cookiecutter.use_tracing -%}
{%- if observed -%}
"""Per-request context read by {{ cookiecutter.__signals }}.

One pure-ASGI middleware (never BaseHTTPMiddleware, which breaks context propagation and
costs half the throughput of a small endpoint) assigns the request id, times the request,
resolves the route template once and hands a `RequestInfo` to the signals that observe
requests. Each signal module registers its own callbacks: turning a signal off deletes its module.
"""

import logging
import os
import re
from collections.abc import Callable, Iterable, Sequence
from contextvars import ContextVar
from dataclasses import dataclass
from time import perf_counter
from typing import {% if cookiecutter.use_tracing %}TYPE_CHECKING, {% endif %}Any

from fastapi.routing import iter_route_contexts
from starlette.routing import BaseRoute, Match, Mount
from starlette.types import ASGIApp, Message, Receive, Scope, Send
{%- if cookiecutter.use_tracing %}

if TYPE_CHECKING:
    from .tracing import ServerSpans
{%- endif %}

# Probes{% if cookiecutter.use_metrics %} and scrapes{% endif %} are left out of the {{ cookiecutter.__signals }}:
# they would drown the signal they are there to collect.
EXCLUDED_PATHS = frozenset({ {%- if cookiecutter.use_metrics %}"/metrics", {% endif %}"/health", "/health/ready"})
UNMATCHED_ROUTE = "__unmatched__"
KNOWN_METHODS = frozenset(
    {"CONNECT", "DELETE", "GET", "HEAD", "OPTIONS", "PATCH", "POST", "PUT", "QUERY", "TRACE"}
)
OTHER_METHOD = "_OTHER"  # OpenTelemetry's value for methods outside the known set
{%- else -%}
"""The request id: every response carries one, and so does every error body.

A pure-ASGI middleware (never BaseHTTPMiddleware, which breaks context
propagation and costs half the throughput of a small endpoint) assigns it.
"""

import logging
import os
import re
from contextvars import ContextVar

from starlette.types import ASGIApp, Message, Receive, Scope, Send
{%- endif %}

# A caller's X-Request-ID is kept only if it is a short token: anything else (newlines, quotes,
# megabytes) is replaced and never reaches {% if cookiecutter.use_json_logging %}a log line or {% endif %}a response header.
_REQUEST_ID_RE = re.compile(r"[A-Za-z0-9._:\-]{1,128}")
_REQUEST_ID_HEADER = b"x-request-id"

request_id_var: ContextVar[str | None] = ContextVar("request_id", default=None)

_logger = logging.getLogger(__name__)
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
    trace_id: str | None = None
    span_id: str | None = None
    sampled: bool = False
{%- endif %}


class RouteResolver:
    """Finds the template of the route serving a request: `/items/{item_id}`.

    It walks FastAPI's public `iter_route_contexts`, which flattens included routers with
    their prefixes (FastAPI >= 0.137 no longer copies them into `app.routes`), and descends
    into mounted applications. Matches are cached: the usual request costs one dict lookup.
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


class RequestContextMiddleware:
    """Request id, timing and route of every HTTP request in one pass (excluded paths: the id).
    The signals see each finished request through `on_finish`{% if cookiecutter.use_tracing %}; `spans` records its server span{% endif %}."""

    def __init__(
        self,
        app: ASGIApp,
        *,
        on_start: Sequence[Callable[[str, str], None]] = (),  # (method, scheme)
        on_finish: Sequence[Callable[[RequestInfo], None]] = (),
        resolve_route: Callable[[Scope], str],
{%- if cookiecutter.use_tracing %}
        spans: "ServerSpans | None" = None,
{%- endif %}
    ) -> None:
        self.app = app
        self.on_start = tuple(on_start)
        self.on_finish = tuple(on_finish)
        self.resolve_route = resolve_route
{%- if cookiecutter.use_tracing %}
        self.spans = spans
{%- endif %}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request_id = _request_id(scope)
        token = request_id_var.set(request_id)
        observed = scope["path"] not in EXCLUDED_PATHS
        if observed:
            method = scope["method"] if scope["method"] in KNOWN_METHODS else OTHER_METHOD
            # Resolved before the app runs: routing rewrites root_path inside mounts.
            route = self.resolve_route(scope)
            scheme = scope.get("scheme", "http")
            for started in self.on_start:
                started(method, scheme)
{%- if cookiecutter.use_tracing %}
            spans = self.spans
            span = spans.start(scope, method, route) if spans is not None else None
{%- endif %}
        status = 500  # what the client gets if the app raises before responding
        error_type: str | None = None
        start = perf_counter()
        sent: float | None = None  # when the response's last byte was handed to the server

        async def send_with_id(message: Message) -> None:
            nonlocal status, sent
            if message["type"] == "http.response.start":
                status = message["status"]
                _add_request_id(message, request_id)
            await send(message)
            if message["type"] == "http.response.body" and not message.get("more_body", False):
                sent = perf_counter()

        raised = False
        try:
            await self.app(scope, receive, send_with_id)
        except BaseException as exc:
            error_type = type(exc).__qualname__
            if sent is None or not isinstance(exc, Exception):
                raised = True
                raise
            # The client had its whole response (a background task failed). Re-raised, it would
            # reach the server, which closes the connection after an exception: a client already
            # reusing it for its next request would get a reset (a 502 behind a load balancer).
            _logger.error("Exception after the response was sent", exc_info=exc)
        finally:
            if observed:
                now = perf_counter()
                if error_type is None and status >= 500:
                    error_type = str(status)  # failed without raising: the status names the error
                info = RequestInfo(
                    method=method,
                    scheme=scheme,
                    route=route,
                    path=scope["path"],
                    status=status,
                    error_type=error_type,
                    # The client's wait: background tasks run after the response, off the clock.
                    duration=(now if sent is None else sent) - start,
                    client=scope["client"][0] if scope.get("client") else None,
                    user_agent=_header(scope, b"user-agent"),
                    request_id=request_id,
                )
{%- if cookiecutter.use_tracing %}
                if spans is not None:
                    ago = now - (sent or now)  # the span ends with the response
                    ids = spans.end(span, status, error_type, finished_ago=ago, keep_current=raised)
                    if ids is not None:
                        info.trace_id, info.span_id, info.sampled = ids
{%- endif %}
                for finished in self.on_finish:
                    finished(info)
            # What the app raised goes on to the error handler and the server's exception
            # log line, both after this returns, in this request's own task: the request's
            # ids stay set for them.
            if not raised:
                request_id_var.reset(token)
{%- else %}


class RequestContextMiddleware:
    """The id of every HTTP request, sent back in `X-Request-ID`."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request_id = _request_id(scope)
        token = request_id_var.set(request_id)
        sent = False

        async def send_with_id(message: Message) -> None:
            nonlocal sent
            if message["type"] == "http.response.start":
                _add_request_id(message, request_id)
            await send(message)
            if message["type"] == "http.response.body" and not message.get("more_body", False):
                sent = True

        try:
            await self.app(scope, receive, send_with_id)
        except Exception as exc:
            if not sent:
                raise
            # A background task, after the whole response. Re-raised, it would reach the server,
            # which closes the connection: a client reusing it would get a reset it did not cause.
            _logger.error("Exception after the response was sent", exc_info=exc)
        finally:
            request_id_var.reset(token)
{%- endif %}


def _request_id(scope: Scope) -> str:
    """The caller's id if it is a short token, else a fresh one; kept in the scope's state."""
    request_id = _header(scope, _REQUEST_ID_HEADER)
    if request_id is None or not _REQUEST_ID_RE.fullmatch(request_id):
        request_id = os.urandom(16).hex()
    scope.setdefault("state", {})["request_id"] = request_id
    return request_id


def _add_request_id(start: Message, request_id: str) -> None:
    """Add `X-Request-ID` to a response's headers, unless a mounted app's 500 has it (errors.py)."""
    headers = start.setdefault("headers", [])
    if start["status"] < 500 or all(name.lower() != _REQUEST_ID_HEADER for name, _ in headers):
        headers.append((_REQUEST_ID_HEADER, request_id.encode()))


def _header(scope: Scope, name: bytes) -> str | None:
    for key, value in scope["headers"]:
        if key == name:
            return str(value.decode("latin-1"))
    return None
