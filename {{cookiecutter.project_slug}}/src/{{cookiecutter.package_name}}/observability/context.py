"""Per-request context shared by logs, metrics and traces.

One pure-ASGI middleware (never BaseHTTPMiddleware, which breaks context
propagation and costs half the throughput of a small endpoint) assigns the
request id, times the request, resolves the route template once and hands a
`RequestInfo` to the signals that observe requests. Each signal module
registers its own callbacks, so turning a signal off is deleting its module.
"""

import os
import re
from collections.abc import Callable, Iterable, Sequence
from contextvars import ContextVar, Token
from dataclasses import dataclass
from time import perf_counter
from typing import Any

from fastapi.routing import iter_route_contexts
from opentelemetry import context as otel_context
from opentelemetry import propagate, trace
from opentelemetry.context import Context
from opentelemetry.trace import Span, SpanContext, SpanKind, StatusCode
from starlette.routing import BaseRoute, Match, Mount
from starlette.types import ASGIApp, Message, Receive, Scope, Send

# Requests to these paths are neither logged, measured nor traced: probes and
# scrapes would drown the signal they are there to collect.
EXCLUDED_PATHS = frozenset({"/metrics", "/health", "/health/ready"})
UNMATCHED_ROUTE = "__unmatched__"
KNOWN_METHODS = frozenset(
    {"CONNECT", "DELETE", "GET", "HEAD", "OPTIONS", "PATCH", "POST", "PUT", "QUERY", "TRACE"}
)
OTHER_METHOD = "_OTHER"  # OpenTelemetry's value for methods outside the known set

# A caller's X-Request-ID is kept only if it is a short token; anything else
# (newlines, quotes, megabytes) is replaced, so it can never reach a log line
# or a response header raw.
_REQUEST_ID_RE = re.compile(r"[A-Za-z0-9._:\-]{1,128}")
_REQUEST_ID_HEADER = b"x-request-id"

request_id_var: ContextVar[str | None] = ContextVar("request_id", default=None)


def current_request_id() -> str | None:
    return request_id_var.get()


def current_trace_ids() -> tuple[str, str] | None:
    """(trace_id, span_id) of the active span in W3C hex form, if there is one."""
    context = trace.get_current_span().get_span_context()
    if not context.is_valid:
        return None
    return format(context.trace_id, "032x"), format(context.span_id, "016x")


@dataclass(slots=True)
class RequestInfo:
    """What the signals need to know about one finished request."""

    method: str
    route: str
    path: str
    status: int
    duration: float
    client: str | None
    user_agent: str | None
    request_id: str
    trace_id: str | None
    span_id: str | None
    sampled: bool


RequestStarted = Callable[[str], None]
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


class RequestContextMiddleware:
    """Request id, timing, route and the server span for every HTTP request, in one pass.

    With a `tracer`, this middleware records the request's server span itself:
    one span, named and attributed as the HTTP semantic conventions say, at
    about half the cost of FastAPI's native per-request telemetry (measured in
    benchmarks/). Without one, it reads whatever span is current.
    """

    def __init__(
        self,
        app: ASGIApp,
        *,
        on_start: Sequence[RequestStarted] = (),
        on_finish: Sequence[RequestFinished] = (),
        resolve_route: Callable[[Scope], str],
        tracer: trace.Tracer | None = None,
    ) -> None:
        self.app = app
        self.on_start = tuple(on_start)
        self.on_finish = tuple(on_finish)
        self.resolve_route = resolve_route
        self.tracer = tracer
        # Only these headers can carry a parent context (traceparent, tracestate, baggage...).
        self._propagation_headers = frozenset(
            name.lower().encode("latin-1") for name in propagate.get_global_textmap().fields
        )

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request_id = _incoming_request_id(scope) or os.urandom(16).hex()
        scope.setdefault("state", {})["request_id"] = request_id
        token = request_id_var.set(request_id)
        if scope["path"] in EXCLUDED_PATHS:
            try:
                await self.app(scope, receive, send)
            finally:
                request_id_var.reset(token)
            return

        method = scope["method"] if scope["method"] in KNOWN_METHODS else OTHER_METHOD
        # Resolved before the app runs: routing rewrites root_path inside mounts.
        route = self.resolve_route(scope)
        for started in self.on_start:
            started(method)
        status = 500  # what the client gets if the app raises before responding
        span: Span | None = None
        error_type: str | None = None
        if self.tracer is not None:
            span, span_token, span_context = self._start_span(self.tracer, scope, method, route)
        start = perf_counter()

        async def send_with_ids(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                headers = message.setdefault("headers", [])
                headers.append((_REQUEST_ID_HEADER, request_id.encode()))
            await send(message)

        try:
            await self.app(scope, receive, send_with_ids)
        except BaseException as exc:
            error_type = type(exc).__qualname__
            if span is not None and span_context.is_valid:
                # Its error handler runs outside this middleware, once the span is detached.
                scope["state"]["trace_id"] = format(span_context.trace_id, "032x")
            raise
        finally:
            duration = perf_counter() - start
            if span is None:
                span_context = trace.get_current_span().get_span_context()
            valid = span_context.is_valid
            info = RequestInfo(
                method=method,
                route=route,
                path=scope["path"],
                status=status,
                duration=duration,
                client=scope["client"][0] if scope.get("client") else None,
                user_agent=_header(scope, b"user-agent"),
                request_id=request_id,
                trace_id=format(span_context.trace_id, "032x") if valid else None,
                span_id=format(span_context.span_id, "016x") if valid else None,
                sampled=valid and span_context.trace_flags.sampled,
            )
            for finished in self.on_finish:
                finished(info)
            if span is not None:
                _end_span(span, status, error_type)
                otel_context.detach(span_token)
            request_id_var.reset(token)

    def _start_span(
        self, tracer: trace.Tracer, scope: Scope, method: str, route: str
    ) -> tuple[Span, Token[Context], SpanContext]:
        carrier = {
            name.decode("latin-1"): value.decode("latin-1")
            for name, value in scope["headers"]
            if name in self._propagation_headers
        }
        parent = propagate.extract(carrier) if carrier else None
        attributes: dict[str, Any] = {
            "http.request.method": method,
            "url.scheme": scope.get("scheme", "http"),
            "url.path": scope["path"],
            "network.protocol.version": scope.get("http_version", "1.1"),
        }
        if method == OTHER_METHOD:
            attributes["http.request.method_original"] = scope["method"]
        if route != UNMATCHED_ROUTE:
            attributes["http.route"] = route
        server = scope.get("server")
        if server:
            attributes["server.address"] = server[0]
            if server[1] is not None:
                attributes["server.port"] = server[1]
        name = method if route == UNMATCHED_ROUTE else f"{method} {route}"
        span = tracer.start_span(name, parent, kind=SpanKind.SERVER, attributes=attributes)
        token = otel_context.attach(trace.set_span_in_context(span, parent))
        return span, token, span.get_span_context()


def _end_span(span: Span, status: int, error_type: str | None) -> None:
    if span.is_recording():
        span.set_attribute("http.response.status_code", status)
        if error_type is not None or status >= 500:
            span.set_attribute("error.type", error_type or str(status))
            span.set_status(StatusCode.ERROR)
    span.end()


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
