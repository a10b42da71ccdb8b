{% if cookiecutter.use_tracing -%}
"""Every setting of the service, read from the environment (prefix ``APP_``).

Tracing is configured by the standard ``OTEL_*`` variables on top of these,
so that operators can use what they already know from other services.
"""
{%- else -%}
"""Every setting of the service, read from the environment (prefix ``APP_``)."""
{%- endif %}

{% if cookiecutter.use_tracing -%}
import os
{% endif -%}
from functools import lru_cache
{%- if cookiecutter.use_tracing %}
from importlib.metadata import entry_points
{%- endif %}
{%- if cookiecutter.use_json_logging or cookiecutter.use_tracing %}
from typing import Literal
{%- endif %}

{%- set pydantic_names = ["AnyHttpUrl", "Field", "SecretStr", "ValidationError"] %}
{%- if cookiecutter.use_json_logging or cookiecutter.use_tracing %}{% set pydantic_names = pydantic_names + ["field_validator"] %}{% endif %}
{%- if cookiecutter.use_metrics or cookiecutter.use_tracing %}{% set pydantic_names = pydantic_names + ["model_validator"] %}{% endif %}

import httpx
from pydantic import {{ pydantic_names | sort(case_sensitive=True) | join(", ") }}
from pydantic_core import ErrorDetails
from pydantic_settings import BaseSettings, SettingsConfigDict

from . import __version__
{%- if cookiecutter.use_json_logging %}

LogLevel = Literal["TRACE", "DEBUG", "INFO", "SUCCESS", "WARNING", "ERROR", "CRITICAL"]
{%- endif %}


class Settings(BaseSettings):
    # An empty variable (`APP_DOWNSTREAM_URL=`) means "use the default".
    model_config = SettingsConfigDict(
        env_prefix="APP_", env_file=".env", env_ignore_empty=True, extra="ignore"
    )
{%- set labelled = cookiecutter.use_json_logging or cookiecutter.use_tracing %}
{%- if labelled %}

    # What the service is and where it runs.
    service_name: str = "{{ cookiecutter.project_slug }}"
{%- else %}

    # What the service is.
{%- endif %}
    title: str = {{ cookiecutter.project_name | tojson }}
    description: str = {{ cookiecutter.description | tojson }}
    version: str = __version__
{%- if cookiecutter.use_metrics %}
    git_commit: str = "unknown"  # a label of app_build_info
{%- endif %}
{%- if labelled %}
    environment: str = "local"
{%- endif %}
    debug: bool = False
    # /docs, /redoc and /openapi.json; the pages load their scripts from a CDN.{% if cookiecutter.use_dockerfile %} The image
    # turns them off, the local compose stack back on.{% endif %}
    api_docs: bool = True

    # Server. Loopback unless told otherwise{% if cookiecutter.use_dockerfile %}: the image sets 0.0.0.0{% endif %}.
    host: str = "127.0.0.1"
    port: int = Field(default={{ cookiecutter.port }}, ge=1, le=65535)
    workers: int = Field(default=1, ge=1, le=64)
    graceful_timeout_seconds: float = Field(default=20.0, gt=0)
    # How long an idle connection stays open; behind a load balancer that reuses
    # connections, longer than its idle timeout, or it may send to a closing one (502).
    keep_alive_seconds: int = Field(default=5, ge=1, le=3600)
    max_body_bytes: int = Field(default=1_048_576, ge=1)
    # How long a request body may take to arrive once the app reads it (trickling clients).
    body_timeout_seconds: float = Field(default=30.0, gt=0)
    # Request line and headers together; httptools alone would buffer a head of any size.
    max_header_bytes: int = Field(default=65_536, ge=1024)
    # How long a started request head may take to arrive (slow-header clients hold connections).
    header_timeout_seconds: float = Field(default=10.0, gt=0)

    # The downstream HTTP service the demo route calls; None calls this service itself.
    downstream_url: AnyHttpUrl | None = None
    downstream_token: SecretStr | None = None
    downstream_timeout_seconds: float = Field(default=5.0, gt=0)
{%- if cookiecutter.use_json_logging %}

    # Logging: JSON lines for machines, or a readable console format for people.
    log_level: LogLevel = "INFO"
    log_format: Literal["json", "console"] = "json"
    log_max_value_length: int = Field(default=8192, ge=64)
    log_buffer_lines: int = Field(default=10_000, ge=100)
{%- endif %}
{%- if cookiecutter.use_metrics %}

    # Metrics: /metrics on the service port, or on a separate port kept off the public listener.
    metrics_port: int | None = Field(default=None, ge=1, le=65535)
{%- endif %}
{%- if cookiecutter.use_tracing %}

    # Tracing: FastAPI's per-operation spans (dependencies, endpoint, serialization) are opt-in.
    trace_operation_spans: bool = False
    # How much lower than the requests' the span export thread's CPU priority is (Linux nice
    # steps); 0 exports at the requests' priority. See observability/tracing.py.
    span_export_nice: int = Field(default=10, ge=0, le=19)
{%- endif %}
{%- if cookiecutter.use_json_logging %}

    @field_validator("log_level", mode="before")
    @classmethod
    def _upper_case_level(cls, value: object) -> object:
        return value.strip().upper() if isinstance(value, str) else value
{%- endif %}
{%- if cookiecutter.use_metrics %}

    @model_validator(mode="after")
    def _metrics_port_of_its_own(self) -> "Settings":
        if self.metrics_port == self.port:
            raise ValueError("APP_METRICS_PORT: must differ from APP_PORT, or be unset")
        return self
{%- endif %}


