"""A deliberately tangled app to prove route templates survive FastAPI's router tree.

Included routers with prefixes, a router nested in a router, a mounted
sub-application and a plain Starlette mount: each must be labelled with its
full template, whatever FastAPI version stores the tree.
"""

from fastapi import APIRouter, FastAPI
from starlette.responses import PlainTextResponse

from {{ cookiecutter.package_name }}.observability.context import (
    RequestContextMiddleware,
    RequestInfo,
    RouteResolver,
)


def create() -> FastAPI:
    app = FastAPI()
    seen: list[str] = []

    inner = APIRouter(prefix="/inner")

    @inner.get("/things/{thing_id}")
    async def thing(thing_id: int) -> dict[str, int]:
        return {"id": thing_id}

    outer = APIRouter(prefix="/outer")
    outer.include_router(inner)

    @outer.get("/plain")
    async def plain() -> dict[str, str]:
        return {"ok": "yes"}

    sub = FastAPI()

    @sub.get("/orders/{order_id}")
    async def order(order_id: int) -> dict[str, int]:
        return {"id": order_id}

    async def static(scope: object, receive: object, send: object) -> None:
        response = PlainTextResponse("static")
        await response(scope, receive, send)  # type: ignore[arg-type]

    @app.get("/seen")
    async def routes_seen() -> list[str]:
        return seen

    app.include_router(outer, prefix="/v1")
    app.mount("/sub", sub)
    app.mount("/files", static)

    def record(info: RequestInfo) -> None:
        if info.path != "/seen":
            seen.append(f"{info.method} {info.route} {info.status}")

    app.add_middleware(
        RequestContextMiddleware,
        on_finish=[record],
        resolve_route=RouteResolver(lambda: app.routes),
    )
    return app
