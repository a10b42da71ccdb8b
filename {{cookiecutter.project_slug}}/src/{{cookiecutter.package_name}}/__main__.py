"""Run the service: `python -m {{ cookiecutter.package_name }}`.

One worker runs uvicorn directly, the default: in containers, scale with
replicas. `APP_WORKERS` > 1 runs gunicorn with uvicorn workers instead, each
building its own app{% if cookiecutter.use_tracing %} (and tracer provider){% endif %} after the fork; nothing is
preloaded in the parent.
"""

import asyncio
import math
import os
import signal
import sys
from http import HTTPStatus
{%- if cookiecutter.use_metrics %}
from pathlib import Path
{%- endif %}
from types import FrameType
from typing import Any

import uvicorn
from gunicorn.app.base import BaseApplication
{%- if cookiecutter.use_json_logging %}
from gunicorn.glogging import Logger as GunicornLogger
{%- endif %}
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
from uvicorn_worker import UvicornWorker

from .settings import Settings, configuration_errors, get_settings{% if cookiecutter.use_tracing %}, span_flush_seconds{% endif %}

APP = "{{ cookiecutter.package_name }}.main:create_app"
{%- if cookiecutter.use_metrics %}
DEFAULT_MULTIPROC_DIR = "/tmp/prometheus-multiproc"  # noqa: S108 - a tmpfs in the container
{%- endif %}


class BoundedHeadProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol, with a bound on each request head's size and time.

    httptools buffers a header of any size (a 32 MB one goes through) and uvicorn
    bounds only its h11 parser's; nor does uvicorn time a head out, so a client
    that sends nothing or trickles a head holds its connection for ever.
    - Every read that leaves the head incomplete is counted: past
      `APP_MAX_HEADER_BYTES` the client gets a 431 and the connection is
      closed. A head completed by the read that crosses the limit still goes
      through, so one holds at most the limit plus a read (256 KiB); a read
      in which a pipelined request begins counts whole.
    - A head still incomplete `APP_HEADER_TIMEOUT_SECONDS` after its first
      read gets a 408; a new connection that sends nothing is closed after
      uvicorn's keep-alive timeout, as an idle one is after a response.
    A head that arrives in one read, the usual case, costs one comparison.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        settings = get_settings()
        self.max_head_bytes = settings.max_header_bytes
        self.head_timeout = settings.header_timeout_seconds
        self.head_bytes = 0
        self.reading_head = False
        self.head_deadline: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self.timeout_keep_alive_task = self.loop.call_later(
            self.timeout_keep_alive, self.timeout_keep_alive_handler
        )

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel_head_deadline()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        if self.reading_head and not self.transport.is_closing():
            self.head_bytes += len(data)
            if self.head_bytes > self.max_head_bytes:
                self._refuse(431, f"Request head over {self.max_head_bytes} bytes refused.")
            elif self.head_deadline is None:
                self.head_deadline = self.loop.call_later(self.head_timeout, self._head_too_slow)

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self.reading_head, self.head_bytes = True, 0

    def on_headers_complete(self) -> None:
        self.reading_head = False
        self._cancel_head_deadline()
        super().on_headers_complete()

    def _head_too_slow(self) -> None:
        self.head_deadline = None
        if self.reading_head and not self.transport.is_closing():
            self._refuse(408, f"Request head not complete within {self.head_timeout:g} s.")

    def _cancel_head_deadline(self) -> None:
        if self.head_deadline is not None:
            self.head_deadline.cancel()
            self.head_deadline = None

    def _refuse(self, status: int, reason: str) -> None:
        # Imported here, in a worker: the gunicorn parent imports nothing of the app.
        from .errors import refusal_body  # noqa: PLC0415
{%- if cookiecutter.use_json_logging %}
        from .observability.context import request_id_var  # noqa: PLC0415
{%- endif %}

        self._cancel_head_deadline()
        request_id = os.urandom(16).hex()
        client = self.client[0] if self.client else "unknown"
{%- if cookiecutter.use_json_logging %}
        token = request_id_var.set(request_id)  # the log line carries the id the client gets
        try:
            self.logger.warning("%s Client %s.", reason, client)
        finally:
            request_id_var.reset(token)
{%- else %}
        self.logger.warning("%s Client %s.", reason, client)
{%- endif %}
        body = refusal_body(status, request_id)
        head = (
            f"HTTP/1.1 {status} {HTTPStatus(status).phrase}\r\n"
            "content-type: application/json\r\n"
            f"content-length: {len(body)}\r\n"
            f"x-request-id: {request_id}\r\n"
            "connection: close\r\n\r\n"
        )
        self.transport.write(head.encode() + body)
        self.transport.close()


class Worker(UvicornWorker):
    """uvicorn worker: bounded request heads, no uvicorn access log (the app writes its own)."""

    CONFIG_KWARGS: dict[str, Any] = {  # noqa: RUF012 - gunicorn reads it as a class attribute
        **UvicornWorker.CONFIG_KWARGS,
        "http": BoundedHeadProtocol,
        "access_log": False,
        "server_header": False,
    }

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # As with one worker: requests in flight get this long, then the lifespan's
        # shutdown flushes. gunicorn's graceful_timeout bounds the whole stop.
        self.config.timeout_graceful_shutdown = math.ceil(get_settings().graceful_timeout_seconds)

    def init_signals(self) -> None:
        super().init_signals()
        # uvicorn re-raises SIGTERM once it has shut down, under the handler found at
        # start: exit 0, running what atexit runs (the last log lines), rather than
        # dying by the signal.
        signal.signal(signal.SIGTERM, _stopped)
{%- if cookiecutter.use_json_logging %}