{%- if cookiecutter.use_tracing %}


# The service's own default (the SDK's is 30 s): it bounds the span flush at shutdown{% if cookiecutter.use_dockerfile %}, and the
# compose stop grace period is longer{% endif %}.
DEFAULT_SPAN_EXPORT_TIMEOUT_MS = 5000


class OtelEnvironment(BaseSettings):
    """The standard OTEL_* variables the SDK reads, checked before the service starts.

    The SDK would fail later with a traceback (a batch larger than the queue),
    fall back to a default with a warning (a timeout of `2.5`), or quietly do
    something else (a `console` or `grpc` exporter it does not have here).
    """

    model_config = SettingsConfigDict(env_prefix="OTEL_", env_ignore_empty=True, extra="ignore")

    traces_exporter: Literal["otlp", "none"] = "otlp"
    # The exporter installed speaks OTLP over HTTP with protobuf bodies.
    exporter_otlp_protocol: Literal["http/protobuf"] = "http/protobuf"
    exporter_otlp_traces_protocol: Literal["http/protobuf"] = "http/protobuf"
    exporter_otlp_endpoint: AnyHttpUrl | None = None
    exporter_otlp_traces_endpoint: AnyHttpUrl | None = None
    traces_sampler: str = "parentbased_always_on"
    traces_sampler_arg: float | None = Field(default=None, ge=0, le=1)
    propagators: str = "tracecontext"
    # Whole numbers, as the SDK parses them; milliseconds for the delay and the timeout.
    bsp_max_queue_size: int = Field(default=2048, ge=1)
    bsp_max_export_batch_size: int | None = Field(default=None, ge=1)
    bsp_schedule_delay: int = Field(default=5000, ge=1)
    bsp_export_timeout: int = Field(default=DEFAULT_SPAN_EXPORT_TIMEOUT_MS, ge=0)

    @field_validator(
        "bsp_max_queue_size",
        "bsp_max_export_batch_size",
        "bsp_schedule_delay",
        "bsp_export_timeout",
        mode="before",
    )
    @classmethod
    def _whole_number(cls, value: object) -> object:
        # Stricter than pydantic's own int, which takes "64.0": the SDK's int() does not.
        if isinstance(value, str) and not value.strip().lstrip("-").isdigit():
            raise ValueError("must be a whole number")
        return value

    @field_validator(
        "traces_exporter", "exporter_otlp_protocol", "exporter_otlp_traces_protocol", mode="before"
    )
    @classmethod
    def _lower_case(cls, value: object) -> object:
        return value.strip().lower() if isinstance(value, str) else value

    @field_validator("propagators")
    @classmethod
    def _known_propagators(cls, value: str) -> str:
        known = {entry.name for entry in entry_points(group="opentelemetry_propagator")}
        for name in (part.strip() for part in value.split(",")):
            if name not in known and name.lower() != "none":
                raise ValueError(
                    f"unknown propagator {name!r}; installed: {', '.join(sorted(known))}"
                )
        return value

    @model_validator(mode="after")
    def _batch_fits_the_queue(self) -> "OtelEnvironment":
        batch = self.bsp_max_export_batch_size
        if batch is not None and batch > self.bsp_max_queue_size:
            raise ValueError(
                "OTEL_BSP_MAX_EXPORT_BATCH_SIZE: must not exceed OTEL_BSP_MAX_QUEUE_SIZE"
            )
        return self
{%- endif %}


