{% if cookiecutter.use_tracing -%}
"""Every setting of the service, read from the environment (prefix ``APP_``).

Tracing is configured by the standard ``OTEL_*`` variables on top of these,
so that operators can use what they already know from other services.
"""
{%- else -%}
"""Every setting of the service, read from the environment (prefix ``APP_``)."""
{%- endif %}

from functools import lru_cache
{%- if cookiecutter.use_json_logging %}
from typing import Literal
{%- endif %}

from pydantic import AnyHttpUrl, Field, SecretStr
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


@lru_cache
def get_settings() -> Settings:
    return Settings()
