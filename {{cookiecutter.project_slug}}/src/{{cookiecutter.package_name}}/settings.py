{% if cookiecutter.use_tracing -%}
"""Every setting of the service, read from the environment (prefix ``APP_``).

Tracing is configured by the standard ``OTEL_*`` variables on top of these, read by the
OpenTelemetry SDK itself (observability/distro.py has the service's defaults).
"""
{%- else -%}
"""Every setting of the service, read from the environment (prefix ``APP_``)."""
{%- endif %}

from functools import lru_cache
{%- if cookiecutter.use_json_logging %}
from typing import Annotated, Literal
{%- endif %}

{%- set pydantic_names = ["AnyHttpUrl", "Field", "SecretStr", "ValidationError"] %}
{%- if cookiecutter.use_json_logging %}{% set pydantic_names = pydantic_names + ["BeforeValidator"] %}{% endif %}
{%- if cookiecutter.use_metrics %}{% set pydantic_names = pydantic_names + ["model_validator"] %}{% endif %}

import httpx
from pydantic import {{ pydantic_names | sort(case_sensitive=True) | join(", ") }}
from pydantic_settings import BaseSettings, SettingsConfigDict

from . import __version__
{%- if cookiecutter.use_json_logging %}

LogLevel = Annotated[
    Literal["TRACE", "DEBUG", "INFO", "SUCCESS", "WARNING", "ERROR", "CRITICAL"],
    BeforeValidator(lambda value: value.strip().upper() if isinstance(value, str) else value),
]
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
    # How long the shutdown waits for queued spans to reach the collector, once requests drained.
    span_flush_seconds: float = Field(default=5.0, gt=0)
{%- endif %}
{%- if cookiecutter.use_metrics %}

    @model_validator(mode="after")
    def _metrics_port_of_its_own(self) -> "Settings":
        if self.metrics_port == self.port:
            raise ValueError("APP_METRICS_PORT: must differ from APP_PORT, or be unset")
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
    return "; ".join(parts)
{%- endif %}


def without_credentials(url: str) -> str:
    """What logs and callers may see of a URL: no user:password@, no query (a signed URL's)."""
    return str(httpx.URL(url).copy_with(userinfo=b"", query=None))


def configuration_errors() -> list[str]:
    """What is wrong with the environment's settings, one line per variable (empty: nothing).

    Checked before the service starts: a bad value stops it with a line naming the variable, not
    a traceback. The lines never repeat the value: it may be a secret, or a URL's credentials.
    """
    errors: list[str] = []
    try:
        Settings()
    except ValidationError as error:
        for detail in error.errors():
            field = next((str(part) for part in detail["loc"] if isinstance(part, str)), "")
            message = detail["msg"].removeprefix("Value error, ")
            # A check of several fields (the model validator's) names none.
            errors.append(f"APP_{field.upper()}: {message}" if field else message)
    return errors