@lru_cache
def get_settings() -> Settings:
    return Settings()
{%- if cookiecutter.use_json_logging %}


def summary(settings: Settings) -> str:
    """What this process runs with, for its first log line: no secret, no URL credentials."""
    parts = [
        f"{settings.title} {settings.version}",
        f"environment {settings.environment}",
        f"listening on {settings.host}:{settings.port}",
        f"{settings.workers} worker(s)",
{%- if cookiecutter.use_metrics %}
        f"/metrics on port {settings.metrics_port or settings.port}",
{%- endif %}
    ]
    if settings.downstream_url is not None:
        parts.append(f"downstream {without_credentials(str(settings.downstream_url))}")
{%- if cookiecutter.use_tracing %}
    try:
        otel = OtelEnvironment()
    except ValidationError:  # `python -m` refuses to start; an app served otherwise goes on
        otel = None
    if os.environ.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        parts.append("tracing off (OTEL_SDK_DISABLED)")
    elif otel is None:
        parts.append("tracing with invalid OTEL_* settings")
    else:
        sampler = otel.traces_sampler + (
            f" {otel.traces_sampler_arg:g}" if otel.traces_sampler_arg is not None else ""
        )
        endpoint = otel.exporter_otlp_traces_endpoint or otel.exporter_otlp_endpoint
        target = without_credentials(str(endpoint)) if endpoint else "http://localhost:4318"
        sent = "sent nowhere" if otel.traces_exporter == "none" else f"sent over OTLP to {target}"
        parts.append(f"spans sampled {sampler}, {sent}")
{%- endif %}
    return "; ".join(parts)
{%- endif %}


def without_credentials(url: str) -> str:
    """What logs and callers may see of a URL: no user:password@, no query (a signed URL's)."""
    return str(httpx.URL(url).copy_with(userinfo=b"", query=None))
{%- if cookiecutter.use_tracing %}


def span_flush_seconds() -> float:
    """OTEL_BSP_EXPORT_TIMEOUT in seconds: how long an export, and the flush at shutdown, may take."""
    value = os.environ.get("OTEL_BSP_EXPORT_TIMEOUT", "").strip()
    try:
        return int(value or DEFAULT_SPAN_EXPORT_TIMEOUT_MS) / 1000
    except ValueError:  # refused at start by `python -m`; an app served otherwise goes on
        return DEFAULT_SPAN_EXPORT_TIMEOUT_MS / 1000
{%- endif %}


def configuration_errors() -> list[str]:
    """What is wrong with the environment's settings, one line per variable (empty: nothing).

    Checked before the service starts, so that a bad value stops it with a line
    naming the variable rather than a traceback. The lines never repeat the
    value: it may be a secret, or a URL with credentials in it.
    """
    errors: list[str] = []
{%- if cookiecutter.use_tracing %}
    # With the SDK off, nothing reads the OTEL_* variables a platform may have set.
    sdk_off = os.environ.get("OTEL_SDK_DISABLED", "").strip().lower() == "true"
    for model, prefix in ((Settings, "APP_"), (OtelEnvironment, "OTEL_"))[: 1 if sdk_off else 2]:
        try:
            model()
        except ValidationError as error:
            errors += [_describe(detail, prefix) for detail in error.errors()]
{%- else %}
    try:
        Settings()
    except ValidationError as error:
        errors += [_describe(detail, "APP_") for detail in error.errors()]
{%- endif %}
    return errors


def _describe(detail: ErrorDetails, prefix: str) -> str:
    field = next((str(part) for part in detail["loc"] if isinstance(part, str)), "")
    message = detail["msg"].removeprefix("Value error, ")
    return f"{prefix}{field.upper()}: {message}" if field else message  # a check of several
