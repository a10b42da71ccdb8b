"""The service as a developer extends it: background tasks{% if cookiecutter.use_tracing %}, a database, a span{% endif %} and a mounted app.

Served by uvicorn from test_extending.py{% if cookiecutter.use_tracing %} and test_tracing.py{% endif %}, with the settings of the environment.
"""

import asyncio
import logging

{% if cookiecutter.use_tracing -%}
import sqlalchemy
{% endif -%}
from fastapi import BackgroundTasks, FastAPI
{%- if cookiecutter.use_tracing %}
from opentelemetry import trace
{%- endif %}

from {{ cookiecutter.package_name }}.errors import install_error_handlers
from {{ cookiecutter.package_name }}.main import create_app

logger = logging.getLogger("extended_app")


def create() -> FastAPI:
    app = create_app()

    async def slow_task() -> None:
        await asyncio.sleep(0.5)

    async def failing_task() -> None:
        # Long enough for the client's next request on the connection to be waiting.
        await asyncio.sleep(0.2)
        raise RuntimeError("the background task failed")

    @app.get("/api/report")
    async def report(tasks: BackgroundTasks) -> dict[str, str]:
        tasks.add_task(slow_task)
        return {"report": "queued"}

    @app.get("/api/notify")
    async def notify(tasks: BackgroundTasks) -> dict[str, str]:
        tasks.add_task(failing_task)
        return {"notification": "queued"}

{%- if cookiecutter.use_tracing %}

    # Traced by opentelemetry-instrumentation-sqlalchemy, which is only installed: no code here.
    # Looked up now, not imported at the top: served by the uvicorn command, this module is
    # imported before the app factory sets tracing up (`python -m` sets it up first).
    engine = sqlalchemy.create_engine("sqlite://")
    tracer = trace.get_tracer("extended_app")

    @app.get("/api/stock/{item_id}")
    def stock(item_id: int) -> dict[str, int]:
        with tracer.start_as_current_span("count stock"), engine.connect() as connection:
            count = connection.execute(sqlalchemy.text("SELECT :n"), {"n": item_id}).scalar_one()
        return {"id": item_id, "stock": count}
{%- endif %}

    v2 = FastAPI()

    @v2.get("/widgets/{widget_id}")
    async def widget(widget_id: int) -> dict[str, int]:
        logger.warning("widget %d served", widget_id)
        return {"id": widget_id}

    @v2.get("/boom")
    async def boom() -> None:
        raise RuntimeError("the mounted app failed")

    install_error_handlers(v2, debug=False)  # as the README says
    app.mount("/v2", v2)
    return app
