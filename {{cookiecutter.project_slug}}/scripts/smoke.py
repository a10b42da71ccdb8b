{%- set prom = cookiecutter.use_prometheus -%}
{%- set graf = cookiecutter.use_grafana -%}
{%- set jaeger = cookiecutter.use_jaeger -%}
{%- set loki = cookiecutter.use_loki -%}
{%- set tracing = cookiecutter.use_tracing -%}
#!/usr/bin/env python3
"""Check the running local stack end to end: `make smoke` (after `make up`).

Each check has its own time limit (--timeout, default 30 s) and prints one line:
PASS, FAIL, or UNAVAILABLE when the service it needs is not running (for example
its compose profile is off). The checks:

- every service of compose.yaml is running and healthy (`docker compose ps`);
{%- if graf %}
- each Grafana data source passes Grafana's own health check (user admin, password
  GRAFANA_ADMIN_PASSWORD from the environment or .env);
{%- endif %}
- a request to the app is answered
{%- if tracing %} (it carries a fresh `traceparent`, so its trace id is known)
{%- endif %}, and then
{%- if jaeger %}
  - its trace is in Jaeger's query API;
{%- endif %}
{%- if loki %}
  - its access log line is in Loki{% if tracing %}, with the same trace_id{% endif %};
{%- endif %}
{%- if prom %}
  - Prometheus counts it in `http_server_request_duration_seconds_count`;
{%- if tracing %}
  - Prometheus holds its exemplar, pointing to that trace;
{%- endif %}
{%- endif %}

Exit status: 0 when every check passed, 1 when any check failed, 2 when none failed
but some could not run (unavailable): a partial stack is not a passing one.

The services are reached on the ports compose publishes (`docker compose port`), so
overrides and COMPOSE_* variables are followed. Standard library only.
"""

from __future__ import annotations

import argparse
{%- if graf %}
import base64
{%- endif %}
import http.client
import json
import os
import secrets
import shutil
import subprocess
import sys
import time
{%- if prom or loki %}
import urllib.parse
{%- endif %}
from collections.abc import Callable
from pathlib import Path
from typing import Any

PROJECT_DIR = Path(__file__).resolve().parent.parent
{%- if prom or jaeger %}
SERVICE_NAME = "{{ cookiecutter.project_slug }}"
{%- endif %}
APP_PORT = {{ cookiecutter.port }}
ROUTE = "/api/items/{item_id}"
# The services of the generated compose.yaml; services added since are found too.
SERVICES = (
    "app",
{%- if prom %}
    "prometheus",
{%- endif %}
{%- if cookiecutter.use_alertmanager %}
    "alertmanager",
{%- endif %}
{%- if graf %}
    "grafana",
{%- endif %}
{%- if jaeger %}
    "jaeger",
{%- endif %}
{%- if loki %}
    "loki",
    "alloy",
{%- endif %}
)
{%- if graf %}
# Grafana data source type -> the compose service behind it.
DATASOURCE_SERVICES = {
    "prometheus": "prometheus",
    "alertmanager": "alertmanager",
    "jaeger": "jaeger",
    "loki": "loki",
}
{%- endif %}

PASS, FAIL, UNAVAILABLE = "PASS", "FAIL", "UNAVAILABLE"
POLL_SECONDS = 1.0


class CheckFailedError(Exception):
    """The check ran and found a problem."""


class UnavailableError(Exception):
    """The check could not run: what it needs is not running."""


class Stack:
    """The compose project in PROJECT_DIR, as `docker compose` sees it."""

    def __init__(self) -> None:
        self.docker = shutil.which("docker") or "docker"
        self.containers: dict[str, list[dict[str, Any]]] = {}
        self.error = ""

    def compose(self, *args: str, timeout: float = 30.0) -> str:
        try:
            result = subprocess.run(  # noqa: S603 (fixed arguments, no shell)
                [self.docker, "compose", *args],
                cwd=PROJECT_DIR,
                capture_output=True,
                text=True,
                timeout=timeout,
                check=False,
            )
        except (OSError, subprocess.TimeoutExpired) as error:
            raise CheckFailedError(f"docker compose {args[0]}: {error}") from error
        if result.returncode != 0:
            raise CheckFailedError(f"docker compose {args[0]}: {result.stderr.strip()[:300]}")
        return result.stdout

    def refresh(self) -> None:
        """Read the containers of every service (`docker compose ps --all`)."""
        output = self.compose("ps", "--all", "--format", "json")
        # One JSON object per line (recent Compose) or one JSON array (older Compose).
        text = output.strip()
        rows: list[dict[str, Any]] = []
        if text.startswith("["):
            rows = list(json.loads(text))
        else:
            rows = [json.loads(line) for line in text.splitlines() if line.strip()]
        self.containers = {}
        for row in rows:
            self.containers.setdefault(str(row.get("Service")), []).append(row)

    def running(self, service: str) -> bool:
        return any(row.get("State") == "running" for row in self.containers.get(service, []))

    def address(self, service: str, port: int) -> tuple[str, int]:
        """The host address compose published for a service's port."""
        if not self.running(service):
            raise UnavailableError(f"{service} is not running")
        published = self.compose("port", service, str(port)).strip()
        host, _, number = published.rpartition(":")
        if not number.isdigit() or number == "0":
            raise CheckFailedError(f"{service}:{port} is not published ({published!r})")
        host = host.strip("[]")
        return ("127.0.0.1" if host in ("", "0.0.0.0") else host), int(number)


