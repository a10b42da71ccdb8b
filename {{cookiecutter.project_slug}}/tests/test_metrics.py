"""Metrics: names, labels, cardinality and exposition, read from a real server."""

import httpx
from prometheus_client.openmetrics.parser import text_string_to_metric_families as parse_openmetrics
from prometheus_client.parser import text_string_to_metric_families as parse_text
from prometheus_client.samples import Sample

from conftest import StartServer, free_port

OPENMETRICS = "application/openmetrics-text; version=1.0.0"


def samples(text: str, name: str) -> list[Sample]:
    return [s for family in parse_text(text) for s in family.samples if s.name == name]


def count(text: str, route: str, status: str, method: str = "GET") -> float:
    return sum(
        s.value
        for s in samples(text, "http_server_request_duration_seconds_count")
        if s.labels
        == {"http_request_method": method, "http_route": route, "http_response_status_code": status}
    )


def test_red_metrics_use_route_templates(start_server: StartServer) -> None:
    server = start_server()
    for item in range(1, 6):
        httpx.get(f"{server.url}/api/items/{item}")
    httpx.get(f"{server.url}/api/fail")
    httpx.get(f"{server.url}/does/not/exist")
    httpx.request("PURGE", f"{server.url}/api/items/1")
    httpx.get(f"{server.url}/health")
    text = httpx.get(f"{server.url}/metrics").text

    assert count(text, "/api/items/{item_id}", "200") == 5
    assert count(text, "/api/fail", "500") == 1
    assert count(text, "__unmatched__", "404") == 1
    assert count(text, "/api/items/{item_id}", "405", method="_OTHER") == 1
    routes = {
        s.labels["http_route"] for s in samples(text, "http_server_request_duration_seconds_count")
    }
    assert not {"/health", "/metrics"} & routes, "probes and scrapes must not be recorded"
    buckets = {s.labels["le"] for s in samples(text, "http_server_request_duration_seconds_bucket")}
    assert {"0.005", "0.1", "1.0", "10.0", "+Inf"} <= buckets
    assert samples(text, "http_server_active_requests")
    (build,) = samples(text, "app_build_info")
    assert build.value == 1
    assert build.labels["version"]
    assert samples(text, "process_resident_memory_bytes")
    (lag,) = samples(text, "app_event_loop_lag_seconds")
    assert 0 <= lag.value < 1
    assert samples(text, "python_gc_objects_collected_total")


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


def test_random_paths_and_methods_stay_bounded(start_server: StartServer) -> None:
    server = start_server()
    before = httpx.get(f"{server.url}/metrics").text
    with httpx.Client(base_url=server.url) as client:
        for i in range(300):
            client.request(
                ["GET", "POST", "PURGE", "X-SCAN", "DELETE"][i % 5], f"/scan/{i}/{i * 7919}"
            )
    after = httpx.get(f"{server.url}/metrics").text
    series_before = {
        (s.name, tuple(sorted(s.labels.items()))) for f in parse_text(before) for s in f.samples
    }
    series_after = {
        (s.name, tuple(sorted(s.labels.items()))) for f in parse_text(after) for s in f.samples
    }
    new_routes = {
        s.labels["http_route"] for s in samples(after, "http_server_request_duration_seconds_count")
    }
    assert new_routes == {"__unmatched__"}
    # 3 method values (GET, POST, DELETE) + _OTHER, each one histogram's series, plus gauges.
    assert len(series_after - series_before) <= 4 * 18 + 4


def test_metrics_on_a_separate_port(start_server: StartServer) -> None:
    metrics_port = free_port()
    server = start_server({"APP_METRICS_PORT": str(metrics_port)})
    httpx.get(f"{server.url}/api/items/1")
    assert httpx.get(f"{server.url}/metrics").status_code == 404
    text = httpx.get(f"http://127.0.0.1:{metrics_port}/metrics").text
    assert count(text, "/api/items/{item_id}", "200") == 1
