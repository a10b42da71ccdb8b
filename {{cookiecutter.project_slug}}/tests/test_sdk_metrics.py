"""The SDK's metrics of its own span pipeline on /metrics: off by default, one variable turns them on.

Counted by the SDK, read here from a real scrape and held against the spans a real OTLP
receiver decoded, or against a collector that never answers.
"""

import sys
import time
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from conftest import Server, StartServer
from otlp_receiver import OtlpReceiver, silent_collector

SWITCH = "OTEL_PYTHON_SDK_INTERNAL_METRICS_ENABLED"
LAUNCHERS = {
    "python -m": [],
    "opentelemetry-instrument": [str(Path(sys.executable).parent / "opentelemetry-instrument")],
}
Samples = dict[str, dict[tuple[tuple[str, str], ...], float]]


@pytest.fixture(autouse=True)
def no_inherited_metrics_exporter(monkeypatch: pytest.MonkeyPatch) -> None:
    """The distro of an app built in this process sets OTEL_METRICS_EXPORTER=none here."""
    monkeypatch.delenv("OTEL_METRICS_EXPORTER", raising=False)


def env(endpoint: str, **extra: str) -> dict[str, str]:
    return {
        "OTEL_SDK_DISABLED": "false",
        "OTEL_PYTHON_DISTRO": "{{ cookiecutter.package_name }}",
        "OTEL_EXPORTER_OTLP_ENDPOINT": endpoint,
        "OTEL_BSP_SCHEDULE_DELAY": "50",
        SWITCH: "true",
        **extra,
    }


def scrape(server: Server) -> Samples:
    """Sample name -> labels (the SDK's own, without the scope's) -> value, off /metrics."""
    samples: Samples = defaultdict(dict)
    for family in text_string_to_metric_families(httpx.get(f"{server.url}/metrics").text):
        for sample in family.samples:
            labels = tuple(
                sorted((k, v) for k, v in sample.labels.items() if not k.startswith("otel_scope_"))
            )
            samples[sample.name][labels] = sample.value
    return samples


def total(samples: dict[tuple[tuple[str, str], ...], float], **labels: str) -> float:
    """The sum of the samples whose labels include these (an empty value: the label is absent)."""
    return sum(
        value
        for key, value in samples.items()
        if all(dict(key).get(name, "") == wanted for name, wanted in labels.items())
    )


def scrape_until(server: Server, done: Callable[[Samples], bool], timeout: float = 10.0) -> Samples:
    """Scrapes until `done` holds (the last one after `timeout`, for the assertions to explain)."""
    deadline = time.monotonic() + timeout
    while not done(metrics := scrape(server)) and time.monotonic() < deadline:
        time.sleep(0.1)
    return metrics


def otel_names(metrics: Samples) -> list[str]:
    return [name for name in metrics if name.startswith("otel_") or name == "target_info"]


@pytest.mark.parametrize("exporter", [None, "none"])
def test_off_unless_switched_on_and_the_operators_exporter_wins(
    start_server: StartServer, exporter: str | None
) -> None:
    with OtlpReceiver() as receiver:
        if exporter is None:  # the switch off: the default
            server = start_server(env(receiver.endpoint, **{SWITCH: "false"}))
        else:  # the switch on, but the operator sends OpenTelemetry metrics nowhere
            server = start_server(env(receiver.endpoint, OTEL_METRICS_EXPORTER=exporter))
        assert httpx.get(f"{server.url}/api/items/1").status_code == 200
        metrics = scrape(server)
    assert "http_server_request_duration_seconds_count" in metrics
    assert otel_names(metrics) == []


@pytest.mark.parametrize("mode", LAUNCHERS)
def test_every_span_is_counted_from_start_to_export(start_server: StartServer, mode: str) -> None:
    with OtlpReceiver() as receiver:
        server = start_server(env(receiver.endpoint), launcher=LAUNCHERS[mode])
        with httpx.Client(base_url=server.url) as client:
            for i in range(20):
                assert client.get(f"/api/items/{i + 1}").status_code == 200
            assert client.get("/health").status_code == 200  # not traced, not counted
        # The exporter counts a batch once the receiver has answered for it.
        metrics = scrape_until(
            server, lambda m: total(m["otel_sdk_exporter_span_exported_total"], error_type="") >= 20
        )
        received = len(receiver.snapshot())
    assert received == 20
    started = metrics["otel_sdk_span_started_total"]
    assert total(started, otel_span_sampling_result="RECORD_AND_SAMPLE") == 20
    assert total(started, otel_span_sampling_result="DROP") == 0
    processed = metrics["otel_sdk_processor_span_processed_total"]
    assert total(processed, error_type="") == 20
    assert total(processed, error_type="queue_full") == 0
    assert total(metrics["otel_sdk_exporter_span_exported_total"], error_type="") == received
    assert total(metrics["otel_sdk_processor_span_queue_size"]) == 0
    # The resource of the spans, as Prometheus' info metric.
    (info,) = metrics["target_info"]
    assert dict(info)["service_name"] == "{{ cookiecutter.project_slug }}"


def test_spans_dropped_from_a_full_queue_are_counted(start_server: StartServer) -> None:
    # A collector that never answers, and a queue of 8: an export waits its 1 s timeout while
    # the requests go on, so most spans find the queue full.
    small_queue = {"OTEL_BSP_MAX_QUEUE_SIZE": "8", "OTEL_BSP_MAX_EXPORT_BATCH_SIZE": "4"}
    with silent_collector() as endpoint:
        server = start_server(env(endpoint, OTEL_EXPORTER_OTLP_TIMEOUT="1", **small_queue))
        with httpx.Client(base_url=server.url) as client:
            for i in range(100):
                assert client.get(f"/api/items/{i + 1}").status_code == 200

        def accounted(metrics: Samples) -> bool:
            # Every span is dropped, handed to the exporter or still queued; the export thread takes
            # a batch off the queue before it counts it, so a scrape may fall between the two.
            processed = metrics["otel_sdk_processor_span_processed_total"]
            queued = total(metrics["otel_sdk_processor_span_queue_size"])
            return total(processed) + queued == 100 and failed(metrics) > 0

        metrics = scrape_until(server, accounted)
        assert server.stop() == 0
    started = metrics["otel_sdk_span_started_total"]
    assert total(started, otel_span_sampling_result="RECORD_AND_SAMPLE") == 100
    processed = metrics["otel_sdk_processor_span_processed_total"]
    dropped = total(processed, error_type="queue_full")
    handed_over = total(processed, error_type="")
    queued = total(metrics["otel_sdk_processor_span_queue_size"])
    assert dropped + handed_over + queued == 100, (dropped, handed_over, queued)
    assert dropped >= 50, "most spans found the queue full"
    assert failed(metrics) > 0, "the exports that timed out are counted with their error type"


def failed(metrics: Samples) -> float:
    """Spans of exports that failed (any error type)."""
    exported = metrics["otel_sdk_exporter_span_exported_total"]
    return total(exported) - total(exported, error_type="")
