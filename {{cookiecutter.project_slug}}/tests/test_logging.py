"""Logs: every line on stdout is one JSON object, with the fields operators query."""

import json
import threading
import time
from io import BytesIO
from typing import Any

import httpx
from loguru import logger

from {{ cookiecutter.package_name }}.observability.logging import BufferedWriter, JsonFormatter
from {{ cookiecutter.package_name }}.settings import Settings

from conftest import StartServer, header_recorder, wait_for_workers

JSON_ENV = {"APP_LOG_FORMAT": "json", "APP_LOG_LEVEL": "INFO", "APP_LOG_MAX_VALUE_LENGTH": "200"}


def parse_lines(lines: list[str]) -> list[dict[str, Any]]:
    """Every line must be exactly one JSON object."""
    records = []
    for line in lines:
        record = json.loads(line)
        assert isinstance(record, dict), line
        records.append(record)
    return records


def wait_for(lines: list[str], predicate: Any, timeout: float = 5.0) -> list[dict[str, Any]]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        records = parse_lines(list(lines))
        if any(predicate(r) for r in records):
            return records
        time.sleep(0.05)
    raise AssertionError(f"no matching log line in:\n{chr(10).join(lines)}")


def test_access_line_has_every_field(start_server: StartServer) -> None:
    server = start_server(JSON_ENV)
    response = httpx.get(
        f"{server.url}/api/items/7", headers={"User-Agent": "probe/1.0", "X-Request-ID": "req-7"}
    )
    assert response.status_code == 200
    records = wait_for(server.lines, lambda r: r.get("logger") == "access")
    access = next(r for r in records if r.get("logger") == "access")
    assert access["level"] == "INFO"
    assert access["method"] == "GET"
    assert access["route"] == "/api/items/{item_id}"
    assert access["path"] == "/api/items/7"
    assert access["status"] == 200
    assert isinstance(access["duration_ms"], float)
    assert access["client"] == "127.0.0.1"
    assert access["user_agent"] == "probe/1.0"
    assert access["request_id"] == "req-7"
    assert access["service_name"] == "{{ cookiecutter.project_slug }}"
    assert access["deployment_environment"] == "test"
    assert access["timestamp"].endswith("Z")
    for key in ("message", "module", "function", "line", "service_version"):
        assert key in access
    # uvicorn's own access log is replaced, not doubled.
    mentions = [
        r for r in records if "/api/items/7" in r["message"] or r.get("path") == "/api/items/7"
    ]
    assert mentions == [access]
    assert server.stop() == 0


def test_the_start_says_what_runs_and_no_secret(start_server: StartServer) -> None:
    secrets = {
        "APP_DOWNSTREAM_URL": "https://user:s3cret@example.com/x?sig=signature",
        "APP_DOWNSTREAM_TOKEN": "t0ken-value",
    }
    server = start_server({**JSON_ENV, **secrets})
    assert server.stop() == 0
    (started,) = [r for r in parse_lines(server.lines) if r["message"].startswith("started: ")]
    assert f"listening on 127.0.0.1:{server.port}" in started["message"]
    assert "downstream https://example.com/x" in started["message"]
    output = "\n".join(server.lines)
    for secret in ("s3cret", "signature", "t0ken-value"):
        assert secret not in output


def test_uvicorn_lines_go_through_the_same_sink(start_server: StartServer) -> None:
    server = start_server(JSON_ENV)
    assert server.stop() == 0
    records = parse_lines(server.lines)
    loggers = {r["logger"] for r in records}
    assert "uvicorn.error" in loggers, loggers
    startup = next(r for r in records if "Application startup complete" in r["message"])
    # A routed line names uvicorn's code that logged it, not the logging machinery.
    assert (startup["module"], startup["function"]) != ("logging", "emit")
    assert startup["module"] != "__init__"
    assert any("Application startup complete" in r["message"] for r in records)
    assert any("Finished server process" in r["message"] for r in records)


