"""The SDK's metrics of its own span pipeline on /metrics: off by default, one variable turns them on.

Counted by the SDK, read here from a real scrape and held against the spans a real OTLP
receiver decoded, or against a collector that refuses every export.
"""

import sys
import time
from collections import defaultdict
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from conftest import Server, StartServer, free_port
from otlp_receiver import OtlpReceiver

LAUNCHERS = {
    "python -m": [],
    "opentelemetry-instrument": [str(Path(sys.executable).parent / "opentelemetry-instrument")],
}


def env(endpoint: str, **extra: str) -> dict[str, str]:
    return {
        "OTEL_SDK_DISABLED": "false",
        "OTEL_PYTHON_DISTRO": "{{ cookiecutter.package_name }}",
        "OTEL_EXPORTER_OTLP_ENDPOINT": endpoint,
        "OTEL_BSP_SCHEDULE_DELAY": "50",
        **extra,
    }


def scrape(server: Server) -> dict[str, dict[tuple[tuple[str, str], ...], float]]:
    """Sample name -> labels (the SDK's own, without the scope's) -> value, off /metrics."""
    samples: dict[str, dict[tuple[tuple[str, str], ...], float]] = defaultdict(dict)
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


def test_off_by_default(start_server: StartServer) -> None:
    with OtlpReceiver() as receiver:
        server = start_server(env(receiver.endpoint))
        assert httpx.get(f"{server.url}/api/items/1").status_code == 200
        names = scrape(server).keys()
    assert "http_server_request_duration_seconds_count" in names
    assert not [name for name in names if name.startswith("otel_") or name == "target_info"]


@pytest.fixture
def switched_on(monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    """The switch; and no OTEL_METRICS_EXPORTER=none left by the distro of an in-process app."""
    monkeypatch.delenv("OTEL_METRICS_EXPORTER", raising=False)
    return {"OTEL_PYTHON_SDK_INTERNAL_METRICS_ENABLED": "true"}


@pytest.mark.parametrize("mode", LAUNCHERS)
def test_every_span_is_counted_from_start_to_export(
    start_server: StartServer, switched_on: dict[str, str], mode: str
) -> None:
    with OtlpReceiver() as receiver:
        server = start_server(env(receiver.endpoint, **switched_on), launcher=LAUNCHERS[mode])
        with httpx.Client(base_url=server.url) as client:
            for i in range(20):
                assert client.get(f"/api/items/{i + 1}").status_code == 200
            assert client.get("/health").status_code == 200  # not traced, not counted
        deadline = time.monotonic() + 10
        while len(receiver.snapshot()) < 20 and time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(0.2)  # the exporter records its result after the receiver answered
        metrics = scrape(server)
        received = len(receiver.snapshot())
    assert received == 20
    started = metrics["otel_sdk_span_started_total"]
    assert total(started, otel_span_sampling_result="RECORD_AND_SAMPLE") == 20
    assert total(started, otel_span_sampling_result="DROP") == 0
    processed = metrics["otel_sdk_processor_span_processed_total"]
    assert total(processed, error_type="") == 20
    assert total(processed, error_type="queue_full") == 0
    exported = metrics["otel_sdk_exporter_span_exported_total"]
    assert total(exported, error_type="") == received
    assert total(metrics["otel_sdk_processor_span_queue_size"]) == 0
    # The resource of the spans, as Prometheus' info metric.
    (info,) = metrics["target_info"]
    assert dict(info)["service_name"] == "{{ cookiecutter.project_slug }}"


def test_spans_dropped_from_a_full_queue_are_counted(
    start_server: StartServer, switched_on: dict[str, str]
) -> None:
    # A collector that refuses every export, and a queue of 8: most spans cannot wait.
    refusing = f"http://127.0.0.1:{free_port()}"
    small_queue = {"OTEL_BSP_MAX_QUEUE_SIZE": "8", "OTEL_BSP_MAX_EXPORT_BATCH_SIZE": "4"}
    server = start_server(
        env(refusing, OTEL_EXPORTER_OTLP_TIMEOUT="1", **switched_on, **small_queue)
    )
    with httpx.Client(base_url=server.url) as client:
        for i in range(100):
            assert client.get(f"/api/items/{i + 1}").status_code == 200
    deadline = time.monotonic() + 10
    while True:
        metrics = scrape(server)
        processed = metrics["otel_sdk_processor_span_processed_total"]
        dropped = total(processed, error_type="queue_full")
        handed_over = total(processed, error_type="")
        queued = total(metrics["otel_sdk_processor_span_queue_size"])
        failed = total(metrics["otel_sdk_exporter_span_exported_total"]) - total(
            metrics["otel_sdk_exporter_span_exported_total"], error_type=""
        )
        # Every span is dropped, handed to the exporter or still queued; the export thread takes
        # a batch off the queue before it counts it, so a scrape may fall between the two.
        if (dropped + handed_over + queued == 100 and failed > 0) or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    started = metrics["otel_sdk_span_started_total"]
    assert total(started, otel_span_sampling_result="RECORD_AND_SAMPLE") == 100
    assert dropped + handed_over + queued == 100, (dropped, handed_over, queued)
    assert dropped >= 100 - 8 - 3 * 4, "at most the queue and the batches tried so far got through"
    assert failed > 0, "the refused exports are counted with their error type"
    assert server.stop() == 0