class Request:
    """What the app was asked, so the backends can be searched for it."""

    def __init__(self) -> None:
{%- if tracing %}
        self.trace_id = secrets.token_hex(16)
{%- endif %}
        self.request_id = f"smoke-{secrets.token_hex(8)}"
        self.item_id = 1000 + secrets.randbelow(9000)
        self.sent_at = 0.0
        self.done = False
        self.problem = ""


def http_get(
    address: tuple[str, int],
    path: str,
    deadline: float,
    headers: dict[str, str] | None = None,
) -> tuple[int, Any]:
    """GET a path; returns the status and the decoded JSON body (None if not JSON)."""
    timeout = max(0.5, min(5.0, deadline - time.monotonic()))
    connection = http.client.HTTPConnection(*address, timeout=timeout)
    try:
        connection.request("GET", path, headers=headers or {})
        response = connection.getresponse()
        body = response.read()
    except OSError as error:
        raise CheckFailedError(f"GET {path} on {address[0]}:{address[1]}: {error}") from error
    finally:
        connection.close()
    try:
        return response.status, json.loads(body)
    except ValueError:
        return response.status, None


def poll(deadline: float, attempt: Callable[[], str | None], waiting_for: str) -> str:
    """Call `attempt` until it returns a detail (success) or the check's time is up."""
    last_error = ""
    while True:
        try:
            detail = attempt()
        except CheckFailedError as error:
            detail, last_error = None, str(error)
        if detail is not None:
            return detail
        if time.monotonic() >= deadline:
            raise CheckFailedError(f"{waiting_for}{f' ({last_error})' if last_error else ''}")
        time.sleep(POLL_SECONDS)


