"""The typical peer stack, as tutorials assemble it, serving the same trivial route.

- prometheus-fastapi-instrumentator for RED metrics and /metrics;
- opentelemetry-instrumentation-fastapi for a server span per request, behind a
  BatchSpanProcessor (exporting to a no-op exporter: the export is not what is measured);
- an `@app.middleware("http")` (a BaseHTTPMiddleware) writing a JSON access line
  with python-json-logger to stdout.

FastAPI's own native telemetry stays off, so that exactly these three are measured.
Run: `uvicorn peer_app:app` from this folder, in a venv with those packages.
"""

import logging
import sys
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Annotated

from fastapi import FastAPI, Path, Request, Response
from opentelemetry import trace
from opentelemetry.instrumentation.fastapi import FastAPIInstrumentor
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter, SpanExportResult
from prometheus_fastapi_instrumentator import Instrumentator
from pydantic import BaseModel
from pythonjsonlogger.json import JsonFormatter


class NoOpExporter(SpanExporter):
    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        return SpanExportResult.SUCCESS


provider = TracerProvider(resource=Resource.create({"service.name": "peer-stack"}))
provider.add_span_processor(BatchSpanProcessor(NoOpExporter()))
trace.set_tracer_provider(provider)

handler = logging.StreamHandler(sys.stdout)
handler.setFormatter(JsonFormatter("%(asctime)s %(levelname)s %(name)s %(message)s"))
access = logging.getLogger("access")
access.handlers = [handler]
access.setLevel(logging.INFO)
access.propagate = False

app = FastAPI(telemetry={"tracing": False, "metrics": False, "logs": False})


class Item(BaseModel):
    id: int
    name: str


@app.get("/health")
async def health() -> dict[str, str]:
    return {"status": "ok"}


@app.get("/api/items/{item_id}")
async def get_item(item_id: Annotated[int, Path(ge=1, le=1_000_000)]) -> Item:
    return Item(id=item_id, name=f"item-{item_id}")


@app.middleware("http")
async def access_log(request: Request, call_next: Callable[[Request], Awaitable[Response]]) -> Response:
    start = time.perf_counter()
    response = await call_next(request)
    context = trace.get_current_span().get_span_context()
    access.info(
        f"{request.method} {request.url.path} {response.status_code}",
        extra={
            "method": request.method,
            "path": request.url.path,
            "status": response.status_code,
            "duration_ms": round((time.perf_counter() - start) * 1000, 3),
            "client": request.client.host if request.client else None,
            "user_agent": request.headers.get("user-agent"),
            "trace_id": format(context.trace_id, "032x") if context.is_valid else None,
        },
    )
    return response


Instrumentator(excluded_handlers=["/metrics", "/health"]).instrument(app).expose(app)
FastAPIInstrumentor.instrument_app(app, tracer_provider=provider, excluded_urls="/health,/metrics")
