"""Stack tier: the generated service and its generated stack, running together.

The default (full) bake is locked and its image built as in the docker tier,
then brought up with its own compose.yaml plus the small test-only override in
tests/stack/compose.test.yaml, with the `prometheus` and `alertmanager`
profiles only (Grafana, Jaeger, Loki and Alloy cannot run here). The override
adds an OTLP/HTTP receiver that decodes the protobuf under the name `jaeger`,
a webhook that records what Alertmanager delivers, ephemeral ports on
127.0.0.1, and test copies of the shipped Prometheus and Alertmanager
configuration with short intervals and `for:` durations (generated here from
the shipped files, which stay untouched).

Every container is reached only through a port published on 127.0.0.1.
The tests run in file order: the last ones scale the app, stop it, and tear
the stack down.
"""

from __future__ import annotations

import http.client
import json
import os
import re
import shutil
import subprocess
import sys
import time
import urllib.parse
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import pytest
import yaml

from helpers import (
    APP_METRICS,
    DEFAULT_SLUG,
    build_app_image,
    build_standins,
    docker,
    docker_env,
    require_docker,
    require_image,
    run,
    runbook_queries,
)

pytestmark = [pytest.mark.stack, pytest.mark.xdist_group("docker")]

STACK_DIR = Path(__file__).resolve().parent / "stack"
OVERRIDE = STACK_DIR / "compose.test.yaml"
PROFILES = ("prometheus", "alertmanager")
SERVICE = DEFAULT_SLUG
APP_PORT = 8000
ROUTE = "/api/items/{item_id}"
# Test values for the shipped configuration (the shipped files keep theirs).
SCRAPE_INTERVAL = "1s"
EVALUATION_INTERVAL = "1s"
DNS_REFRESH = "2s"
ALERT_FOR = "2s"
# Concrete values for the Grafana variables of the provisioned dashboards.
GRAFANA_VARIABLES = {
    "__rate_interval": "5m",
    "__interval": "15s",
    "__range": "5m",
    "__auto": "1m",
    "job": "app",
    "service": SERVICE,
    "instance": ".*",  # the dashboard's "All" value
}
# Series that exist here after the traffic: what the app exports, plus Prometheus' own.
DATA_HERE = APP_METRICS | {"up", "ALERTS"}
PROMQL_WORDS = {"and", "or", "unless", "bool", "offset", "group_left", "group_right", "inf", "nan", "Inf", "NaN"}
T = TypeVar("T")


# ---------------------------------------------------------------- plumbing


def http_get(address: tuple[str, int], path: str, timeout: float = 10.0) -> tuple[int, Any]:
    connection = http.client.HTTPConnection(*address, timeout=timeout)
    try:
        connection.request("GET", path)
        response = connection.getresponse()
        body = response.read()
    finally:
        connection.close()
    try:
        return response.status, json.loads(body)
    except ValueError:
        return response.status, body.decode("utf-8", "replace")


def wait_for(what: str, probe: Callable[[], T | None], timeout: float = 60.0, interval: float = 0.5) -> T:
    """Poll until `probe` returns something other than None (or a falsy value)."""
    deadline = time.monotonic() + timeout
    last: T | Exception | None = None
    while time.monotonic() < deadline:
        try:
            found = probe()
        except (OSError, http.client.HTTPException) as error:
            last = error
        else:
            if found:
                return found
            last = found
        time.sleep(interval)
    pytest.fail(f"timed out after {timeout:.0f} s waiting for {what}; last: {last!r}"[:3000])


