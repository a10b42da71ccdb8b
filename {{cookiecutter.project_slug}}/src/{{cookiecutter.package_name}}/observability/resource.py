"""The service's name, version and environment, as the OpenTelemetry resource of its spans.

A resource detector (entry point `opentelemetry_resource_detector`), which the
SDK loads whenever a resource is made, even while the SDK itself is being
imported: this module imports nothing of the service's until it detects.
"""

from opentelemetry.sdk.resources import Resource, ResourceDetector
from pydantic import ValidationError


class ServiceResourceDetector(ResourceDetector):
    """The settings' values; OTEL_RESOURCE_ATTRIBUTES and OTEL_SERVICE_NAME win over them
    (the SDK merges its own `otel` detector, which reads those, after this one)."""

    def detect(self) -> Resource:
        from ..settings import get_settings  # noqa: PLC0415 - see the module docstring

        try:
            settings = get_settings()
        except ValidationError:  # the start stops on it, in one line of its own (__main__.py)
            return Resource.get_empty()
        return Resource(
            {
                "service.name": settings.service_name,
                "service.version": settings.version,
                "deployment.environment.name": settings.environment,
            }
        )
