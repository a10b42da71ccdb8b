"""Metrics: names, labels, cardinality and exposition, read from a real server."""

import asyncio
import random
import time

import httpx
from prometheus_client import REGISTRY
from prometheus_client.openmetrics.parser import text_string_to_metric_families as parse_openmetrics
from prometheus_client.parser import text_string_to_metric_families as parse_text
from prometheus_client.samples import Sample

from {{ cookiecutter.package_name }}.observability.metrics import event_loop_monitor

from conftest import StartServer, free_port

OPENMETRICS = "application/openmetrics-text; version=1.0.0"


def samples(text: str, name: str) -> list[Sample]:
    return [s for family in parse_text(text) for s in family.samples if s.name == name]


def count(text: str, route: str, status: str, method: str = "GET", error_type: str = "") -> float:
    labels = {
        "http_request_method": method,
        "http_route": route,
        "http_response_status_code": status,
        "url_scheme": "http",
        "error_type": error_type,  # empty: no label at all once Prometheus has scraped it
    }
    return sum(
        s.value
        for s in samples(text, "http_server_request_duration_seconds_count")
        if s.labels == labels
    )


def test_red_metrics_use_route_templates(start_server: StartServer) -> None:
    # Nothing listens on the downstream port: /api/downstream answers 502 without raising.
    server = start_server({"APP_DOWNSTREAM_URL": f"http://127.0.0.1:{free_port()}/"})
    for item in range(1, 6):
        httpx.get(f"{server.url}/api/items/{item}")
    httpx.get(f"{server.url}/api/fail")
    httpx.get(f"{server.url}/api/downstream")
    httpx.get(f"{server.url}/does/not/exist")
    httpx.request("PURGE", f"{server.url}/api/items/1")
    httpx.get(f"{server.url}/health")
    text = httpx.get(f"{server.url}/metrics").text

    assert count(text, "/api/items/{item_id}", "200") == 5
    assert count(text, "/api/fail", "500", error_type="RuntimeError") == 1
    assert count(text, "/api/downstream", "502", error_type="502") == 1
    assert count(text, "__unmatched__", "404") == 1
    assert count(text, "/api/items/{item_id}", "405", method="_OTHER") == 1
    routes = {
        s.labels["http_route"] for s in samples(text, "http_server_request_duration_seconds_count")
    }
    assert not {"/health", "/metrics"} & routes, "probes and scrapes must not be recorded"
    buckets = {s.labels["le"] for s in samples(text, "http_server_request_duration_seconds_bucket")}
    assert {"0.005", "0.1", "1.0", "10.0", "+Inf"} <= buckets
    active = {tuple(sorted(s.labels.items())) for s in samples(text, "http_server_active_requests")}
    assert (("http_request_method", "GET"), ("url_scheme", "http")) in active
    (build,) = samples(text, "app_build_info")
    assert build.value == 1
    assert build.labels["version"]
    assert samples(text, "process_resident_memory_bytes")
    (lag,) = samples(text, "app_event_loop_lag_seconds")
    assert 0 <= lag.value < 1
    assert samples(text, "python_gc_objects_collected_total")


def test_event_loop_lag_keeps_a_stall_for_the_window() -> None:
    """A scrape sees a stall of the loop whenever it happened within the window."""

    def lag() -> float:
        return REGISTRY.get_sample_value("app_event_loop_lag_seconds") or 0.0

    async def scenario() -> list[float]:
        seen = []
        async with event_loop_monitor(interval=0.05, window=1.0):
            await asyncio.sleep(0.3)
            seen.append(lag())  # a healthy loop
            time.sleep(0.3)  # a blocking call in async code  # noqa: ASYNC251
            await asyncio.sleep(0.5)  # the loop runs freely again, many checks later
            seen.append(lag())
            await asyncio.sleep(1.2)  # the stall has left the window
            seen.append(lag())
        return seen

    healthy, after_stall, later = asyncio.run(scenario())
    # Loose bounds: a busy test machine delays timers too, though not by a stall's 300 ms.
    assert healthy < 0.15
    assert 0.2 < after_stall < 1.0, "the stall is still the worst of the window"
    assert later < 0.15


def test_exposition_follows_accept_header(start_server: StartServer) -> None:
    server = start_server()
    httpx.get(f"{server.url}/api/items/1")
    classic = httpx.get(f"{server.url}/metrics")
    assert classic.headers["content-type"].startswith("text/plain")
    openmetrics = httpx.get(f"{server.url}/metrics", headers={"Accept": OPENMETRICS})
    assert openmetrics.headers["content-type"].startswith("application/openmetrics-text")
    assert openmetrics.text.endswith("# EOF\n")
    families = {f.name for f in parse_openmetrics(openmetrics.text)}
    assert "http_server_request_duration_seconds" in families


def label_sets(text: str, name: str) -> set[tuple[tuple[str, str], ...]]:
    return {tuple(sorted(s.labels.items())) for s in samples(text, name)}


def test_a_scan_of_random_paths_and_methods_stays_bounded(start_server: StartServer) -> None:
    server = start_server()
    before = httpx.get(f"{server.url}/metrics").text
    rng = random.Random(20261126)  # noqa: S311 - reproducible test data, not a secret
    # Methods HTTP parsers accept; unknown words are refused by the server before the app.
    methods = ["GET", "POST", "PUT", "DELETE", "PATCH", "OPTIONS", "HEAD", "PURGE", "MKCOL", "LOCK"]
    with httpx.Client(base_url=server.url) as client:
        for _ in range(10_000):
            path = "/" + "/".join(f"{rng.getrandbits(32):x}" for _ in range(rng.randint(1, 4)))
            client.request(rng.choice(methods), path)
        started = time.perf_counter()
        scrape = client.get("/metrics")
        elapsed = time.perf_counter() - started
    after = scrape.text
    name = "http_server_request_duration_seconds_count"
    new = label_sets(after, name) - label_sets(before, name)
    assert {dict(labels)["http_route"] for labels in new} == {"__unmatched__"}
    assert len(new) <= 10, f"{len(new)} new request series after 10 000 random requests"
    active = label_sets(after, "http_server_active_requests") - label_sets(
        before, "http_server_active_requests"
    )
    assert len(active) <= 10
    print(f"/metrics after the scan: {len(scrape.content)} bytes in {elapsed * 1000:.1f} ms")
    # The size is what the scan could have inflated; the time is reported (benchmarks measure
    # speed) and bounded only against a hang, as a loaded test machine stalls for a while.
    assert len(scrape.content) < 2 * len(before.encode()) + 32_000
    assert elapsed < 5


def test_metrics_on_a_separate_port(start_server: StartServer) -> None:
    metrics_port = free_port()
    server = start_server({"APP_METRICS_PORT": str(metrics_port)})
    httpx.get(f"{server.url}/api/items/1")
    assert httpx.get(f"{server.url}/metrics").status_code == 404
    text = httpx.get(f"http://127.0.0.1:{metrics_port}/metrics").text
    assert count(text, "/api/items/{item_id}", "200") == 1