@dataclass
class Stack:
    project: Path
    name: str
    env: dict[str, str]
    started: float = field(default_factory=time.time)
    down_done: bool = False

    def compose(self, *args: str, timeout: float = 300, check: bool = True) -> subprocess.CompletedProcess[str]:
        cmd = ["docker", "compose", "-p", self.name, "-f", "compose.yaml", "-f", str(OVERRIDE)]
        for profile in PROFILES:
            cmd += ["--profile", profile]
        result = subprocess.run(
            [*cmd, *args], cwd=self.project, env=self.env, capture_output=True, text=True, timeout=timeout, check=False
        )
        if check and result.returncode != 0:
            pytest.fail(f"docker compose {' '.join(args)} failed ({result.returncode}):\n{result.stderr[-4000:]}")
        return result

    def address(self, service: str, port: int, index: int = 1) -> tuple[str, int]:
        published = self.compose("port", "--index", str(index), service, str(port)).stdout.strip()
        host, _, number = published.rpartition(":")
        assert host == "127.0.0.1", f"{service}:{port} is published on {published!r}, not on 127.0.0.1 only"
        return host, int(number)

    def app(self, path: str, index: int = 1) -> tuple[int, Any]:
        return http_get(self.address("app", APP_PORT, index), path)

    def prometheus(self, path: str, **params: str) -> Any:
        status, body = http_get(self.address("prometheus", 9090), f"{path}?{urllib.parse.urlencode(params)}")
        assert status == 200 and isinstance(body, dict), f"GET {path} {params} -> {status}: {body!r}"[:2000]
        assert body.get("status") == "success", body
        return body["data"]

    def query(self, expr: str) -> list[dict[str, Any]]:
        """An instant query; fails the test on any evaluation error."""
        connection_address = self.address("prometheus", 9090)
        path = "/api/v1/query?" + urllib.parse.urlencode({"query": expr})
        status, body = http_get(connection_address, path)
        assert status == 200 and isinstance(body, dict) and body.get("status") == "success", (
            f"{expr!r} does not evaluate: {status} {body!r}"[:2000]
        )
        assert not body.get("warnings"), f"{expr!r}: {body['warnings']}"
        result = body["data"]["result"]
        return result if isinstance(result, list) else [result]

    def spans(self) -> list[dict[str, Any]]:
        status, body = http_get(self.address("otlp", 4318), "/spans")
        assert status == 200, body
        return list(body)

    def deliveries(self) -> list[dict[str, Any]]:
        status, body = http_get(self.address("webhook", 9095), "/alerts")
        assert status == 200, body
        return [record["payload"] for record in body]

    def delivered(self, alertname: str, status: str = "firing") -> list[dict[str, Any]]:
        return [
            alert
            for payload in self.deliveries()
            for alert in payload.get("alerts", [])
            if alert["labels"].get("alertname") == alertname and alert.get("status") == status
        ]

    def alert_state(self, alertname: str) -> str | None:
        for alert in self.prometheus("/api/v1/alerts")["alerts"]:
            if alert["labels"].get("alertname") == alertname:
                return str(alert["state"])
        return None

    def app_logs(self) -> list[dict[str, Any]]:
        out = self.compose("logs", "--no-color", "--no-log-prefix", "app").stdout
        records = []
        for line in out.splitlines():
            if line.startswith("{"):
                records.append(json.loads(line))
        return records

    def leftovers(self) -> dict[str, list[str]]:
        label = f"label=com.docker.compose.project={self.name}"
        return {
            kind: docker(
                *cmd, "--filter", label, "--format", "{{.Name}}" if kind != "container" else "{{.Names}}"
            ).stdout.split()
            for kind, cmd in (
                ("container", ("ps", "-a")),
                ("network", ("network", "ls")),
                ("volume", ("volume", "ls")),
            )
        }

    def down(self) -> None:
        if not self.down_done:
            self.compose("down", "-v", "--remove-orphans", "--timeout", "20", timeout=180, check=False)
            self.down_done = True


# ---------------------------------------------------------------- test configuration from the shipped files


def _test_prometheus_config(shipped: Path) -> str:
    config = yaml.safe_load(shipped.read_text())
    config["global"].update(scrape_interval=SCRAPE_INTERVAL, scrape_timeout=SCRAPE_INTERVAL)
    config["global"]["evaluation_interval"] = EVALUATION_INTERVAL
    sd_configs = [sd for job in config["scrape_configs"] for sd in job.get("dns_sd_configs", [])]
    sd_configs += [sd for am in config.get("alerting", {}).get("alertmanagers", []) for sd in am["dns_sd_configs"]]
    assert sd_configs, "the shipped prometheus.yml finds nothing through DNS any more: update this test"
    for sd in sd_configs:
        sd["refresh_interval"] = DNS_REFRESH
    return str(yaml.safe_dump(config, sort_keys=False))