def test_several_workers_write_each_line_once_and_at_once(start_server: StartServer) -> None:
    server = start_server({**JSON_ENV, "APP_WORKERS": "2"})
    # Logged by each worker as it starts: written then, not held until the worker exits.
    wait_for_workers(server, 2)
    assert server.stop() == 0
    records = parse_lines(server.lines)
    booted = [r for r in records if r["message"].startswith("Started server process")]
    assert len(booted) == 2, booted
    # The parent's own lines come through the same sink, once.
    assert sum(r["message"].startswith("Started parent process") for r in records) == 1
    keys = [(r["timestamp"], r["message"]) for r in records]
    assert len(keys) == len(set(keys)), "a line was written twice"


def test_the_console_format_keeps_the_ids_and_fields_without_colours(
    start_server: StartServer,
) -> None:
    # Even where loguru would colour a pipe (CI=true, as on GitHub Actions).
    server = start_server({"APP_LOG_FORMAT": "console", "CI": "true", "GITHUB_ACTIONS": "true"})
    httpx.get(f"{server.url}/api/items/7", headers={"X-Request-ID": "req-console"})
    # A path that would forge a line and colour the terminal, were it printed raw.
    httpx.get(f"{server.url}/api/items/%0A00:00:00.000%20ERROR%20forged%1B%5B31m")
    assert server.stop() == 0
    (access,) = [line for line in server.lines if "GET /api/items/{item_id} 200" in line]
    for field in ("request_id=req-console", "path=/api/items/7", "status=200", "duration_ms="):
        assert field in access, access
    output = "\n".join(server.lines)
    assert "\x1b" not in output, "no colour codes when not on a terminal, nor a client's escapes"
    assert not any(line.startswith("00:00:00.000 ERROR") for line in server.lines), output
    assert "path=/api/items/\\n00:00:00.000 ERROR forged\\x1b[31m" in output


def test_errors_carry_the_exception(start_server: StartServer) -> None:
    server = start_server(JSON_ENV)
    response = httpx.get(f"{server.url}/api/fail")
    assert response.status_code == 500
    records = wait_for(server.lines, lambda r: "exception_type" in r)
    (error,) = [r for r in records if "exception_type" in r]
    assert error["level"] == "ERROR"
    assert error["exception_type"] == "RuntimeError"
    assert "deliberate failure" in error["exception_message"]
    assert "Traceback" in error["exception_stacktrace"]
    # The line leads back to the request, as the client's error body does.
    body = response.json()["error"]
    assert error["request_id"] == body["request_id"] == response.headers["x-request-id"]
    assert error.get("trace_id") == body.get("trace_id")
    access = next(r for r in records if r.get("logger") == "access")
    assert access["status"] == 500
    assert access["level"] == "ERROR"
    assert access["request_id"] == error["request_id"]


def test_hostile_values_cannot_break_the_format(start_server: StartServer) -> None:
    server = start_server(JSON_ENV)
    hostile_path = "/nothing/%0A%7B%22level%22%3A%22CRITICAL%22%7D%0D%22%5C%00" + "a" * 5000
    httpx.get(
        f"{server.url}{hostile_path}", headers={"User-Agent": 'ua "quoted" \\ \t' + "b" * 5000}
    )
    records = wait_for(server.lines, lambda r: r.get("logger") == "access")
    access = next(r for r in records if r.get("logger") == "access")
    assert access["route"] == "__unmatched__"
    assert access["path"].startswith('/nothing/\n{"level":"CRITICAL"}\r"\\\x00')
    assert access["path"].endswith("chars]")
    assert len(access["path"]) < 260
    assert access["user_agent"].startswith('ua "quoted" \\ \t')
    assert "...[truncated" in access["user_agent"]
    assert not any(r.get("level") == "CRITICAL" for r in records)


