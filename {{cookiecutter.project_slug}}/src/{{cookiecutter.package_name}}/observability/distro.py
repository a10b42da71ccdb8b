"""The service's OpenTelemetry distro: its tracing defaults, however the service starts.

OpenTelemetry sets a Python process up in three steps: a distro sets defaults, a
configurator builds the SDK (provider, sampler, exporter, propagators) from the `OTEL_*`
variables, and every instrumentation package installed loads itself.
`opentelemetry-instrument python -m {{ cookiecutter.package_name }}` runs them before the service, `python -m {{ cookiecutter.package_name }}`
itself (tracing.py). With `OTEL_PYTHON_DISTRO={{ cookiecutter.package_name }}` both pick this distro, then
opentelemetry-distro's configurator, the SDK's standard setup: one provider, whichever way
the process started. Each default applies only where its variable is unset.
"""

import os
from typing import Any

from opentelemetry import propagate
from opentelemetry.distro import OpenTelemetryDistro
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

# The name of the service's entry points in pyproject.toml, which the OTEL_* variables name.
NAME = "{{ cookiecutter.package_name }}"

DEFAULTS = {
    "OTEL_TRACES_EXPORTER": "otlp",
    # The exporter installed speaks OTLP over HTTP with protobuf bodies.
    "OTEL_EXPORTER_OTLP_PROTOCOL": "http/protobuf",
    # {% if cookiecutter.use_metrics %}prometheus-client serves the metrics{% else %}The service exports no metrics{% endif %}, and the logs go to stdout.
    "OTEL_METRICS_EXPORTER": "none",
    "OTEL_LOGS_EXPORTER": "none",
    # The W3C trace context only, not baggage: any client can write a baggage header,
    # and services downstream may trust what it says (`user.id=admin`). Behind a
    # gateway that strips it, set OTEL_PROPAGATORS=tracecontext,baggage.
    "OTEL_PROPAGATORS": "tracecontext",
    # Every span in a trace speaks the stable HTTP conventions, the instrumentations' too.
    "OTEL_SEMCONV_STABILITY_OPT_IN": "http",
    # The request middleware records the one server span per request: these would add
    # a second one (and ASGI send spans). Every other installed instrumentation loads.
    "OTEL_PYTHON_DISABLED_INSTRUMENTATIONS": "fastapi,starlette,asgi",
    # opentelemetry-distro's configurator: the SDK's standard setup.
    "OTEL_PYTHON_CONFIGURATOR": "configurator",
    # The service's name, version and environment (resource.py); a list of your own must name it.
    "OTEL_EXPERIMENTAL_RESOURCE_DETECTORS": NAME,
    # The client writes the path, the query and the User-Agent: a megabyte header
    # must not become a megabyte span in the trace backend.
    "OTEL_ATTRIBUTE_VALUE_LENGTH_LIMIT": "4096",
}


class ServiceDistro(OpenTelemetryDistro):
    """opentelemetry-distro's distro, with the service's defaults instead of its own."""

    def _configure(self, **kwargs: Any) -> None:
        if "OTEL_PROPAGATORS" not in os.environ:
            # opentelemetry.propagate read the variable when it was imported, before any
            # distro ran: the default is set here too, through its public setter.
            propagate.set_global_textmap(TraceContextTextMapPropagator())
{%- if cookiecutter.use_metrics %}
        # The SDK's metrics of its own span pipeline (spans started, dropped from a full queue,
        # exported, failed) cost every request, sampled or not, 10-18 % more instructions: they
        # wait for the operator's OTEL_PYTHON_SDK_INTERNAL_METRICS_ENABLED=true. /metrics then
        # serves them, with installed instrumentations' metrics, through the reader this names.
        if os.environ.get("OTEL_PYTHON_SDK_INTERNAL_METRICS_ENABLED", "").strip().lower() == "true":
            os.environ.setdefault("OTEL_METRICS_EXPORTER", NAME)
{%- endif %}
        for variable, value in DEFAULTS.items():
            os.environ.setdefault(variable, value)
        # The export thread encodes a batch while holding the GIL: batches of 64 spans instead of
        # the SDK's 512 keep the pause a request can meet short. Not with a queue of the
        # operator's own, which may be smaller (the SDK refuses a larger batch).
        if "OTEL_BSP_MAX_QUEUE_SIZE" not in os.environ:
            os.environ.setdefault("OTEL_BSP_MAX_EXPORT_BATCH_SIZE", "64")