def _test_rules(shipped: Path) -> str:
    rules = yaml.safe_load(shipped.read_text())
    for group in rules["groups"]:
        for rule in group["rules"]:
            if "for" in rule:
                rule["for"] = ALERT_FOR
    return str(yaml.safe_dump(rules, sort_keys=False))


def _test_alertmanager_config(shipped: Path) -> str:
    config = yaml.safe_load(shipped.read_text())
    config["route"].update(group_wait="1s", group_interval="2s")
    return str(yaml.safe_dump(config, sort_keys=False))


def _write_test_configs(project: Path, target: Path) -> None:
    shipped = project / "observability"
    (target / "prometheus" / "rules").mkdir(parents=True)
    (target / "prometheus" / "prometheus.yml").write_text(
        _test_prometheus_config(shipped / "prometheus" / "prometheus.yml")
    )
    for rules in (shipped / "prometheus" / "rules").glob("*.yml"):
        (target / "prometheus" / "rules" / rules.name).write_text(_test_rules(rules))
    (target / "alertmanager.yml").write_text(_test_alertmanager_config(shipped / "alertmanager" / "alertmanager.yml"))
    # Containers run as other users: the copies must be readable by them.
    for path in target.rglob("*"):
        path.chmod(0o755 if path.is_dir() else 0o644)
    target.chmod(0o755)


def _set_env_file(project: Path, **values: str) -> None:
    env_file = project / ".env"
    lines = [line for line in env_file.read_text().splitlines() if line.partition("=")[0] not in values]
    lines += [f"{key}={value}" for key, value in values.items()]
    env_file.write_text("\n".join(lines) + "\n")


# ---------------------------------------------------------------- the stack


