"""One trace_id across all three signals: access log, exemplar and exported span."""

import json
import time

import httpx
from prometheus_client.openmetrics.parser import text_string_to_metric_families
from prometheus_client.samples import Sample

from conftest import Server, StartServer
from otlp_receiver import OtlpReceiver


def one_request(
    start_server: StartServer, receiver: OtlpReceiver, path: str, **env: str
) -> tuple[Server, list[Sample]]:
    """Serve one request, scrape in OpenMetrics, stop: the server and the route's buckets."""
    server = start_server(
        {
            "OTEL_SDK_DISABLED": "false",
            "OTEL_EXPORTER_OTLP_ENDPOINT": receiver.endpoint,
            "OTEL_BSP_SCHEDULE_DELAY": "50",
            "APP_LOG_FORMAT": "json",
            **env,
        }
    )
    assert httpx.get(f"{server.url}{path}").status_code == 200
    scrape = httpx.get(
        f"{server.url}/metrics",
        headers={"Accept": "application/openmetrics-text; version=1.0.0"},
    ).text
    assert server.stop() == 0
    buckets = [
        s
        for family in text_string_to_metric_families(scrape)
        for s in family.samples
        if s.name == "http_server_request_duration_seconds_bucket"
        and s.labels["http_route"] == "/api/items/{item_id}"
    ]
    assert buckets, "the request was measured"
    return server, buckets


def test_access_log_exemplar_and_span_share_the_trace_id(start_server: StartServer) -> None:
    with OtlpReceiver() as receiver:
        server, buckets = one_request(start_server, receiver, "/api/items/77")
        exemplars = [s.exemplar for s in buckets if s.exemplar is not None]
        assert len(exemplars) == 1
        exemplar_trace_id = exemplars[0].labels["trace_id"]

        access = [
            record
            for record in map(json.loads, server.lines)
            if record.get("logger") == "access" and record["path"] == "/api/items/77"
        ]
        assert len(access) == 1
        deadline = time.monotonic() + 5
        while not receiver.snapshot() and time.monotonic() < deadline:
            time.sleep(0.05)
        (span,) = receiver.snapshot()

        assert exemplar_trace_id == access[0]["trace_id"] == span.trace_id
        assert access[0]["span_id"] == span.span_id
        assert access[0]["trace_sampled"] is True


def test_unsampled_requests_carry_no_exemplar(start_server: StartServer) -> None:
    with OtlpReceiver() as receiver:
        server, buckets = one_request(
            start_server, receiver, "/api/items/78", OTEL_TRACES_SAMPLER="always_off"
        )
    assert all(s.exemplar is None for s in buckets), "an exemplar must point to a kept trace"
    assert receiver.snapshot() == []
    # The log line keeps the ids to correlate by, and says there is no trace to open.
    (access,) = [
        record
        for record in map(json.loads, server.lines)
        if record.get("logger") == "access" and record["path"] == "/api/items/78"
    ]
    assert access["trace_id"]
    assert access["trace_sampled"] is False
