"""Example routes showing {% if cookiecutter.__signals %}each signal{% else %}the error format{% endif %} at work: replace them with the service's real API."""

{% if not cookiecutter.use_json_logging -%}
import logging
{% endif -%}
from typing import Annotated, cast

import httpx
from fastapi import APIRouter, Depends, HTTPException, Path, Request
{%- if cookiecutter.use_json_logging %}
from loguru import logger
{%- endif %}
from pydantic import BaseModel, Field

from ..settings import Settings, get_settings, without_credentials

router = APIRouter(prefix="/api", tags=["items"])
{%- if not cookiecutter.use_json_logging %}
logger = logging.getLogger(__name__)
{%- endif %}


class NewItem(BaseModel):
    name: str = Field(min_length=1, max_length=200)


class Item(NewItem):
    id: int


class DownstreamResult(BaseModel):
    url: str
    status: int
    elapsed_ms: float


def http_client(request: Request) -> httpx.AsyncClient:
    return cast(httpx.AsyncClient, request.app.state.http_client)


@router.get("/items/{item_id}")
async def get_item(item_id: Annotated[int, Path(ge=1, le=1_000_000)]) -> Item:
    """A route with a path parameter{% if cookiecutter.__signals %}: requests are labelled `/api/items/{item_id}`, not by id{% else %}, validated: out of range is a 422{% endif %}."""
    return Item(id=item_id, name=f"item-{item_id}")


@router.post("/items", status_code=201)
async def create_item(item: NewItem) -> Item:
    """A route with a JSON body: bodies over APP_MAX_BODY_BYTES get a 413."""
    return Item(id=1, name=item.name)


@router.get("/downstream")
async def call_downstream(
    client: Annotated[httpx.AsyncClient, Depends(http_client)],
    settings: Annotated[Settings, Depends(get_settings)],
) -> DownstreamResult:
    """Calls another HTTP service; {% if cookiecutter.use_tracing %}the call carries `traceparent`, so the trace continues there{% else %}a failed call is a 502{% endif %}."""
    url = str(settings.downstream_url or f"http://127.0.0.1:{settings.port}/api/items/1")
    headers = {}
    if settings.downstream_token is not None:
        headers["Authorization"] = f"Bearer {settings.downstream_token.get_secret_value()}"
    shown = without_credentials(url)
    try:
        response = await client.get(url, headers=headers)
    except httpx.HTTPError as exc:
{%- if cookiecutter.use_json_logging %}
        logger.bind(downstream_url=shown).warning("downstream call failed: {}", type(exc).__name__)
{%- else %}
        logger.warning("downstream call to %s failed: %s", shown, type(exc).__name__)
{%- endif %}
        raise HTTPException(status_code=502, detail="Downstream service unavailable") from exc
    return DownstreamResult(
        url=shown, status=response.status_code, elapsed_ms=response.elapsed.total_seconds() * 1000
    )


@router.get("/fail")
async def fail() -> None:
    """Fails on purpose, to see a 5xx in the logs{% if cookiecutter.use_metrics and cookiecutter.use_tracing %}, the error ratio and a trace{% elif cookiecutter.use_metrics %} and the error ratio{% elif cookiecutter.use_tracing %} and a trace{% endif %}."""
    raise RuntimeError("deliberate failure for demonstrations")
