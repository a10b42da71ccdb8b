{%- set observed = cookiecutter.use_json_logging or cookiecutter.use_metrics or cookiecutter.use_tracing -%}
"""The application factory: settings, then observability, then routes."""

import gc
{%- if cookiecutter.use_json_logging %}
import logging
{%- endif %}
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import httpx
from fastapi import FastAPI

from .api import health, items
from .errors import BodyLimit, install_error_handlers
{%- if cookiecutter.use_metrics or cookiecutter.use_tracing %}
from .observability import {{ ["metrics" if cookiecutter.use_metrics else "", "tracing" if cookiecutter.use_tracing else ""] | select | join(", ") }}
{%- endif %}
from .observability.context import RequestContextMiddleware{% if observed %}, RouteResolver{% endif %}
{%- if cookiecutter.use_json_logging %}
from .observability.logging import configure_logging, flush_logs, log_request
{%- endif %}
from .settings import Settings, get_settings{% if cookiecutter.use_json_logging %}, summary{% endif %}


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or get_settings()
{%- if cookiecutter.use_json_logging %}
    configure_logging(settings)
    started = summary(settings)
{%- endif %}
{%- if cookiecutter.use_tracing %}
    tracing.configure_tracing()  # once per process: a no-op under opentelemetry-instrument
    {% if cookiecutter.use_json_logging %}started += "; " + {% endif %}tracing.watch_export()
{%- endif %}

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
{%- if cookiecutter.use_metrics %}
        async with (
            metrics.event_loop_monitor(),
            httpx.AsyncClient(timeout=settings.downstream_timeout_seconds) as client,
        ):
{%- else %}
        async with httpx.AsyncClient(timeout=settings.downstream_timeout_seconds) as client:
{%- endif %}
            app.state.http_client = client
            # What startup built lives as long as the process. Frozen, it is left out of
            # the collector's full passes, each of which would otherwise walk all of it
            # and stall every request for about 30 ms.
            gc.collect()
            gc.freeze()
{%- if cookiecutter.use_json_logging %}
            logging.getLogger(__name__).info("started: %s", started)
{%- endif %}
            yield
{%- if cookiecutter.use_metrics %}
        metrics.forget_this_process()
{%- endif %}
{%- if cookiecutter.use_tracing %}
        tracing.flush_spans(settings.span_flush_seconds)
{%- endif %}
{%- if cookiecutter.use_json_logging %}
        flush_logs()
{%- endif %}

    app = FastAPI(
        title=settings.title,
        description=settings.description,
        version=settings.version,
        # Not `debug`: Starlette's debug page would replace the JSON error format, whose
        # handler (errors.py) adds the stack trace in debug mode instead.
        docs_url="/docs" if settings.api_docs else None,
        redoc_url="/redoc" if settings.api_docs else None,
        openapi_url="/openapi.json" if settings.api_docs else None,
        lifespan=lifespan,
        telemetry={% if cookiecutter.use_tracing %}tracing.telemetry_config(settings){% else %}{"tracing": False, "metrics": False, "logs": False}{% endif %},
    )
    # Routes that depend on get_settings see these settings, not a second copy from the environment.
    app.dependency_overrides[get_settings] = lambda: settings
    install_error_handlers(app, debug=settings.debug)
    app.add_middleware(
        BodyLimit, max_body_bytes=settings.max_body_bytes, timeout=settings.body_timeout_seconds
    )
{%- if observed %}
    app.add_middleware(
        RequestContextMiddleware,
{%- if cookiecutter.use_metrics %}
        on_start=[metrics.request_started],
{%- endif %}
{%- if cookiecutter.use_json_logging or cookiecutter.use_metrics %}
        on_finish=[{{ ["metrics.request_finished" if cookiecutter.use_metrics else "", "log_request" if cookiecutter.use_json_logging else ""] | select | join(", ") }}],
{%- endif %}
        resolve_route=RouteResolver(lambda: app.routes),
{%- if cookiecutter.use_tracing %}
        spans=tracing.ServerSpans(settings),
{%- endif %}
    )
{%- else %}
    app.add_middleware(RequestContextMiddleware)
{%- endif %}
{%- if cookiecutter.use_metrics %}
    metrics.setup_metrics(app, settings)
{%- endif %}
    app.include_router(health.router)
    app.include_router(items.router)
    return app
