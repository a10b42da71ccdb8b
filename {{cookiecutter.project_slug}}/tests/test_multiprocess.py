"""Several workers: one merged /metrics that neither loses nor double-counts requests."""

import os
import signal
import sys
import time
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from conftest import Server, StartServer, free_port, wait_for_workers

pytestmark = pytest.mark.skipif(sys.platform != "linux", reason="reads worker pids from /proc")


def total_requests(metrics_url: str) -> float:
    text = httpx.get(metrics_url).text
    return sum(
        s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
        if s.name == "http_server_request_duration_seconds_count"
    )


def worker_pids(server: Server) -> set[int]:
    """uvicorn's worker processes (multiprocessing's spawn), not its resource tracker."""
    pid = server.process.pid
    children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    return {
        int(child)
        for child in children
        if b"spawn_main" in Path(f"/proc/{child}/cmdline").read_bytes()
    }


def send(server: Server, n: int) -> None:
    for i in range(n):
        # A new connection each time, so the kernel spreads them over the workers.
        assert (
            httpx.get(
                f"{server.url}/api/items/{i + 1}", headers={"Connection": "close"}
            ).status_code
            == 200
        )


def wait_for_total(metrics_url: str, expected: int, timeout: float = 5.0) -> float:
    """The merged total once it reaches `expected`: a worker records a request just
    after its response went out, so another process may serve /metrics before that."""
    deadline = time.monotonic() + timeout
    while (total := total_requests(metrics_url)) < expected and time.monotonic() < deadline:
        time.sleep(0.05)
    return total


def test_requests_over_two_workers_are_counted_exactly(
    start_server: StartServer, tmp_path: Path
) -> None:
    multiproc = tmp_path / "metrics"
    server = start_server({"APP_WORKERS": "2", "PROMETHEUS_MULTIPROC_DIR": str(multiproc)})
    wait_for_workers(server, 2)
    send(server, 200)
    assert wait_for_total(f"{server.url}/metrics", 200) == 200
    writers = {p.name.rsplit("_", 1)[1] for p in multiproc.glob("histogram_*.db")}
    assert len(writers) >= 2, f"expected samples from 2 workers, got files {sorted(writers)}"

    # Kill one worker outright: uvicorn replaces it and the totals survive.
    victim = next(iter(worker_pids(server)))
    os.kill(victim, signal.SIGKILL)
    deadline = time.monotonic() + 15
    while (
        victim in worker_pids(server) or len(worker_pids(server)) < 2
    ) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert victim not in worker_pids(server)
    send(server, 50)
    assert wait_for_total(f"{server.url}/metrics", 250) == 250
    assert server.stop() == 0


def test_a_separate_metrics_port_serves_every_worker(start_server: StartServer) -> None:
    # The parent serves it: each worker binding the port would fail to boot but one.
    metrics_port = free_port()
    server = start_server({"APP_WORKERS": "2", "APP_METRICS_PORT": str(metrics_port)})
    wait_for_workers(server, 2)
    send(server, 100)
    assert httpx.get(f"{server.url}/metrics").status_code == 404
    assert wait_for_total(f"http://127.0.0.1:{metrics_port}/metrics", 100) == 100
    assert server.stop() == 0
    # Each worker exits 0 through its shutdown, not by the signal: its last lines are written.
    assert sum("Finished server process" in line for line in server.lines) == 2, server.lines
    assert not [line for line in server.lines if "was sent SIGTERM" in line]


def test_the_start_removes_only_stale_sample_files(
    start_server: StartServer, tmp_path: Path
) -> None:
    multiproc = tmp_path / "metrics"
    multiproc.mkdir()
    (multiproc / "counter_99999.db").write_bytes(b"from an earlier run")
    (multiproc / "README").write_text("not the client library's")
    server = start_server({"APP_WORKERS": "2", "PROMETHEUS_MULTIPROC_DIR": str(multiproc)})
    wait_for_workers(server, 2)
    assert not (multiproc / "counter_99999.db").exists(), "an earlier run's samples are not merged"
    assert (multiproc / "README").read_text() == "not the client library's"
    assert server.stop() == 0
