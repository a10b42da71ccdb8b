{%- if cookiecutter.__signals -%}
"""Liveness and readiness probes (kept out of {{ cookiecutter.__signals }})."""
{%- else -%}
"""Liveness and readiness probes."""
{%- endif %}

from fastapi import APIRouter, Request, Response

router = APIRouter(prefix="/health", tags=["health"])


@router.get("")
async def live() -> dict[str, str]:
    """The process is up and serving: restart it if this stops answering."""
    return {"status": "ok"}


@router.get("/ready")
async def ready(request: Request, response: Response) -> dict[str, str]:
    """The service can take traffic: it has started and is not shutting down."""
    if getattr(request.app.state, "shutting_down", False):
        response.status_code = 503
        return {"status": "shutting down"}
    return {"status": "ready"}