class Smoke:
    def __init__(self, timeout: float) -> None:
        self.timeout = timeout
        self.stack = Stack()
        self.request = Request()
        self.results: list[str] = []

    def check(self, name: str, run: Callable[[float], str]) -> None:
        """Run one check against its own deadline and print its outcome."""
        deadline = time.monotonic() + self.timeout
        try:
            status, detail = PASS, run(deadline)
        except UnavailableError as error:
            status, detail = UNAVAILABLE, str(error)
        except CheckFailedError as error:
            status, detail = FAIL, str(error)
        self.results.append(status)
        print(f"{status:<12} {name}: {detail}", flush=True)

    # ------------------------------------------------------------ services

    def service_healthy(self, service: str) -> Callable[[float], str]:
        def run(deadline: float) -> str:
            if not self.stack.containers.get(service):
                raise UnavailableError("not running (is its compose profile on?)")

            def attempt() -> str | None:
                rows = self.stack.containers.get(service, [])
                states = [(str(row.get("State")), str(row.get("Health") or "")) for row in rows]
                bad = [f"{state}/{health}" for state, health in states if state != "running"]
                bad += [f"{state}/{health}" for state, health in states if health == "unhealthy"]
                if bad:
                    raise CheckFailedError(f"{', '.join(bad)}")
                if all(health in ("healthy", "") for _, health in states):
                    return f"{len(rows)} container(s) running, healthy"
                self.stack.refresh()
                return None

            return poll(deadline, attempt, "still starting")

        return run

    # ------------------------------------------------------------ the request

    def send_request(self, deadline: float) -> str:
        request = self.request
        address = self.stack.address("app", APP_PORT)
        headers = {
            "X-Request-ID": request.request_id,
{%- if tracing %}
            # A sampled trace the script knows the id of.
            "traceparent": f"00-{request.trace_id}-{secrets.token_hex(8)}-01",
{%- endif %}
        }
        path = f"/api/items/{request.item_id}"
        request.sent_at = time.time()
        status, _ = http_get(address, path, deadline, headers)
        if status != 200:
            request.problem = f"the app answered {status}"
            raise CheckFailedError(f"GET {path} -> {status}")
        request.done = True
{%- if tracing %}
        return f"GET {path} -> 200 (request_id {request.request_id}, trace_id {request.trace_id})"
{%- else %}
        return f"GET {path} -> 200 (request_id {request.request_id})"
{%- endif %}

    def need_request(self) -> None:
        if not self.request.done:
            if self.request.problem:
                raise CheckFailedError(f"nothing to look for: {self.request.problem}")
            raise UnavailableError("nothing to look for: the app is not running")
{%- if graf %}

    # ------------------------------------------------------------ Grafana

    def grafana(self) -> None:
        if not self.stack.running("grafana"):
            self.check("grafana data sources", self.unavailable("grafana is not running"))
            return
        datasources: list[dict[str, Any]] = []

        def listing(deadline: float) -> str:
            address, auth = self.grafana_address(), self.grafana_auth()
            status, body = http_get(address, "/api/datasources", deadline, auth)
            if status != 200 or not isinstance(body, list):
                raise CheckFailedError(f"GET /api/datasources -> {status} (admin password?)")
            datasources.extend(body)
            names = ", ".join(str(source.get("name")) for source in datasources)
            return names or "none provisioned"

        self.check("grafana data sources", listing)
        for source in datasources:
            self.check(f"grafana data source {source.get('name')}", self.datasource_health(source))

    def grafana_address(self) -> tuple[str, int]:
        return self.stack.address("grafana", 3000)

    def grafana_auth(self) -> dict[str, str]:
        password = setting("GRAFANA_ADMIN_PASSWORD")
        if not password:
            raise CheckFailedError("GRAFANA_ADMIN_PASSWORD is not set (environment or .env)")
        token = base64.b64encode(f"admin:{password}".encode()).decode()
        return {"Authorization": f"Basic {token}"}

    def datasource_health(self, source: dict[str, Any]) -> Callable[[float], str]:
        def run(deadline: float) -> str:
            backend = DATASOURCE_SERVICES.get(str(source.get("type")))
            if backend is not None and not self.stack.running(backend):
                raise UnavailableError(f"{backend} is not running")
            path = f"/api/datasources/uid/{source.get('uid')}/health"

            def attempt() -> str | None:
                status, body = http_get(self.grafana_address(), path, deadline, self.grafana_auth())
                body = body if isinstance(body, dict) else {}
                if status == 200 and body.get("status") == "OK":
                    return str(body.get("message") or "OK")
                raise CheckFailedError(f"{status} {body.get('message', '')}".strip())

            return poll(deadline, attempt, "not healthy")

        return run
{%- endif %}
{%- if jaeger %}

    # ------------------------------------------------------------ Jaeger

    def jaeger_trace(self, deadline: float) -> str:
        address = self.stack.address("jaeger", 16686)
        self.need_request()
        trace_id = self.request.trace_id

        def attempt() -> str | None:
            status, body = http_get(address, f"/api/traces/{trace_id}", deadline)
            if status == 404:
                return None
            traces = body.get("data") if isinstance(body, dict) else None
            if status != 200 or not traces:
                raise CheckFailedError(f"GET /api/traces/{trace_id} -> {status}")
            spans = traces[0].get("spans", [])
            services = {str(p.get("serviceName")) for p in traces[0].get("processes", {}).values()}
            if SERVICE_NAME not in services:
                raise CheckFailedError(f"trace {trace_id} has spans of {sorted(services)} only")
            return f"trace {trace_id}: {len(spans)} span(s) of {SERVICE_NAME}"

        return poll(deadline, attempt, f"trace {trace_id} not found")
{%- endif %}
{%- if loki %}

    # ------------------------------------------------------------ Loki

    def loki_line(self, deadline: float) -> str:
        address = self.stack.address("loki", 3100)
        self.need_request()
        request = self.request
{%- if tracing %}
        # trace_id is structured metadata, matched after the stream selector.
        logql = selector("", service_name="app") + f' | trace_id="{request.trace_id}"'
{%- else %}
        logql = selector("", service_name="app") + f' |= "{request.request_id}"'
{%- endif %}
        query = urllib.parse.urlencode(
            {"query": logql, "start": str(int((request.sent_at - 60) * 1e9)), "limit": "50"}
        )

        def attempt() -> str | None:
            status, body = http_get(address, f"/loki/api/v1/query_range?{query}", deadline)
            if status != 200 or not isinstance(body, dict):
                raise CheckFailedError(f"query_range -> {status}")
            for stream in body.get("data", {}).get("result", []):
                for _, line in stream.get("values", []):
                    if request.request_id in line:
                        return f"access line with request_id {request.request_id}"
            return None

        return poll(deadline, attempt, f"no line for {logql}")
{%- endif %}
{%- if prom %}

    # ------------------------------------------------------------ Prometheus

    def prometheus_count(self, deadline: float) -> float:
        series = selector(
            "http_server_request_duration_seconds_count",
            service=SERVICE_NAME,
            http_route=ROUTE,
            http_request_method="GET",
            http_response_status_code="200",
        )
        path = "/api/v1/query?" + urllib.parse.urlencode({"query": f"sum({series})"})
        status, body = http_get(self.stack.address("prometheus", 9090), path, deadline)
        if status != 200 or not isinstance(body, dict) or body.get("status") != "success":
            raise CheckFailedError(f"query -> {status}")
        result = body["data"]["result"]
        return float(result[0]["value"][1]) if result else 0.0

    def prometheus_series(self, before: float) -> Callable[[float], str]:
        def run(deadline: float) -> str:
            self.stack.address("prometheus", 9090)
            self.need_request()

            def attempt() -> str | None:
                now = self.prometheus_count(deadline)
                return f"GET {ROUTE} 200 counted ({before:g} -> {now:g})" if now > before else None

            return poll(deadline, attempt, "the request is not counted yet (scrape interval?)")

        return run
{%- if tracing %}

    def prometheus_exemplar(self, deadline: float) -> str:
        address = self.stack.address("prometheus", 9090)
        self.need_request()
        request = self.request
        query = urllib.parse.urlencode(
            {
                "query": selector(
                    "http_server_request_duration_seconds_bucket",
                    service=SERVICE_NAME,
                    http_route=ROUTE,
                ),
                "start": f"{request.sent_at - 60:.3f}",
                "end": f"{time.time() + 3600:.3f}",
            }
        )

        def attempt() -> str | None:
            status, body = http_get(address, f"/api/v1/query_exemplars?{query}", deadline)
            if status != 200 or not isinstance(body, dict):
                raise CheckFailedError(f"query_exemplars -> {status}")
            for series in body.get("data") or []:
                for exemplar in series.get("exemplars", []):
                    if exemplar.get("labels", {}).get("trace_id") == request.trace_id:
                        return f"le={series['seriesLabels'].get('le')} -> trace {request.trace_id}"
            return None

        return poll(deadline, attempt, f"no exemplar with trace_id {request.trace_id}")
{%- endif %}
{%- endif %}

    # ------------------------------------------------------------ all of it

    def services(self) -> list[str]:
        """The services above, and any other the compose files define (in any profile)."""
        try:
            declared = self.stack.compose("--profile", "*", "config", "--services").split()
        except CheckFailedError:
            declared = []
        return [*SERVICES, *sorted(set(declared) - set(SERVICES))]

    @staticmethod
    def unavailable(reason: str) -> Callable[[float], str]:
        def run(_deadline: float) -> str:
            raise UnavailableError(reason)

        return run

    def run(self) -> int:
        try:
            self.stack.refresh()
        except CheckFailedError as error:
            print(f"{FAIL:<12} docker compose ps: {error}", flush=True)
            return 1
        for service in self.services():
            self.check(f"service {service}", self.service_healthy(service))
{%- if graf %}
        self.grafana()
{%- endif %}
{%- if prom %}
        try:
            before = self.prometheus_count(time.monotonic() + self.timeout)
        except (CheckFailedError, UnavailableError):
            before = 0.0
{%- endif %}
        self.check("app answers a request", self.send_request)
{%- if jaeger %}
        self.check("jaeger has its trace", self.jaeger_trace)
{%- endif %}
{%- if loki %}
        self.check("loki has its log line", self.loki_line)
{%- endif %}
{%- if prom %}
        self.check("prometheus counted it", self.prometheus_series(before))
{%- if tracing %}
        self.check("prometheus has its exemplar", self.prometheus_exemplar)
{%- endif %}
{%- endif %}
        passed, failed, unavailable = (self.results.count(s) for s in (PASS, FAIL, UNAVAILABLE))
        print(f"\n{passed} passed, {failed} failed, {unavailable} unavailable")
        if failed:
            return 1
        return 2 if unavailable else 0
{%- if prom or loki %}


def selector(metric: str, **labels: str) -> str:
    """A PromQL or LogQL selector: metric{label="value", ...}."""
    return metric + "{" + ", ".join(f'{key}="{value}"' for key, value in labels.items()) + "}"
{%- endif %}


def setting(name: str) -> str:
    """A variable from the environment, else from the project's .env."""
    if os.environ.get(name):
        return os.environ[name]
    env_file = PROJECT_DIR / ".env"
    if env_file.exists():
        for line in env_file.read_text(encoding="utf-8").splitlines():
            key, sep, value = line.partition("=")
            if sep and key.strip() == name:
                return value.strip().strip("'\"")
    return ""


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument(
        "--timeout", type=float, default=30.0, help="seconds allowed per check (default 30)"
    )
    args = parser.parse_args()
    return Smoke(args.timeout).run()


if __name__ == "__main__":
    sys.exit(main())
