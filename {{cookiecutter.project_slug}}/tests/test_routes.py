"""Route templates, resolved the same way under TestClient and a real uvicorn."""

import httpx
import pytest
from fastapi.testclient import TestClient

from conftest import StartServer
from routing_app import create

REQUESTS = [
    ("GET", "/v1/outer/inner/things/5", "GET /v1/outer/inner/things/{thing_id} 200"),
    ("GET", "/v1/outer/plain", "GET /v1/outer/plain 200"),
    ("GET", "/sub/orders/9", "GET /sub/orders/{order_id} 200"),
    ("GET", "/files/a/b.txt", "GET /files/{path} 200"),
    ("GET", "/nope/123", "GET __unmatched__ 404"),
    ("DELETE", "/v1/outer/plain", "DELETE /v1/outer/plain 405"),
    # Known to HTTP parsers, but not to OpenTelemetry's method list.
    ("PURGE", "/v1/outer/plain", "_OTHER /v1/outer/plain 405"),
]


def test_routes_under_testclient() -> None:
    with TestClient(create()) as client:
        for method, path, _ in REQUESTS:
            client.request(method, path)
        assert client.get("/seen").json() == [expected for _, _, expected in REQUESTS]


@pytest.mark.parametrize("repeat", [1, 2], ids=["cold", "cached"])
def test_routes_under_real_uvicorn(start_server: StartServer, repeat: int) -> None:
    server = start_server(
        module=[
            "uvicorn",
            "routing_app:create",
            "--factory",
            "--app-dir",
            ".",
            "--port",
            "{port}",
        ]
    )
    for _ in range(repeat):
        for method, path, _ in REQUESTS:
            httpx.request(method, f"{server.url}{path}")
    seen = httpx.get(f"{server.url}/seen").json()
    assert seen == [expected for _, _, expected in REQUESTS] * repeat
