"""The service's name, version and environment, as the OpenTelemetry resource of its spans.

A resource detector (entry point `opentelemetry_resource_detector`), which the
SDK loads whenever a resource is made, even while the SDK itself is being
imported: this module imports nothing of the service's until it detects.
"""

from opentelemetry.sdk.resources import Resource, ResourceDetector


class ServiceResourceDetector(ResourceDetector):
    """The settings' values; OTEL_RESOURCE_ATTRIBUTES and OTEL_SERVICE_NAME win over them.

    The SDK merges its own `otel` detector, which reads those, after this one.
    """

    def detect(self) -> Resource:
        from ..settings import get_settings  # noqa: PLC0415 - see the module docstring

        settings = get_settings()
        return Resource(
            {
                "service.name": settings.service_name,
                "service.version": settings.version,
                "deployment.environment.name": settings.environment,
            }
        )
