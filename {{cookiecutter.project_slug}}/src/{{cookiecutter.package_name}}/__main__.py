"""Run the service: `python -m {{ cookiecutter.package_name }}`{% if cookiecutter.use_tracing %}, or `opentelemetry-instrument python -m {{ cookiecutter.package_name }}`{% endif %}.

uvicorn serves the app factory through its public API. One worker is the default: in
containers, scale with replicas. `APP_WORKERS` > 1 runs uvicorn's own worker processes, each
building its own app{% if cookiecutter.use_tracing %} and tracer provider{% endif %}. What a proxy or ingress does best stays there:
request-head size limits, slow clients and TLS (README.md, "Behind a proxy").
"""

import math
{%- if cookiecutter.use_metrics %}
import os
{%- endif %}
import signal
import sys
{%- if cookiecutter.use_metrics %}
from pathlib import Path
{%- endif %}

import uvicorn
{% if cookiecutter.use_json_logging %}
from .observability.logging import configure_logging
{%- endif %}
{%- if cookiecutter.use_tracing %}
from .observability.tracing import configure_tracing, started_by_another_distro
{%- endif %}
from .settings import configuration_errors, get_settings

APP = "{{ cookiecutter.package_name }}.main:create_app"
{%- if cookiecutter.use_metrics %}
DEFAULT_MULTIPROC_DIR = "/tmp/prometheus-multiproc"  # noqa: S108 - a tmpfs in the container


def _share_metrics(host: str, port: int | None) -> None:
    """Several workers: point prometheus_client at an empty directory before any starts.

    The workers inherit the variable, which prometheus_client reads when first imported (stale
    files would be merged in). With `APP_METRICS_PORT` this process serves the merged metrics.
    """
    path = Path(os.environ.setdefault("PROMETHEUS_MULTIPROC_DIR", DEFAULT_MULTIPROC_DIR))
    path.mkdir(parents=True, exist_ok=True)
    for stale in path.glob("*.db"):  # the client library's files only: the folder may hold others
        stale.unlink()
    if port is not None:
        # Imported only now that PROMETHEUS_MULTIPROC_DIR is set.
        from prometheus_client import CollectorRegistry, start_http_server  # noqa: PLC0415
        from prometheus_client.multiprocess import MultiProcessCollector  # noqa: PLC0415

        registry = CollectorRegistry()
        MultiProcessCollector(registry)
        start_http_server(port, host, registry)
{%- endif %}


def main() -> None:
    errors = configuration_errors()
{%- if cookiecutter.use_tracing %}
    if wanted := started_by_another_distro():
        errors.append(f"opentelemetry-instrument needs {wanted}")
{%- endif %}
    if errors:
        for error in errors:
            print(f"invalid setting {error}", file=sys.stderr)  # logging is not set up yet
        sys.exit(2)
    settings = get_settings()
{%- if cookiecutter.use_json_logging %}
    configure_logging(settings)  # for uvicorn's own lines{% if cookiecutter.use_tracing %} and the SDK's{% endif %}, before the app exists
{%- endif %}
{%- if cookiecutter.use_tracing %}
    try:
        configure_tracing()  # here, so that a bad OTEL_* value stops the start
    except Exception as error:  # whatever the SDK raises, in one line
        print(f"invalid OpenTelemetry setting: {error}", file=sys.stderr)
        sys.exit(2)
{%- endif %}
{%- if cookiecutter.use_metrics %}
    if settings.workers > 1:
        _share_metrics(settings.host, settings.metrics_port)
{%- endif %}
    # uvicorn drains requests and runs the shutdown on SIGTERM, then re-raises the
    # signal under the handler found at start: this one, so that a requested stop
    # exits 0 instead of looking like a crash (143) to the orchestrator.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    uvicorn.run(
        APP,
        factory=True,
        host=settings.host,
        port=settings.port,
        workers=settings.workers,  # explicit: WEB_CONCURRENCY, set by some platforms, is ignored
{%- if cookiecutter.use_json_logging %}
        log_config=None,  # the service routes uvicorn's loggers into its own sink
        access_log=False,  # the app writes its own access line
{%- endif %}
        server_header=False,
        timeout_keep_alive=settings.keep_alive_seconds,
        timeout_graceful_shutdown=math.ceil(settings.graceful_timeout_seconds),
    )


if __name__ == "__main__":
    main()