class RoutedGunicornLogger(GunicornLogger):
    """Sends gunicorn's own log lines through the service's log sink."""

    def setup(self, cfg: Any) -> None:
        super().setup(cfg)
        for log in (self.error_log, self.access_log):
            log.handlers = []
            log.propagate = True
{%- endif %}


class MultiWorkerServer(BaseApplication):
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        super().__init__()

    def load_config(self) -> None:
        settings = self.settings
        options: dict[str, Any] = {
            # An IPv6 address in brackets: gunicorn splits host and port at the last colon.
            "bind": f"[{settings.host}]:{settings.port}"
            if ":" in settings.host and not settings.host.startswith("[")
            else f"{settings.host}:{settings.port}",
            "workers": settings.workers,
            "worker_class": Worker,
            # The workers' own drain, then their lifespan shutdown.
            "graceful_timeout": math.ceil(settings.graceful_timeout_seconds) + _shutdown_seconds(),
            "keepalive": settings.keep_alive_seconds,
            "preload_app": False,
            # gunicorn's runtime control socket (worker count, reload, stop) under $HOME:
            # a management interface nobody asked for, failing on a read-only filesystem.
            "control_socket_disable": True,
{%- if cookiecutter.use_json_logging %}
            "logger_class": RoutedGunicornLogger,
{%- endif %}
{%- if cookiecutter.use_metrics %}
            "child_exit": _child_exit,
{%- endif %}
        }
        for key, value in options.items():
            self.cfg.set(key, value)

    def load(self) -> Any:
        # Runs in each worker after the fork.
        from .main import create_app  # noqa: PLC0415

        return create_app()
{%- if cookiecutter.use_metrics %}


def _child_exit(server: Any, worker: Any) -> None:
    # Drop the dead worker's live gauges; its counters stay in the totals.
    from prometheus_client.multiprocess import mark_process_dead  # noqa: PLC0415

    mark_process_dead(worker.pid)


def _prepare_multiprocess_dir() -> None:
    """Point prometheus_client at an empty directory before any worker starts.

    The variable must be set before prometheus_client is imported (it picks its
    storage then), and stale files from an earlier run would be merged in.
    The parent process never imports the metrics module: it creates no samples.
    """
    path = Path(os.environ.setdefault("PROMETHEUS_MULTIPROC_DIR", DEFAULT_MULTIPROC_DIR))
    path.mkdir(parents=True, exist_ok=True)
    # Only the client library's sample files: the directory may hold other things.
    for stale in path.glob("*.db"):
        stale.unlink()


def _serve_merged_metrics(host: str, port: int) -> None:
    """`APP_METRICS_PORT` with several workers: the parent serves it, for all of them.

    Each worker would try to bind the port, and all but the first would fail to
    boot. The parent's listener merges the workers' sample files, as /metrics
    does on the service port; a port already taken stops the start before any
    worker is forked.
    """
    # Imported only now that PROMETHEUS_MULTIPROC_DIR is set.
    from prometheus_client import CollectorRegistry, start_http_server  # noqa: PLC0415
    from prometheus_client.multiprocess import MultiProcessCollector  # noqa: PLC0415

    registry = CollectorRegistry()
    MultiProcessCollector(registry)
    start_http_server(port, host, registry)
{%- endif %}


def _shutdown_seconds() -> int:
    """What a worker's lifespan shutdown may take once its requests drained{% if cookiecutter.use_tracing %}: the span
    flush, bounded by OTEL_BSP_EXPORT_TIMEOUT (milliseconds), and a second for the rest.{% else %}.{% endif %}"""
{%- if cookiecutter.use_tracing %}
    return math.ceil(span_flush_seconds()) + 1
{%- else %}
    return 1
{%- endif %}


def _stopped(signum: int, frame: FrameType | None) -> None:
    sys.exit(0)


def main() -> None:
    errors = configuration_errors()
    if errors:
        for error in errors:
            print(f"invalid setting {error}", file=sys.stderr)  # logging is not set up yet
        sys.exit(2)
    settings = get_settings()
    if settings.workers == 1:
        # uvicorn drains requests and runs the shutdown on SIGTERM, then re-raises the
        # signal under the handler found at start: this one, so that a requested stop
        # exits 0 instead of looking like a crash (143) to the orchestrator.
        signal.signal(signal.SIGTERM, _stopped)
        uvicorn.run(
            APP,
            factory=True,
            host=settings.host,
            port=settings.port,
            workers=1,  # not uvicorn's own multiprocessing, which WEB_CONCURRENCY would turn on
{%- if cookiecutter.use_json_logging %}
            log_config=None,  # the app routes uvicorn's loggers into its own sink
            access_log=False,  # replaced by the app's structured access line
{%- endif %}
            http=BoundedHeadProtocol,
            server_header=False,
            timeout_keep_alive=settings.keep_alive_seconds,
            timeout_graceful_shutdown=math.ceil(settings.graceful_timeout_seconds),
        )
        return
{%- if cookiecutter.use_json_logging %}
    from .observability.logging import configure_logging  # noqa: PLC0415

    configure_logging(settings)
{%- endif %}
{%- if cookiecutter.use_metrics %}
    _prepare_multiprocess_dir()
    if settings.metrics_port is not None:
        _serve_merged_metrics(settings.host, settings.metrics_port)
{%- endif %}
    MultiWorkerServer(settings).run()


if __name__ == "__main__":
    main()