def test_downstream_urls_and_their_credentials_stay_out_of_the_logs(
    start_server: StartServer,
) -> None:
    # httpx would log "HTTP Request: GET <full URL>" at INFO for every call.
    with header_recorder() as (url, seen):
        secret_url = url.replace("http://", "http://user:pa55word@") + "?sig=s3cr3t"
        server = start_server({**JSON_ENV, "APP_DOWNSTREAM_URL": secret_url})
        response = httpx.get(f"{server.url}/api/downstream")
        assert response.status_code == 200
        assert response.json()["url"] == url, "the caller sees the URL without its credentials"
        assert server.stop() == 0
    assert len(seen) == 1, "the downstream was called"
    assert any('"logger":"access"' in line for line in server.lines)
    leaked = [line for line in server.lines if "s3cr3t" in line or "pa55word" in line]
    assert not leaked


def test_bound_fields_are_flat_and_truncated() -> None:
    settings = Settings(service_name="svc", environment="test", log_max_value_length=64)
    formatter = JsonFormatter(settings)
    captured: list[bytes] = []
    handler = logger.add(lambda m: captured.append(formatter(m.record)), format="{message}")
    try:
        logger.bind(order_id=42, note="x" * 100, nested={"a": 1}).info("line\nbreak")
    finally:
        logger.remove(handler)
    (raw,) = captured
    assert raw.endswith(b"\n")
    assert raw.count(b"\n") == 1
    record = json.loads(raw)
    assert record["message"] == "line\nbreak"
    assert record["order_id"] == 42
    assert record["nested"] == {"a": 1}
    assert record["note"] == "x" * 64 + "...[truncated 36 chars]"
    assert record["service_name"] == "svc"
    assert "trace_id" not in record


def test_blocked_stdout_drops_lines_and_reports_the_count() -> None:
    entered, release = threading.Event(), threading.Event()

    class Stalled(BytesIO):
        def write(self, data: Any) -> int:
            entered.set()
            release.wait(10)
            return super().write(data)

    stream = Stalled()
    writer = BufferedWriter(stream, max_lines=100, flush_interval=0.01)
    writer.write(b'{"n": -1}\n')
    assert entered.wait(5), "the writer thread never wrote"  # now stuck in write()
    for i in range(1000):  # must return at once although stdout is stuck
        writer.write(b'{"n": %d}\n' % i)
    release.set()
    writer.close()
    lines = [json.loads(line) for line in stream.getvalue().splitlines()]
    warnings = [line for line in lines if "dropped_lines" in line]
    assert len(warnings) == 1
    assert lines[-1] is warnings[0]
    assert warnings[0]["level"] == "WARNING"
    # The batch stuck in the write, then one full buffer; the rest dropped and counted.
    assert [line["n"] for line in lines[:-1]] == list(range(-1, 100))
    assert warnings[0]["dropped_lines"] == 900


def test_a_stalled_stdout_does_not_stall_requests(start_server: StartServer) -> None:
    """Nobody reads the server's stdout: the pipe fills, requests keep flowing."""
    server = start_server({**JSON_ENV, "APP_LOG_BUFFER_LINES": "200"}, read_output=False)
    started = time.monotonic()
    with httpx.Client(base_url=server.url) as client:
        for i in range(3000):  # ~1.5 MB of access lines, far beyond a 64 KiB pipe
            assert (
                client.get(f"/api/items/{i + 1}", headers={"User-Agent": "x" * 300}).status_code
                == 200
            )
    assert time.monotonic() - started < 60
    server.start_reading()
    # Once stdout drains, the writer reports what it dropped; stop only then, or the
    # shutdown lines would meet a still-full buffer and be dropped too.
    wait_for(server.lines, lambda r: "dropped_lines" in r, timeout=20)
    assert server.stop() == 0
    records = parse_lines(server.lines)
    dropped = [r for r in records if "dropped_lines" in r]
    assert (
        sum(r["dropped_lines"] for r in dropped) + sum(r.get("logger") == "access" for r in records)
        == 3000
    )