@pytest.fixture(scope="module")
def stack(bake_once: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    require_docker()
    root = tmp_path_factory.mktemp("stack")
    project = root / "project"
    shutil.copytree(bake_once(), project)
    suffix = uuid.uuid4().hex[:8]
    app_image = f"tmpl-stack-app-{suffix}:test"
    receiver_image = f"tmpl-stack-receivers-{suffix}:test"
    build_args = {"VERSION": "0.1.0", "GIT_COMMIT": "0123456789abcdef0123456789abcdef01234567"}
    started = time.monotonic()
    stack = Stack(project, f"tmpl-stack-{suffix}", {})
    try:
        build_app_image(project, "3.13", app_image, build_args)
        build_standins(STACK_DIR / "receivers" / "Dockerfile")
        docker("build", "--pull=false", "-q", "-t", receiver_image, str(STACK_DIR / "receivers"), timeout=600)
        _write_test_configs(project, root / "config")
        # Alertmanager's default receiver is the URL in .env, as for a user.
        _set_env_file(project, ALERTMANAGER_WEBHOOK_URL="http://webhook:9095/alerts")
        stack.env = docker_env(
            STACK_APP_IMAGE=app_image,
            STACK_APP_PORT=str(APP_PORT),
            STACK_RECEIVER_IMAGE=receiver_image,
            STACK_CONFIG_DIR=str(root / "config"),
        )
        # Stand-ins for the Prometheus and Alertmanager images the compose file pins.
        resolved = root / "compose.resolved.yaml"
        resolved.write_text(stack.compose("config").stdout)
        build_standins(resolved)
        for image in re.findall(r"(?m)^\s+image: (\S+)$", resolved.read_text()):
            require_image(image)
        print(f"stack images ready in {time.monotonic() - started:.1f} s")
        stack.compose("up", "-d", "--wait", "--wait-timeout", "120", "--pull", "never", timeout=240)
        stack.started = time.time()
        print(f"stack up in {time.monotonic() - started:.1f} s")
        yield stack
    finally:
        if not stack.down_done and stack.env:
            logs = stack.compose("logs", "--no-color", "--tail", "60", check=False).stdout
            print(f"stack logs (tail):\n{logs[-6000:]}")
        if stack.env:
            stack.down()
        docker("image", "rm", "-f", app_image, receiver_image, check=False)


@dataclass
class Traffic:
    statuses: dict[str, int]


@pytest.fixture(scope="module")
def traffic(stack: Stack) -> Traffic:
    """Requests without server errors: items, a downstream call, 404s and a 422."""
    statuses: dict[str, int] = {}
    paths = [f"/api/items/{n}" for n in range(1, 21)]
    paths += ["/api/downstream"] * 3 + ["/no/such/path", "/api/nope", "/api/items/not-a-number"]
    for path in paths:
        status, _ = stack.app(path)
        statuses[path] = status
    assert all(statuses[f"/api/items/{n}"] == 200 for n in range(1, 21)), statuses
    assert statuses["/api/downstream"] == 200, statuses
    assert statuses["/no/such/path"] == 404, statuses
    assert statuses["/api/items/not-a-number"] == 422, statuses
    # Scraped: the app target is up and has counted all of it (a scrape between the items and
    # the 404s would leave the 404s' series out of the tests that follow).
    wait_for(
        "the traffic in Prometheus",
        lambda: stack.query(f'sum(http_server_request_duration_seconds_count{{job="app"}}) >= {len(paths)}'),
    )
    return Traffic(statuses)


@pytest.fixture(scope="module")
def error_burst(stack: Stack, traffic: Traffic) -> list[dict[str, Any]]:
    """/api/fail several times: HighErrorRatio goes from inactive to firing, and is delivered."""
    time.sleep(3)  # a few evaluations of the rules over the error-free traffic
    assert stack.alert_state("HighErrorRatio") is None, "HighErrorRatio fired before any server error"
    # Errors over several scrapes: rate() ignores what a new series counted before its first scrape.
    failures = 0

    def fail_until_firing() -> bool:
        nonlocal failures
        for _ in range(4):
            status, body = stack.app("/api/fail")
            assert status == 500, body
            assert isinstance(body, dict) and body["error"]["trace_id"], body
            failures += 1
        return failures >= 10 and stack.alert_state("HighErrorRatio") == "firing"

    try:
        wait_for("HighErrorRatio to fire", fail_until_firing, timeout=60, interval=0.25)
    except pytest.fail.Exception:
        rules = stack.prometheus("/api/v1/rules")["groups"]
        health = [(r["name"], r["health"], r.get("lastError"), r.get("state")) for g in rules for r in g["rules"]]
        print(f"rules: {health}")
        raise
    return wait_for("HighErrorRatio at the webhook", lambda: stack.delivered("HighErrorRatio"), timeout=60)


# ---------------------------------------------------------------- targets and series


def test_app_target_up_with_route_template_series(stack: Stack, traffic: Traffic) -> None:
    # The local stack turns the API docs back on (the image serves none).
    assert stack.app("/openapi.json")[0] == 200

    def all_up() -> list[dict[str, Any]] | None:
        targets = stack.prometheus("/api/v1/targets", state="active")["activeTargets"]
        return targets if all(t["health"] == "up" for t in targets) else None

    try:
        targets = wait_for("every scrape target up", all_up, timeout=30)
    except pytest.fail.Exception:
        targets = stack.prometheus("/api/v1/targets", state="active")["activeTargets"]
        pytest.fail(f"targets not up: {[(t['labels'], t['health'], t['lastError']) for t in targets]}")
    app = [t for t in targets if t["labels"]["job"] == "app"]
    assert len(app) == 1, app
    assert app[0]["labels"]["service"] == SERVICE

    series = stack.prometheus("/api/v1/series", **{"match[]": "http_server_request_duration_seconds_count"})
    routes = {s["http_route"] for s in series}
    assert ROUTE in routes and "/api/downstream" in routes, routes
    assert "__unmatched__" in routes, f"404s are not counted under __unmatched__: {routes}"
    assert not [r for r in routes if re.search(r"/api/items/\d", r)], f"raw paths used as labels: {routes}"
    statuses = {(s["http_route"], s["http_response_status_code"]) for s in series}
    assert {(ROUTE, "200"), ("__unmatched__", "404"), ("/api/downstream", "200")} <= statuses, statuses


def test_the_first_requests_of_a_new_series_count_in_increase(stack: Stack, traffic: Traffic) -> None:
    """compose.yaml's created-timestamp-zero-ingestion: a series' first scrape already counts in
    rate() and increase() (the first burst of 5xx after a deploy is what the error ratio must see)."""
    address = stack.address("app", APP_PORT, 1)
    for _ in range(5):
        connection = http.client.HTTPConnection(*address, timeout=10)
        try:
            connection.request("DELETE", "/api/items/1")
            assert connection.getresponse().status == 405
        finally:
            connection.close()
    selector = 'http_server_request_duration_seconds_count{http_request_method="DELETE"}'
    wait_for("the new series", lambda: stack.query(selector) or None, timeout=30)
    time.sleep(3)  # more scrapes of the same total
    (sample,) = stack.query(f"sum(increase({selector}[1m]))")
    assert float(sample["value"][1]) >= 4, f"the burst is invisible to increase(): {sample}"


# ---------------------------------------------------------------- alerts


def test_error_burst_fires_high_error_ratio_and_reaches_the_webhook(
    stack: Stack, error_burst: list[dict[str, Any]]
) -> None:
    alert = error_burst[0]
    assert alert["labels"]["service"] == SERVICE
    assert alert["labels"]["severity"] == "critical"
    assert alert["annotations"]["runbook_url"] == "docs/monitoring.md#higherrorratio"
    assert "%" in alert["annotations"]["summary"], alert["annotations"]


def _dashboard_expressions(project: Path) -> list[tuple[str, str, str]]:
    """(dashboard, panel title, PromQL) of every Prometheus target of the baked project's dashboards."""
    found = []
    for path in sorted((project / "observability" / "grafana" / "dashboards").glob("*.json")):
        dashboard = json.loads(path.read_text())
        panels = list(dashboard.get("panels", []))
        while panels:
            panel = panels.pop(0)
            panels += panel.get("panels", [])
            for target in panel.get("targets", []):
                source = target.get("datasource") or panel.get("datasource") or {}
                if source.get("type") == "prometheus" and target.get("expr"):
                    found.append((path.name, str(panel.get("title")), str(target["expr"])))
    return found


def _variable_queries(project: Path) -> list[tuple[str, str, str, str]]:
    """(dashboard, variable, selector, label) of every Prometheus `label_values` variable of the dashboards."""
    found = []
    for path in sorted((project / "observability" / "grafana" / "dashboards").glob("*.json")):
        for variable in json.loads(path.read_text())["templating"]["list"]:
            if variable["type"] == "query" and variable["datasource"]["type"] == "prometheus":
                match = re.fullmatch(r"label_values\((.+), (\w+)\)", variable["query"]["query"])
                assert match, variable
                found.append((path.name, variable["name"], match[1], match[2]))
    return found


def _concrete(expr: str, variables: dict[str, str]) -> str:
    """Grafana variables ($x, ${x}, ${x:format}, [[x]]) replaced by concrete values (unknown ones: `.*`)."""

    def value(match: re.Match[str]) -> str:
        return variables.get(next(group for group in match.groups() if group), ".*")

    result = re.sub(r"\$\{(\w+)(?::\w+)?\}|\[\[(\w+)\]\]|\$(\w+)", value, expr)
    assert "$" not in result, result
    return result


def _metric_names(expr: str) -> set[str]:
    """The metric names a PromQL expression reads (strings, matchers, ranges and grouping removed)."""
    text = re.sub(r'"(?:[^"\\]|\\.)*"', "", expr)
    text = re.sub(r"\{[^}]*\}|\[[^\]]*\]", " ", text)
    text = re.sub(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", text)
    names = set(re.findall(r"[A-Za-z_:][\w:]*\b(?!\s*\()", text))
    return {name for name in names if name not in PROMQL_WORDS and not re.fullmatch(r"[\d.eE+-]+", name)}


def test_dashboard_and_rule_expressions_evaluate(
    stack: Stack, error_burst: list[dict[str, Any]], bake_once: Any
) -> None:
    """Every PromQL of the dashboards, of the rules and of the Jaeger -> metrics links evaluates.

    A dashboard panel must have data when it only reads what the app exports (or `up`/`ALERTS`):
    after the traffic and the error burst that is every panel of the service overview (rates,
    ratios and percentiles over 5 minutes, gauges, process metrics, firing alerts). Panels on
    metrics of services that cannot run here (cAdvisor, ...) must only evaluate. Of the alert
    rules, HighErrorRatio has a result; ServiceDown, ScrapeFailing and HighLatencyP95 have none
    while the service is healthy and fast; any other rule must evaluate.
    """
    rules = [
        rule
        for path in sorted((stack.project / "observability" / "prometheus" / "rules").glob("*.yml"))
        for group in yaml.safe_load(path.read_text())["groups"]
        for rule in group["rules"]
    ]
    # Recording rules over what exists here have data too.
    data_here = DATA_HERE | {
        rule["record"] for rule in rules if "record" in rule and _metric_names(rule["expr"]) <= DATA_HERE
    }
    variables = {**GRAFANA_VARIABLES, "project": stack.name, "compose_project": stack.name}
    expressions = _dashboard_expressions(stack.project)
    assert len(expressions) >= 15, expressions
    empty, evaluated_only = [], []
    for dashboard, title, expr in expressions:
        result = stack.query(_concrete(expr, variables))
        if not _metric_names(expr) <= data_here:
            evaluated_only.append(f"{dashboard} / {title}")
        elif not result:
            empty.append(f"{dashboard} / {title}: {expr}")
    assert not empty, "panels without data after the traffic:\n" + "\n".join(empty)
    assert len(evaluated_only) < len(expressions), evaluated_only
    print(f"panels evaluated only (their metrics cannot exist here): {evaluated_only}")

    # Without Grafana the runbook gives the panels' queries instead: they have data too.
    queries = runbook_queries(bake_once(use_grafana=False))
    assert len(queries) >= 8, queries
    empty = [query for query in queries if not stack.query(query)]
    assert not empty, "runbook queries without data after the traffic:\n" + "\n".join(empty)

    # The dashboards' variable queries: label_values(selector, label) is Grafana's, through the
    # labels API. Over what exists here, each offers the value the panels were evaluated with.
    for dashboard, name, selector, label in _variable_queries(stack.project):
        offered = stack.prometheus(f"/api/v1/label/{label}/values", **{"match[]": _concrete(selector, variables)})
        if _metric_names(selector) <= data_here:
            expected = variables.get(name, ".*")
            assert offered if expected == ".*" else expected in offered, f"{dashboard} / ${name}: {offered}"

    alerts = {rule["alert"]: rule["expr"] for rule in rules if "alert" in rule}
    expected_data = {"HighErrorRatio": True, "ServiceDown": False, "ScrapeFailing": False, "HighLatencyP95": False}
    assert set(expected_data) <= set(alerts), alerts
    for rule in rules:
        result = stack.query(rule["expr"])
        name = rule.get("alert") or rule.get("record")
        if name in expected_data:
            assert bool(result) == expected_data[name], f"{name}: {rule['expr']} -> {result}"

    # The metric queries Jaeger's "Related metrics" opens from a span (datasources.yaml).
    datasources = yaml.safe_load(
        (stack.project / "observability" / "grafana" / "provisioning" / "datasources" / "datasources.yaml").read_text()
    )
    jaeger = next(source for source in datasources["datasources"] if source["type"] == "jaeger")
    for query in jaeger["jsonData"]["tracesToMetrics"]["queries"]:
        expr = query["query"].replace("$$__tags", f'service="{SERVICE}"')
        assert stack.query(expr), f"{query['name']}: {expr}"


# ---------------------------------------------------------------- exemplars, spans and logs


def test_exemplars_point_to_exported_spans_and_logged_requests(stack: Stack, error_burst: list[dict[str, Any]]) -> None:
    data = stack.prometheus(
        "/api/v1/query_exemplars",
        query='http_server_request_duration_seconds_bucket{job="app"}',
        start=f"{stack.started - 60:.3f}",
        end=f"{time.time() + 60:.3f}",
    )
    exemplars = {
        exemplar["labels"]["trace_id"]: series["seriesLabels"] for series in data for exemplar in series["exemplars"]
    }
    assert exemplars, f"no exemplars: {data}"
    assert all(re.fullmatch(r"[0-9a-f]{32}", trace_id) for trace_id in exemplars), exemplars
    routes = {labels["http_route"] for labels in exemplars.values()}
    assert ROUTE in routes and "/api/fail" in routes, routes

    # The spans the app exported, decoded by the OTLP receiver.
    def spans_for_exemplars() -> dict[str, list[dict[str, Any]]] | None:
        by_trace: dict[str, list[dict[str, Any]]] = {}
        for span in stack.spans():
            by_trace.setdefault(span["trace_id"], []).append(span)
        return by_trace if set(exemplars) <= set(by_trace) else None

    spans = wait_for("the exemplars' spans at the OTLP receiver", spans_for_exemplars, timeout=30)
    for trace_id, labels in exemplars.items():
        server = [s for s in spans[trace_id] if s["kind"] == 2]  # SPAN_KIND_SERVER
        assert server, f"no server span in trace {trace_id}: {spans[trace_id]}"
        assert {s["service_name"] for s in spans[trace_id]} == {SERVICE}
        # A 404 matched no route: its label is __unmatched__, its span has no http.route.
        route = None if labels["http_route"] == "__unmatched__" else labels["http_route"]
        assert any(s["attributes"].get("http.route") == route for s in server), (labels, server)

    # The JSON access lines of `docker compose logs app` (a downstream call adds a second one to its trace).
    access: dict[str, list[dict[str, Any]]] = {}
    for record in stack.app_logs():
        if record.get("logger") == "access" and record.get("trace_id"):
            access.setdefault(record["trace_id"], []).append(record)
    missing = set(exemplars) - set(access)
    assert not missing, f"exemplar trace ids without an access line: {missing}"
    for trace_id, labels in exemplars.items():
        lines = [(line["route"], str(line["status"])) for line in access[trace_id]]
        assert (labels["http_route"], labels["http_response_status_code"]) in lines, (lines, labels)
    # Every server error was exported and logged under the same trace id.
    failed = {t for t, lines in access.items() if any(line.get("status") == 500 for line in lines)}
    assert len(failed) >= 10 and failed <= set(spans), failed - set(spans)


# ---------------------------------------------------------------- the shipped smoke check


def run_smoke(stack: Stack, timeout: float) -> tuple[int, dict[str, str], str]:
    """The baked project's scripts/smoke.py against this stack: exit code, outcome per check, output."""
    env = {
        **stack.env,
        "COMPOSE_PROJECT_NAME": stack.name,
        "COMPOSE_FILE": os.pathsep.join(["compose.yaml", str(OVERRIDE)]),
        "COMPOSE_PROFILES": ",".join(PROFILES),
    }
    result = subprocess.run(
        [shutil.which("python3") or "python3", "scripts/smoke.py", "--timeout", str(timeout)],
        cwd=stack.project,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    print(result.stdout)
    outcome = {}
    for line in result.stdout.splitlines():
        match = re.match(r"(PASS|FAIL|UNAVAILABLE)\s+(.+?): ", line)
        if match:
            outcome[match.group(2)] = match.group(1)
    return result.returncode, outcome, f"{result.stdout}\n{result.stderr}"


def test_smoke_script_reports_missing_backends_as_unavailable(stack: Stack, error_burst: list[dict[str, Any]]) -> None:
    """Grafana, Jaeger and Loki cannot run here: UNAVAILABLE, never PASS, and exit code 2."""
    code, outcome, context = run_smoke(stack, timeout=20)
    expected = {
        "service app": "PASS",
        "service prometheus": "PASS",
        "service alertmanager": "PASS",
        # The override's receivers are services of the project too.
        "service otlp": "PASS",
        "service webhook": "PASS",
        "service grafana": "UNAVAILABLE",
        "service jaeger": "UNAVAILABLE",
        "service loki": "UNAVAILABLE",
        "service alloy": "UNAVAILABLE",
        "grafana data sources": "UNAVAILABLE",
        "app answers a request": "PASS",
        "jaeger has its trace": "UNAVAILABLE",
        "loki has its log line": "UNAVAILABLE",
        "prometheus counted it": "PASS",
        "prometheus has its exemplar": "PASS",
    }
    assert {name: outcome.get(name) for name in expected} == expected, context
    # Any other service of the compose file cannot run here.
    others = {name: status for name, status in outcome.items() if name not in expected}
    assert all(name.startswith("service ") and status == "UNAVAILABLE" for name, status in others.items()), context
    assert code == 2, f"only unavailable checks: exit 2, got {code}\n{context}"


@pytest.mark.parametrize(
    "answers",
    [{}, {"use_tracing": False, "use_jaeger": False, "use_grafana": False, "use_loki": False}],
    ids=["everything", "prometheus-alertmanager-without-tracing"],
)
def test_smoke_script_is_strictly_typed(bake_once: Any, answers: dict[str, Any]) -> None:
    """The generated mypy settings check src/ and tests/ only: hold scripts/smoke.py to --strict here."""
    project = bake_once(**answers)
    run(
        [sys.executable, "-m", "mypy", "--strict", "--cache-dir", "/dev/null", "scripts/smoke.py"],
        cwd=project,
        env={k: v for k, v in os.environ.items() if k != "MYPYPATH"},
        timeout=300,
    )


# ---------------------------------------------------------------- scaling, stopping, tearing down


def test_two_replicas_are_two_targets(stack: Stack, traffic: Traffic) -> None:
    stack.compose("up", "-d", "--wait", "--wait-timeout", "120", "--pull", "never", "--scale", "app=2", timeout=240)
    for index in (1, 2):
        assert stack.app("/api/items/7", index=index)[0] == 200

    def two_up() -> list[dict[str, Any]] | None:
        targets = stack.prometheus("/api/v1/targets", state="active")["activeTargets"]
        app = [t for t in targets if t["labels"]["job"] == "app" and t["health"] == "up"]
        return app if len(app) == 2 else None

    targets = wait_for("two app targets up", two_up, timeout=60)
    assert len({t["labels"]["instance"] for t in targets}) == 2, targets
    result = wait_for("sum(up) == 2", lambda: stack.query(f'sum(up{{job="app", service="{SERVICE}"}}) == 2'))
    assert float(result[0]["value"][1]) == 2


def test_stopping_the_app_fires_service_down(stack: Stack, error_burst: list[dict[str, Any]]) -> None:
    assert stack.alert_state("ServiceDown") is None
    stack.compose("stop", "app", timeout=120)
    wait_for("ServiceDown to fire", lambda: stack.alert_state("ServiceDown") == "firing", timeout=60)
    alerts = wait_for("ServiceDown at the webhook", lambda: stack.delivered("ServiceDown"), timeout=60)
    assert alerts[0]["labels"]["severity"] == "critical"
    assert alerts[0]["labels"]["service"] == SERVICE
    assert alerts[0]["annotations"]["runbook_url"] == "docs/monitoring.md#servicedown"

    # The smoke check now fails (exit 1): the app's container exists but is not running.
    code, outcome, context = run_smoke(stack, timeout=5)
    assert outcome["service app"] == "FAIL" and outcome["service prometheus"] == "PASS", context
    assert outcome["app answers a request"] == "UNAVAILABLE", context
    assert code == 1, context


def test_prometheus_reloads_on_sighup_and_refuses_http_lifecycle_calls(stack: Stack) -> None:
    """What the runbook says to run after editing the rules, and why the HTTP way is off."""

    def reloaded_at() -> float | None:
        samples = stack.query("max(prometheus_config_last_reload_success_timestamp_seconds)")
        return float(samples[0]["value"][1]) if samples else None

    before = wait_for("Prometheus' own reload timestamp", reloaded_at, timeout=60)
    time.sleep(1.1)  # the timestamp counts whole seconds
    stack.compose("kill", "-s", "SIGHUP", "prometheus")
    wait_for("the reload", lambda: (reloaded_at() or 0) > before or None, timeout=60)
    assert stack.query("min(prometheus_config_last_reload_successful)")[0]["value"][1] == "1"
    connection = http.client.HTTPConnection(*stack.address("prometheus", 9090), timeout=10)
    try:
        connection.request("POST", "/-/quit")
        assert connection.getresponse().status == 403, "the lifecycle API must stay off"
    finally:
        connection.close()


def test_down_leaves_nothing(stack: Stack) -> None:
    assert any(stack.leftovers().values())
    stack.down()
    leftovers = stack.leftovers()
    assert not any(leftovers.values()), f"left behind by `docker compose down -v`: {leftovers}"
