"""Liveness and readiness probes{% if cookiecutter.__signals %} (kept out of {{ cookiecutter.__signals }}){% endif %}."""

from fastapi import APIRouter

router = APIRouter(prefix="/health", tags=["health"])


@router.get("")
async def live() -> dict[str, str]:
    """The process is up and serving: restart it if this stops answering."""
    return {"status": "ok"}


@router.get("/ready")
async def ready() -> dict[str, str]:
    """The service can take traffic: its startup has finished (the server answers nothing before).

    On SIGTERM the server stops accepting connections at once and lets the requests in flight
    finish, so this never answers "not ready": a load balancer that learns of the stop late
    needs the orchestrator's pre-stop delay (Kubernetes: a preStop `sleep`).
    """
    return {"status": "ready"}
