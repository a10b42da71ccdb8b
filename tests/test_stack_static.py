"""The docker compose observability stack, checked without starting it.

For a handful of toggle combinations: the compose file resolves and matches the
Compose Specification, every mounted file exists, every config parses, the
Grafana provisioning only refers to data sources and metrics that exist, the
alert rules are documented and unit-tested, and promtool / amtool (from the
pinned Prometheus and Alertmanager images) accept the configuration.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from helpers import (
    APP_METRICS,
    DEFAULT_PACKAGE,
    DEFAULT_SLUG,
    TEMPLATE_DIR,
    provide_images,
    require_executable,
    run,
    runbook_queries,
    unavailable,
)


def _pinned_image(name: str) -> str:
    """The image compose.yaml pins for `name`: promtool and amtool run from the very same."""
    compose = (TEMPLATE_DIR / "{{cookiecutter.project_slug}}" / "compose.yaml").read_text(encoding="utf-8")
    match = re.search(rf"^  {name}: &{name}-image (\S+)$", compose, re.MULTILINE)
    assert match, f"compose.yaml pins no {name} image"
    return match[1]


PROMETHEUS_IMAGE = _pinned_image("prometheus")
ALERTMANAGER_IMAGE = _pinned_image("alertmanager")
BACKENDS = ("use_prometheus", "use_alertmanager", "use_grafana", "use_jaeger", "use_loki", "use_cadvisor")
NO_STACK = dict.fromkeys(BACKENDS, False)
# The template's own defaults (use_cadvisor is off unless asked for).
DEFAULTS: dict[str, Any] = json.loads((TEMPLATE_DIR / "cookiecutter.json").read_text(encoding="utf-8"))

# name -> answers (on top of the template's defaults)
COMBOS: dict[str, dict[str, bool]] = {
    "everything": {},
    "no-stack": {**NO_STACK},
    "prometheus": {**NO_STACK, "use_prometheus": True},
    "prometheus-alertmanager": {**NO_STACK, "use_prometheus": True, "use_alertmanager": True},
    "grafana-prometheus": {**NO_STACK, "use_prometheus": True, "use_grafana": True},
    "grafana-loki": {**NO_STACK, "use_grafana": True, "use_loki": True},
    "grafana-jaeger": {**NO_STACK, "use_grafana": True, "use_jaeger": True},
    "no-grafana": {"use_grafana": False},
    "cadvisor": {"use_cadvisor": True},
    "prometheus-cadvisor": {**NO_STACK, "use_prometheus": True, "use_cadvisor": True},
    "loki-alone": {**NO_STACK, "use_loki": True},
    # Metrics and logs without tracing: the stack keeps no trace ids and asks for no exemplars.
    "no-tracing": {"use_tracing": False, "use_jaeger": False},
    # Spans with trace ids for the logs, and no backend to send them to.
    "no-jaeger": {"use_jaeger": False},
    "jaeger-alone": {**NO_STACK, "use_jaeger": True},
}
PROMETHEUS_COMBOS = [
    "everything",
    "no-tracing",
    "prometheus",
    "prometheus-alertmanager",
    "grafana-prometheus",
    "no-grafana",
    "cadvisor",
    "prometheus-cadvisor",
]
ALERTMANAGER_COMBOS = ["everything", "prometheus-alertmanager", "no-grafana", "cadvisor", "no-tracing"]
GRAFANA_COMBOS = ["everything", "grafana-prometheus", "grafana-loki", "grafana-jaeger", "cadvisor", "no-tracing"]
LOKI_COMBOS = ["everything", "grafana-loki", "no-grafana", "loki-alone", "no-tracing"]

# compose service -> toggle
SERVICES = {
    "prometheus": "use_prometheus",
    "alertmanager": "use_alertmanager",
    "grafana": "use_grafana",
    "jaeger": "use_jaeger",
    "loki": "use_loki",
    "alloy": "use_loki",
    "cadvisor": "use_cadvisor",
}

# Bind mounts of configuration per service.
CONFIG_MOUNTS = {"prometheus": 1, "alertmanager": 1, "grafana": 2, "jaeger": 1, "loki": 2, "alloy": 1, "cadvisor": 0}
# Host paths a service may mount (read-only): cAdvisor reads the host's cgroups and Docker's state.
HOST_MOUNTS = {"cadvisor": {"/", "/var/run", "/sys", "/var/lib/docker", "/dev/disk"}}

PROMETHEUS_SYNTHETIC = {"up", "ALERTS", "ALERTS_FOR_STATE"}
# Recording rules of rules/resources.yml, usable like exported metrics.
RECORDED = {"app:memory_limit_bytes"}
# cAdvisor's metrics and labels used by the container rules and dashboard; compose_project and
# compose_service are renamed from its container labels by the scrape job.
CADVISOR_METRICS = {
    "container_cpu_usage_seconds_total",
    "container_memory_working_set_bytes",
    "container_spec_memory_limit_bytes",
    "container_network_receive_bytes_total",
    "container_network_transmit_bytes_total",
}
CADVISOR_LABELS = {"compose_project", "compose_service", "name", "id", "image"}
ALLOWED_LABELS = {
    # the service's own labels
    "http_request_method",
    "http_route",
    "http_response_status_code",
    "url_scheme",
    "error_type",
    "le",
    "version",
    "commit",
    "python_version",
    "generation",
    # added by the scrape configuration
    "job",
    "instance",
    "service",
    # ALERTS
    "alertname",
    "alertstate",
    "severity",
}
# Loki labels set by Alloy, and the structured metadata / JSON fields used.
LOKI_LABELS = {"service_name", "container", "stream", "level"}
LOKI_FIELDS = {"trace_id", "span_id", "request_id", "logger", "status", "duration_ms"} | LOKI_LABELS
# Keys of the service's JSON log lines (contract), which `| json` can extract.
LOG_KEYS = {
    "timestamp",
    "level",
    "message",
    "logger",
    "module",
    "function",
    "line",
    "service_name",
    "service_version",
    "deployment_environment",
    "trace_id",
    "span_id",
    "trace_sampled",
    "request_id",
    "exception_type",
    "exception_message",
    "exception_stacktrace",
    "method",
    "route",
    "path",
    "status",
    "duration_ms",
    "client",
    "user_agent",
}
LOG_LEVELS = {"DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"}
PROMQL_KEYWORDS = {
    "by",
    "without",
    "on",
    "ignoring",
    "group_left",
    "group_right",
    "bool",
    "and",
    "or",
    "unless",
    "offset",
    "inf",
    "nan",
}
SEVERITIES = {"critical", "warning", "info"}


def _on(answers: dict[str, bool], toggle: str) -> bool:
    return bool(answers.get(toggle, DEFAULTS[toggle]))


def _answers(name: str) -> dict[str, Any]:
    return dict(COMBOS[name])


@pytest.fixture(scope="session")
def baked(bake_once: Any) -> Any:
    def get(name: str) -> Path:
        return Path(bake_once(**_answers(name)))

    return get


def _yaml(path: Path) -> Any:
    return yaml.safe_load(path.read_text(encoding="utf-8"))


def require_compose() -> None:
    require_executable("docker")
    result = subprocess.run(["docker", "compose", "version"], capture_output=True, text=True, timeout=60, check=False)
    if result.returncode != 0:
        unavailable(f"'docker compose version' failed: {result.stderr.strip()[:200]}")


def compose_config(project: Path, *args: str, env: dict[str, str] | None = None) -> dict[str, Any]:
    """`docker compose config` of the baked project, as data (reads its .env)."""
    require_compose()
    result = subprocess.run(
        ["docker", "compose", *args, "config", "--format", "json"],
        cwd=project,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        env=env,
    )
    assert result.returncode == 0, f"docker compose config failed:\n{result.stderr}"
    config: dict[str, Any] = json.loads(result.stdout)
    return config


# --------------------------------------------------------------------------- compose


@pytest.mark.fast
@pytest.mark.parametrize("combo", list(COMBOS))
def test_compose_config_resolves_with_the_expected_services(baked: Any, combo: str) -> None:
    project = baked(combo)
    answers = _answers(combo)
    expected = {"app"} | {svc for svc, toggle in SERVICES.items() if _on(answers, toggle)}

    # .env (written by the post-gen hook) selects every backend of the project.
    config = compose_config(project)
    assert set(config["services"]) == expected
    assert config["name"] == DEFAULT_SLUG

    # Without profiles only the app runs: `docker compose up app` needs nothing else.
    alone = compose_config(project, "--profile", "")
    assert set(alone["services"]) == {"app"}
    assert not config["services"]["app"].get("depends_on"), "the app must start without any backend"
    for name in expected - {"app"}:
        assert config["services"][name].get("profiles"), f"{name} must sit in a profile"


@pytest.mark.fast
@pytest.mark.parametrize("combo", list(COMBOS))
def test_compose_file_matches_the_compose_specification(baked: Any, combo: str, tmp_path: Path) -> None:
    project = baked(combo)
    resolved = tmp_path / "resolved.json"
    resolved.write_text(json.dumps(compose_config(project)), encoding="utf-8")
    for document in (project / "compose.yaml", resolved):
        result = subprocess.run(
            [sys.executable, "-m", "check_jsonschema", "--builtin-schema", "vendor.compose-spec", str(document)],
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        assert result.returncode == 0, f"{document.name}:\n{result.stdout}\n{result.stderr}"


@pytest.mark.fast
@pytest.mark.parametrize("combo", list(COMBOS))
def test_compose_services_are_hardened_and_pinned(baked: Any, combo: str) -> None:
    project = baked(combo)
    config = compose_config(project)
    for name, service in config["services"].items():
        image = service["image"]
        if name != "app":
            repo, _, tag = image.rpartition(":")
            assert repo and re.fullmatch(r"v?\d+\.\d+\.\d+", tag), f"{name}: image {image} is not pinned to a version"
        for port in service.get("ports", []):
            assert port.get("host_ip") == "127.0.0.1", f"{name}: port {port} is not bound to 127.0.0.1"
        assert service.get("restart") == "unless-stopped", f"{name}: no restart policy"
        assert service.get("healthcheck", {}).get("test"), f"{name}: no healthcheck"
        for dependency, condition in (service.get("depends_on") or {}).items():
            assert condition["condition"] == "service_healthy", f"{name} -> {dependency}"
        for volume in service.get("volumes", []):
            if volume["type"] == "volume":
                assert volume["source"] in (config.get("volumes") or {}), f"{name}: undeclared volume"
            elif volume["target"] != "/var/run/docker.sock":
                assert volume.get("read_only"), f"{name}: config mount {volume['target']} is writable"

    # The services this machine runs for real (the stack tier) drop every capability and
    # cannot gain privileges; the others are left as their images expect.
    for name in {"app", "prometheus", "alertmanager"} & set(config["services"]):
        service = config["services"][name]
        assert service.get("cap_drop") == ["ALL"], name
        assert "no-new-privileges:true" in service.get("security_opt", []), name
    app = config["services"]["app"]
    # Scaling: a host port range, not one fixed port.
    (port,) = app["ports"]
    assert "-" in str(port["published"]), "a fixed host port would break `--scale app=3`"
    assert port["target"] == 8000
    answers = _answers(combo)
    if _on(answers, "use_json_logging") or _on(answers, "use_tracing"):
        assert app["environment"]["APP_ENVIRONMENT"] == "production"
    if _on(answers, "use_metrics"):
        assert app["environment"]["APP_GIT_COMMIT"] == "unknown"
    if _on(answers, "use_json_logging"):
        assert app["environment"]["APP_LOG_FORMAT"] == "json"
    assert "python" in app["healthcheck"]["test"] and "/health" in " ".join(app["healthcheck"]["test"])
    # The whole graceful shutdown fits in the grace period: requests in flight, then the span flush.
    grace = app["stop_grace_period"]
    settings = (project / "src" / DEFAULT_PACKAGE / "settings.py").read_text()
    match = re.search(r"graceful_timeout_seconds: float = Field\(default=([\d.]+)", settings)
    assert match, "the graceful timeout's default is not where this test looks"
    graceful = float(match[1])
    flush = 0.0
    if _on(answers, "use_tracing"):
        match = re.search(r"span_flush_seconds: float = Field\(default=([\d.]+)", settings)
        assert match, "the span flush budget's default is not where this test looks"
        flush = float(match[1])
    assert re.fullmatch(r"\d+s", grace) and int(grace[:-1]) >= graceful + flush + 5, (grace, graceful)
    # The limit the memory alerts compare against (512 MiB, app:memory_limit_bytes).
    assert int(app["mem_limit"]) == 512 * 1024 * 1024
    if _on(answers, "use_jaeger"):
        assert app["environment"]["OTEL_EXPORTER_OTLP_ENDPOINT"] == "http://jaeger:4318"
        assert app["environment"]["OTEL_SERVICE_NAME"] == DEFAULT_SLUG
        jaeger = config["services"]["jaeger"]
        assert jaeger.get("mem_limit"), "Jaeger's in-memory storage needs a memory limit"
    else:
        # .env may still carry an endpoint for local runs; it must not be Jaeger's.
        assert "jaeger" not in app["environment"].get("OTEL_EXPORTER_OTLP_ENDPOINT", "")
        if _on(answers, "use_tracing"):
            assert app["environment"]["OTEL_TRACES_EXPORTER"] == "none"
        else:
            assert not [name for name in app["environment"] if name.startswith("OTEL_")]
    if _on(answers, "use_loki"):
        assert app["labels"]["logging"] == "alloy"
    else:
        assert "labels" not in app
    if _on(answers, "use_prometheus"):
        exemplars = "--enable-feature=exemplar-storage" in config["services"]["prometheus"]["command"]
        assert exemplars == _on(answers, "use_tracing"), "exemplars are stored exactly when spans give them ids"
    if _on(answers, "use_cadvisor"):
        cadvisor = config["services"]["cadvisor"]
        assert cadvisor["profiles"] == ["cadvisor"]
        assert not cadvisor.get("ports"), "cAdvisor is scraped on the compose network, not published"
        assert "/healthz" in " ".join(cadvisor["healthcheck"]["test"])
        assert (
            "--whitelisted_container_labels=com.docker.compose.project,com.docker.compose.service"
            in (cadvisor["command"])
        )
        assert {v["source"] for v in cadvisor["volumes"]} == HOST_MOUNTS["cadvisor"]
        assert all(v["read_only"] for v in cadvisor["volumes"])


@pytest.mark.fast
@pytest.mark.parametrize("combo", GRAFANA_COMBOS)
def test_grafana_password_comes_from_env_and_has_no_fallback(baked: Any, combo: str) -> None:
    project = baked(combo)
    env_file = (project / ".env").read_text(encoding="utf-8")
    password = re.search(r"^GRAFANA_ADMIN_PASSWORD=(.+)$", env_file, re.M)
    assert password and password.group(1) not in {"change-me", "admin", ""}

    grafana = compose_config(project)["services"]["grafana"]
    assert grafana["environment"]["GF_SECURITY_ADMIN_PASSWORD"] == password.group(1)
    assert grafana["environment"]["GF_AUTH_ANONYMOUS_ENABLED"] == "false"

    # Without .env, compose refuses to start rather than fall back to a default.
    text = (project / "compose.yaml").read_text(encoding="utf-8")
    assert "${GRAFANA_ADMIN_PASSWORD:?" in text
    require_compose()
    no_env = project.parent / f"{project.name}-no-env"
    shutil.copytree(project, no_env, dirs_exist_ok=True)
    (no_env / ".env").unlink()
    result = subprocess.run(
        ["docker", "compose", "config"], cwd=no_env, capture_output=True, text=True, timeout=120, check=False
    )
    assert result.returncode != 0 and "GRAFANA_ADMIN_PASSWORD" in result.stderr


@pytest.mark.fast
@pytest.mark.parametrize("combo", list(COMBOS))
def test_every_mounted_file_exists(baked: Any, combo: str) -> None:
    project = baked(combo)
    config = compose_config(project)
    mounts = 0
    for name, service in config["services"].items():
        for volume in service.get("volumes", []):
            if volume["type"] != "bind" or volume["source"] == "/var/run/docker.sock":
                continue
            if volume["source"] in HOST_MOUNTS.get(name, set()):
                assert volume.get("read_only"), f"{name}: host path {volume['source']} must be read-only"
                continue
            source = Path(volume["source"])
            assert source.is_relative_to(project), f"{name}: bind mount outside the project: {source}"
            assert source.exists(), f"{name}: mounts {source.relative_to(project)}, which does not exist"
            mounts += 1
        build = service.get("build")
        if build:
            assert (Path(build["context"]) / build.get("dockerfile", "Dockerfile")).is_file()
    answers = _answers(combo)
    expected = sum(CONFIG_MOUNTS[svc] for svc, toggle in SERVICES.items() if _on(answers, toggle))
    assert mounts == expected, "a stack service lost (or gained) a configuration mount"


@pytest.mark.fast
@pytest.mark.parametrize("combo", list(COMBOS))
def test_disabled_backends_leave_nothing_behind(baked: Any, combo: str) -> None:
    project = baked(combo)
    answers = _answers(combo)
    files = [project / "compose.yaml", project / ".env", project / ".env.example"]
    files += (
        [p for p in (project / "observability").rglob("*") if p.is_file()]
        if (project / "observability").exists()
        else []
    )
    if (project / "docs" / "monitoring.md").exists():
        files.append(project / "docs" / "monitoring.md")
    names = {
        "use_prometheus": ["prometheus"],
        "use_alertmanager": ["alertmanager"],
        "use_grafana": ["grafana"],
        "use_jaeger": ["jaeger"],
        "use_loki": ["loki", "alloy"],
        "use_cadvisor": ["cadvisor"],
    }
    for toggle, words in names.items():
        # cAdvisor has no configuration folder: a scrape job, rules and a dashboard.
        folders = [project / "observability" / w for w in words if w != "cadvisor"]
        if _on(answers, toggle):
            assert all(f.is_dir() for f in folders)
            continue
        assert not any(f.exists() for f in folders)
        for file in files:
            text = file.read_text(encoding="utf-8").lower()
            for word in words:
                # "Grafana Alloy" names the shipper; only that one may stay when Grafana is off.
                hits = [m.start() for m in re.finditer(word, text)]
                if word == "grafana":
                    hits = [h for h in hits if not text.startswith(("grafana alloy", "grafana/"), h)]
                if word == "prometheus":
                    # the Python client library, the collector's exporter of Jaeger's own metrics,
                    # and the Prometheus-compatible API of Loki's ruler
                    skip = ("prometheus-client", "prometheus_client", "prometheus:\n", "prometheus/api/v1/")
                    hits = [h for h in hits if not text.startswith(skip, h)]
                assert not hits, f"{file.relative_to(project)} still mentions {word} although {toggle} is off"
    if not any(_on(answers, t) for t in BACKENDS):
        assert not (project / "observability").exists()
        assert not (project / "docs" / "monitoring.md").exists()


@pytest.mark.fast
@pytest.mark.parametrize("combo", list(COMBOS))
def test_rendered_files_have_no_template_debris(baked: Any, combo: str) -> None:
    project = baked(combo)
    files = [project / "compose.yaml", project / ".env.example"]
    if (project / "observability").exists():
        files += [p for p in (project / "observability").rglob("*") if p.is_file()]
    if (project / "docs" / "monitoring.md").exists():
        files.append(project / "docs" / "monitoring.md")
    for file in files:
        text = file.read_text(encoding="utf-8")
        rel = file.relative_to(project)
        assert "cookiecutter" not in text, rel
        assert "{%" not in text and "%}" not in text, rel
        assert "\n\n\n" not in text, f"{rel}: two consecutive blank lines"
        assert text.endswith("\n") and not text.endswith("\n\n"), f"{rel}: trailing blank lines"
        assert not re.search(r"[ \t]+\n", text), f"{rel}: trailing whitespace"
        if file.suffix in {".yml", ".yaml"}:
            yaml.safe_load(text)
        if file.suffix == ".json":
            json.loads(text)
        if file.suffix == ".md":
            for heading in re.finditer(r"^#+ .*\n(.*)", text, re.M):
                assert heading.group(1) == "", f"{rel}: no blank line after {heading.group(0)!r}"


# --------------------------------------------------------------------------- prometheus


@pytest.mark.fast
@pytest.mark.parametrize("combo", PROMETHEUS_COMBOS)
def test_prometheus_scrapes_what_is_enabled(baked: Any, combo: str) -> None:
    project = baked(combo)
    answers = _answers(combo)
    config = _yaml(project / "observability/prometheus/prometheus.yml")
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}
    expected = {"app", "prometheus"} | {
        svc for svc, toggle in SERVICES.items() if svc != "grafana" and _on(answers, toggle)
    }
    assert set(jobs) == expected
    app = jobs["app"]
    (sd,) = app["dns_sd_configs"]
    assert sd["names"] == ["app"] and sd["type"] == "A" and sd["port"] == 8000
    assert {"target_label": "service", "replacement": DEFAULT_SLUG} in app["relabel_configs"]
    assert config["global"]["scrape_protocols"][0].startswith("OpenMetricsText")
    assert config["rule_files"] == ["rules/*.yml"]
    if _on(answers, "use_alertmanager"):
        (am,) = config["alerting"]["alertmanagers"]
        assert am["dns_sd_configs"][0]["names"] == ["alertmanager"]
    else:
        assert "alerting" not in config
    if _on(answers, "use_cadvisor"):
        cadvisor = jobs["cadvisor"]
        assert cadvisor["dns_sd_configs"][0]["names"] == ["cadvisor"] and cadvisor["dns_sd_configs"][0]["port"] == 8080
        relabels = cadvisor["metric_relabel_configs"]
        keep = [r for r in relabels if r.get("action") == "keep"]
        assert keep == [
            {"source_labels": ["container_label_com_docker_compose_project"], "regex": ".+", "action": "keep"}
        ]
        renamed = {r["target_label"]: r["source_labels"] for r in relabels if "target_label" in r}
        assert renamed == {
            "compose_project": ["container_label_com_docker_compose_project"],
            "compose_service": ["container_label_com_docker_compose_service"],
        }
        # The labels the container rules and dashboard use are exactly the renamed ones.
        assert set(renamed) <= CADVISOR_LABELS


def _rules(project: Path, folder: str = "observability/prometheus/rules") -> list[dict[str, Any]]:
    rules = []
    for file in sorted((project / folder).glob("*.yml")):
        for group in _yaml(file)["groups"]:
            rules += [{**rule, "_file": file.name} for rule in group["rules"]]
    return rules


def _check_rule_promql(rule: dict[str, Any], where: str) -> set[str]:
    if rule["_file"] == "containers.yml":
        return _check_promql(rule["expr"], where, CADVISOR_METRICS, CADVISOR_LABELS)
    return _check_promql(rule["expr"], where)


def _github_anchors(markdown: str) -> set[str]:
    anchors = set()
    for heading in re.findall(r"^#{1,6} (.+)$", markdown, re.M):
        slug = re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")
        anchors.add(slug)
    return anchors


@pytest.mark.fast
@pytest.mark.parametrize("combo", PROMETHEUS_COMBOS)
def test_every_alert_is_documented_and_points_to_its_runbook(baked: Any, combo: str) -> None:
    project = baked(combo)
    rules = _rules(project)
    alerts = {rule["alert"]: rule for rule in rules if "alert" in rule}
    expected = {"ServiceDown", "ScrapeFailing", "HighErrorRatio", "HighLatencyP95"}
    expected |= {"HighMemoryUsage", "HighCpuUsage", "EventLoopLag"}
    if _on(_answers(combo), "use_cadvisor"):
        expected.add("ContainerMemoryNearLimit")
    assert set(alerts) == expected
    recorded = {rule["record"] for rule in rules if "record" in rule}
    assert recorded == RECORDED
    anchors = _github_anchors((project / "docs/monitoring.md").read_text(encoding="utf-8"))
    for name, rule in alerts.items():
        annotations = rule["annotations"]
        assert annotations.get("summary") and annotations.get("description"), name
        assert rule["labels"]["severity"] in SEVERITIES, name
        url = annotations["runbook_url"]
        path, _, anchor = url.partition("#")
        assert (project / path).is_file(), f"{name}: runbook {path} does not exist"
        assert anchor == name.lower() and anchor in anchors, f"{name}: no section #{anchor} in {path}"
        _check_rule_promql(rule, f"rule {name}")


@pytest.mark.fast
@pytest.mark.parametrize("combo", PROMETHEUS_COMBOS)
def test_memory_limit_knob_matches_the_app_container(baked: Any, combo: str) -> None:
    project = baked(combo)
    (limit,) = [rule for rule in _rules(project) if rule.get("record") == "app:memory_limit_bytes"]
    assert limit["expr"].strip() == f"vector({512 * 1024 * 1024})"
    assert limit["labels"] == {"service": DEFAULT_SLUG}
    compose = (project / "compose.yaml").read_text(encoding="utf-8")
    assert re.search(r"^    mem_limit: 512m$", compose, re.M)
    # The HighMemoryUsage expression really divides by the knob.
    (memory,) = [rule for rule in _rules(project) if rule.get("alert") == "HighMemoryUsage"]
    assert "app:memory_limit_bytes" in memory["expr"] and "process_resident_memory_bytes" in memory["expr"]


@pytest.mark.fast
@pytest.mark.parametrize("combo", PROMETHEUS_COMBOS)
def test_every_alert_has_firing_and_quiet_unit_tests(baked: Any, combo: str) -> None:
    project = baked(combo)
    alerts = {rule["alert"] for rule in _rules(project) if "alert" in rule}
    firing: set[str] = set()
    quiet: set[str] = set()
    for file in (project / "observability/prometheus/tests").glob("*.yml"):
        for test in _yaml(file)["tests"]:
            for case in test.get("alert_rule_test", []):
                (firing if case.get("exp_alerts") else quiet).add(case["alertname"])
    assert alerts <= firing, f"never tested firing: {alerts - firing}"
    assert alerts <= quiet, f"never tested quiet: {alerts - quiet}"


# --------------------------------------------------------------------------- grafana


def _datasources(project: Path) -> list[dict[str, Any]]:
    provisioning = project / "observability/grafana/provisioning/datasources"
    sources: list[dict[str, Any]] = []
    for file in provisioning.glob("*.y*ml"):
        sources += _yaml(file).get("datasources") or []
    return sources


def _walk(node: Any) -> Iterator[tuple[str, Any]]:
    if isinstance(node, dict):
        for key, value in node.items():
            yield key, value
            yield from _walk(value)
    elif isinstance(node, list):
        for item in node:
            yield from _walk(item)


@pytest.mark.fast
@pytest.mark.parametrize("combo", GRAFANA_COMBOS)
def test_grafana_datasources_match_the_stack(baked: Any, combo: str) -> None:
    project = baked(combo)
    answers = _answers(combo)
    sources = _datasources(project)
    uids = {source["uid"] for source in sources}
    expected = {name for name in ("prometheus", "alertmanager", "jaeger", "loki") if _on(answers, f"use_{name}")}
    assert uids == expected
    assert sum(bool(source.get("isDefault")) for source in sources) == 1
    for source in sources:
        assert source["type"] == source["uid"]
        assert source["url"].startswith(f"http://{source['uid']}:")

    # Every uid referenced by a correlation exists.
    referenced = [value for key, value in _walk(sources) if key in {"datasourceUid"}]
    assert all(uid in uids for uid in referenced), f"dangling data source uids: {set(referenced) - uids}"
    by_uid = {source["uid"]: source.get("jsonData", {}) for source in sources}
    if {"prometheus", "jaeger"} <= uids:
        assert by_uid["prometheus"]["exemplarTraceIdDestinations"] == [
            {"name": "trace_id", "datasourceUid": "jaeger", "urlDisplayLabel": "Open trace in Jaeger"}
        ]
    if {"loki", "jaeger"} <= uids:
        (field,) = by_uid["loki"]["derivedFields"]
        assert field["matcherType"] == "label" and field["matcherRegex"] == "trace_id"
        assert field["url"] == "$${__value.raw}"
        assert by_uid["jaeger"]["tracesToLogsV2"]["datasourceUid"] == "loki"
    if "jaeger" in uids:
        assert by_uid["jaeger"]["nodeGraph"]["enabled"] is True
        assert ("tracesToLogsV2" in by_uid["jaeger"]) == ("loki" in uids)
        assert ("tracesToMetrics" in by_uid["jaeger"]) == ("prometheus" in uids)
        for query in by_uid["jaeger"].get("tracesToMetrics", {}).get("queries", []):
            _check_promql(query["query"].replace("$$__tags", 'service="x"'), "tracesToMetrics")
        # Span attributes map to the request metric's labels: the stable HTTP names, dotted
        # as the spans carry them (the httpx client span too: OTEL_SEMCONV_STABILITY_OPT_IN=http).
        for tag in by_uid["jaeger"].get("tracesToMetrics", {}).get("tags", []):
            if tag["key"] != "service.name":
                assert tag["key"] in {"http.route", "http.request.method", "http.response.status_code"}, tag
                assert tag["value"] == tag["key"].replace(".", "_"), tag


def _dashboards(project: Path) -> dict[str, dict[str, Any]]:
    folder = project / "observability/grafana/dashboards"
    return {file.name: json.loads(file.read_text(encoding="utf-8")) for file in folder.glob("*.json")}


@pytest.mark.fast
@pytest.mark.parametrize("combo", GRAFANA_COMBOS)
def test_grafana_dashboards_follow_their_data_sources(baked: Any, combo: str) -> None:
    project = baked(combo)
    answers = _answers(combo)
    dashboards = _dashboards(project)
    expected = set()
    if _on(answers, "use_prometheus"):
        expected.add("service-overview.json")
    if _on(answers, "use_loki"):
        expected.add("service-logs.json")
    if _on(answers, "use_cadvisor"):
        expected.add("container-resources.json")
    assert set(dashboards) == expected
    provider = _yaml(project / "observability/grafana/provisioning/dashboards/dashboards.yaml")
    assert provider["providers"][0]["options"]["path"] == "/etc/grafana/dashboards"
    types = {source["uid"]: source["type"] for source in _datasources(project)}
    seen_uids = set()
    for name, dashboard in dashboards.items():
        assert dashboard["uid"] and dashboard["uid"] not in seen_uids
        seen_uids.add(dashboard["uid"])
        # Panels name their data source through a variable, never by uid, so that the
        # dashboard imports into a Grafana whose data sources have other uids; here the
        # variable starts on the provisioned one.
        (variable,) = [v for v in dashboard["templating"]["list"] if v["type"] == "datasource"]
        assert variable["name"] == "datasource", name
        assert types.get(variable["current"]["value"]) == variable["query"], f"{name}: {variable}"
        references = [value for key, value in _walk(dashboard) if key == "datasource" and isinstance(value, dict)]
        assert references, name
        for reference in references:
            assert reference == {"type": variable["query"], "uid": "${datasource}"}, f"{name}: {reference}"
        for link in dashboard.get("links", []):
            assert link["type"] == "dashboards" and link["tags"], f"{name}: links must go through tags"
    if "service-overview.json" in dashboards:
        # Its job variable starts on the job that scrapes the app in the stack's Prometheus.
        scrapes = _yaml(project / "observability/prometheus/prometheus.yml")["scrape_configs"]
        (app_job,) = [job["job_name"] for job in scrapes if job.get("dns_sd_configs", [{}])[0].get("names") == ["app"]]
        (job,) = [v for v in dashboards["service-overview.json"]["templating"]["list"] if v["name"] == "job"]
        assert job["current"]["value"] == app_job


@pytest.mark.fast
@pytest.mark.parametrize("combo", ["everything", "no-tracing"])
def test_dashboards_keep_grafana_syntax_and_use_only_exported_metrics(baked: Any, combo: str) -> None:
    project = baked(combo)
    tracing = _on(_answers(combo), "use_tracing")
    dashboards = _dashboards(project)
    overview = dashboards["service-overview.json"]
    exprs = [value for key, value in _walk(overview) if key == "expr"]
    assert len(exprs) >= 15
    metrics = set()
    for expr in exprs:
        metrics |= _check_promql(expr, "service-overview.json")
    # The panels the issue asks for are all there.
    for needed in (
        "http_server_request_duration_seconds_count",
        "http_server_request_duration_seconds_bucket",
        "http_server_active_requests",
        "ALERTS",
        "process_cpu_seconds_total",
        "process_resident_memory_bytes",
        "process_open_fds",
        "python_gc_collections_total",
        "python_gc_objects_collected_total",
        "app_event_loop_lag_seconds",
    ):
        assert needed in metrics
    # Resource panels are per instance.
    for panel in overview["panels"]:
        if panel["title"] in {"CPU", "Resident memory", "Open file descriptors", "GC collections", "Event-loop lag"}:
            expr = panel["targets"][0]["expr"]
            assert 'instance=~"$instance"' in expr and "{{instance}}" in panel["targets"][0]["legendFormat"], panel
    exemplars = {value for key, value in _walk(overview) if key == "exemplar"}
    assert exemplars == {tracing}, "latency panels ask for exemplars exactly when spans give them"
    # Grafana's own {{...}} survived the rendering.
    assert "{{http_route}}" in json.dumps(overview)

    logs = dashboards["service-logs.json"]
    for expr in (value for key, value in _walk(logs) if key == "expr"):
        _check_logql(expr)
    assert "{{level}}" in json.dumps(logs)
    # One box finds a request by either id: a bake without tracing has request_id only.
    variables = {v["name"] for v in logs["templating"]["list"]}
    assert variables == {"datasource", "service_name", "search", "request"}
    (search,) = [p["targets"][0]["expr"] for p in logs["panels"] if p["title"] == "Logs"]
    if tracing:
        assert 'trace_id=~"${request}.*" or request_id=~"${request}.*"' in search
    else:
        assert search.endswith('| request_id=~"${request}.*"') and "trace_id" not in json.dumps(logs)


@pytest.mark.fast
@pytest.mark.parametrize("combo", ["no-grafana", "prometheus-cadvisor", "everything"])
def test_runbook_without_grafana_gives_queries_of_exported_metrics(baked: Any, combo: str) -> None:
    project = baked(combo)
    queries = runbook_queries(project)
    if _on(_answers(combo), "use_grafana"):
        assert not queries, "with Grafana the runbook names dashboard panels"
        return
    assert len(queries) >= 8, queries
    for query in queries:
        _check_promql(query, "docs/monitoring.md", CADVISOR_METRICS, CADVISOR_LABELS)
    assert any('job="cadvisor"' in query for query in queries) == _on(_answers(combo), "use_cadvisor")


@pytest.mark.fast
def test_container_dashboard_uses_only_cadvisor_metrics(baked: Any) -> None:
    project = baked("cadvisor")
    dashboard = _dashboards(project)["container-resources.json"]
    exprs = [value for key, value in _walk(dashboard) if key == "expr"]
    assert len(exprs) >= 5
    metrics = set()
    for expr in exprs:
        metrics |= _check_promql(expr, "container-resources.json", CADVISOR_METRICS, CADVISOR_LABELS)
    assert metrics == CADVISOR_METRICS
    for expr in exprs:
        assert 'job="cadvisor"' in expr and 'compose_project="$project"' in expr, expr
    assert "service-stack" in dashboard["tags"]
    # Off by default: neither the dashboard nor anything else of cAdvisor.
    assert "container-resources.json" not in _dashboards(baked("everything"))


# --------------------------------------------------------------------------- loki, alloy, jaeger


@pytest.mark.fast
@pytest.mark.parametrize("combo", ["everything", "no-tracing"])
def test_log_pipeline_keeps_trace_ids_out_of_labels(baked: Any, combo: str) -> None:
    project = baked(combo)
    loki = _yaml(project / "observability/loki/config.yaml")
    schema = loki["schema_config"]["configs"][-1]
    assert (schema["schema"], schema["store"], schema["object_store"]) == ("v13", "tsdb", "filesystem")
    assert loki["auth_enabled"] is False
    assert loki["limits_config"]["allow_structured_metadata"] is True

    alloy = (project / "observability/alloy/config.alloy").read_text(encoding="utf-8")
    assert alloy.count("{") == alloy.count("}")
    labels = re.search(r"stage\.labels \{\s*values = \{(.*?)\}", alloy, re.S)
    metadata = re.search(r"stage\.structured_metadata \{\s*values = \{(.*?)\}", alloy, re.S)
    assert labels and metadata
    assert re.findall(r"(\w+)\s*=", labels.group(1)) == ["level"]
    ids = {"trace_id", "span_id", "request_id"} if _on(_answers(combo), "use_tracing") else {"request_id"}
    assert set(re.findall(r"(\w+)\s*=", metadata.group(1))) == ids
    assert 'target_label  = "service_name"' in alloy and "com_docker_compose_service" in alloy
    # Docker picks the containers (its label filters must all match): loki.source.docker reads
    # every target it gets, and a keep or drop among its relabel rules only strips labels.
    docker = re.search(r'^discovery\.docker "project" \{.*?^\}', alloy, re.S | re.M)
    assert docker, alloy
    selected = r'values = \[\s*"com\.docker\.compose\.project=" \+ sys\.env\("COMPOSE_PROJECT"\),\s*"logging=alloy",'
    assert re.search(selected, docker[0]), docker[0]
    assert not re.search(r'action\s*=\s*"(keep|drop)', alloy), "a keep or drop rule would select nothing"
    # Every component a reference points to is defined.
    defined = {f"{kind}.{label}" for kind, label in re.findall(r"^([a-z_.]+) \"(\w+)\" \{", alloy, re.M)}
    for ref in re.findall(r"\b((?:discovery|loki)\.[a-z_.]+?\.\w+)\.(?:targets|rules|receiver)\b", alloy):
        assert ref in defined, f"config.alloy refers to undefined {ref}"
    assert "COMPOSE_PROJECT" in alloy
    compose = compose_config(project)
    assert compose["services"]["alloy"]["environment"]["COMPOSE_PROJECT"] == DEFAULT_SLUG


@pytest.mark.fast
def test_jaeger_listens_on_all_interfaces_with_bounded_memory(baked: Any) -> None:
    project = baked("everything")
    config = _yaml(project / "observability/jaeger/config.yaml")
    protocols = config["receivers"]["otlp"]["protocols"]
    assert protocols["grpc"]["endpoint"] == "0.0.0.0:4317"
    assert protocols["http"]["endpoint"] == "0.0.0.0:4318"
    backends = config["extensions"]["jaeger_storage"]["backends"]
    (backend,) = backends.values()
    assert 0 < backend["memory"]["max_traces"] <= 100_000
    assert config["extensions"]["healthcheckv2"]["http"]["endpoint"].endswith(":13133")
    reader = config["service"]["telemetry"]["metrics"]["readers"][0]["pull"]["exporter"]["prometheus"]
    assert reader["port"] == 8888
    pipeline = config["service"]["pipelines"]["traces"]
    for kind in ("receivers", "processors", "exporters"):
        for component in pipeline[kind]:
            assert component in config[kind], f"pipeline uses undefined {kind[:-1]} {component}"
    for extension in config["service"]["extensions"]:
        assert extension in config["extensions"]


@pytest.mark.fast
@pytest.mark.parametrize("combo", ALERTMANAGER_COMBOS)
def test_alertmanager_routes_by_alert_and_service(baked: Any, combo: str) -> None:
    project = baked(combo)
    config = _yaml(project / "observability/alertmanager/alertmanager.yml")
    assert config["route"]["group_by"] == ["alertname", "service"]
    receivers = {receiver["name"]: receiver for receiver in config["receivers"]}
    default = receivers[config["route"]["receiver"]]
    (webhook,) = default["webhook_configs"]
    target = webhook["url_file"]
    compose = compose_config(project)
    mounted = {c["target"]: c["source"] for c in compose["services"]["alertmanager"]["configs"]}
    assert target in mounted
    assert compose["configs"][mounted[target]]["content"] == "http://host.docker.internal:9095/alerts"
    text = (project / "observability/alertmanager/alertmanager.yml").read_text(encoding="utf-8")
    for example in ("slack_configs", "email_configs", "pagerduty_configs"):
        assert f"#   {example}:" in text, f"no commented {example} example"


# --------------------------------------------------------------------------- promtool, amtool


def _docker_tool(image: str, tool: str, folder: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """Run promtool/amtool of the pinned image (user nobody) on a read-only copy of `folder`."""
    provide_images(image)
    folder.chmod(0o755)  # pytest's tmp folders are private; the tools run as nobody
    for path in folder.rglob("*"):
        path.chmod(0o755 if path.is_dir() else 0o644)
    return subprocess.run(
        [
            "docker",
            "run",
            "--rm",
            "--network",
            "none",
            "--entrypoint",
            tool,
            "-v",
            f"{folder}:/work:ro",
            "-w",
            "/work",
            image,
            *args,
        ],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )


@pytest.mark.docker
@pytest.mark.xdist_group("docker")
@pytest.mark.parametrize("combo", PROMETHEUS_COMBOS)
def test_promtool_accepts_config_and_rules(baked: Any, combo: str) -> None:
    folder = baked(combo) / "observability/prometheus"
    for args in (
        ("check", "config", "prometheus.yml"),
        ("check", "rules", *[f"rules/{p.name}" for p in sorted((folder / "rules").glob("*.yml"))]),
        ("test", "rules", *[f"tests/{p.name}" for p in sorted((folder / "tests").glob("*.yml"))]),
    ):
        result = _docker_tool(PROMETHEUS_IMAGE, "/bin/promtool", folder, *args)
        assert result.returncode == 0, f"promtool {' '.join(args)}:\n{result.stdout}\n{result.stderr}"
        assert "SUCCESS" in result.stdout


@pytest.mark.docker
@pytest.mark.xdist_group("docker")
def test_promtool_unit_tests_catch_a_broken_rule(baked: Any, tmp_path: Path) -> None:
    """The unit tests are real: loosen each threshold and they fail."""
    folder = tmp_path / "prometheus"
    shutil.copytree(baked("everything") / "observability/prometheus", folder)
    rules = folder / "rules/service.yml"
    original = rules.read_text(encoding="utf-8")
    for old, new in (("> 0.05", "> 0.5"), (") > 1\n", ") > 10\n"), ("for: 1m", "for: 10m"), ("up == 0", "up == 2")):
        assert old in original, old
        rules.write_text(original.replace(old, new), encoding="utf-8")
        result = _docker_tool(PROMETHEUS_IMAGE, "/bin/promtool", folder, "test", "rules", "tests/service_test.yml")
        assert result.returncode != 0, f"the unit tests still pass with {new!r} instead of {old!r}"


@pytest.mark.docker
@pytest.mark.xdist_group("docker")
@pytest.mark.parametrize("combo", ALERTMANAGER_COMBOS)
def test_amtool_accepts_the_config_and_its_commented_examples(baked: Any, combo: str, tmp_path: Path) -> None:
    folder = baked(combo) / "observability/alertmanager"
    result = _docker_tool(ALERTMANAGER_IMAGE, "/bin/amtool", folder, "check-config", "alertmanager.yml")
    assert result.returncode == 0, f"{result.stdout}\n{result.stderr}"
    assert "SUCCESS" in result.stdout

    # The commented Slack / email / PagerDuty examples are valid once uncommented.
    lines = []
    for line in (folder / "alertmanager.yml").read_text(encoding="utf-8").splitlines():
        match = re.match(r"^(\s*)# ( *)(- name:|  \w+_configs:|    .*|routes:|  - matchers:|    receiver:)(.*)$", line)
        lines.append(match.group(1) + match.group(2) + match.group(3) + match.group(4) if match else line)
    (tmp_path / "alertmanager.yml").write_text("\n".join(lines) + "\n", encoding="utf-8")
    full = _yaml(tmp_path / "alertmanager.yml")
    assert {r["name"] for r in full["receivers"]} == {"local-webhook", "slack", "email", "pagerduty"}
    result = _docker_tool(ALERTMANAGER_IMAGE, "/bin/amtool", tmp_path, "check-config", "alertmanager.yml")
    assert result.returncode == 0, f"{result.stdout}\n{result.stderr}"


@pytest.mark.docker
@pytest.mark.xdist_group("docker")
def test_make_check_stack_runs_the_pinned_tools_and_fails_on_a_broken_rule(bake_once: Any, tmp_path: Path) -> None:
    """The project's own check (its CI's `stack` job): promtool and amtool of the images compose
    pins, as the user running make, with no network; it leaves no container, volume or network."""
    make = require_executable("make")
    provide_images(PROMETHEUS_IMAGE, ALERTMANAGER_IMAGE)
    project = tmp_path / "project"
    shutil.copytree(bake_once(), project)
    project.chmod(0o700)  # a private checkout: the tools run as the caller, not as nobody

    def check_stack() -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [make, "--no-print-directory", "check-stack"],
            cwd=project,
            capture_output=True,
            text=True,
            timeout=300,
            check=False,
        )

    def leftovers() -> set[str]:
        """Containers, volumes and networks of the baked project's compose project."""
        names: set[str] = set()
        for kind, field in (("container", "Names"), ("volume", "Name"), ("network", "Name")):
            listed = subprocess.run(
                ["docker", kind, "ls", *(["--all"] if kind == "container" else []), "--format", f"{{{{.{field}}}}}"],
                capture_output=True,
                text=True,
                timeout=60,
                check=True,
            )
            names |= {name for name in listed.stdout.split() if name.startswith(DEFAULT_SLUG)}
        return names

    before = leftovers()
    result = check_stack()
    assert result.returncode == 0, f"{result.stdout}\n{result.stderr}"
    assert "is valid prometheus config file syntax" in result.stdout
    assert result.stdout.count("SUCCESS") >= 4  # config, rule files, unit tests, alertmanager.yml
    assert "Checking 'alertmanager.yml'  SUCCESS" in result.stdout
    assert leftovers() == before

    rules = project / "observability/prometheus/rules/service.yml"
    rules.write_text(rules.read_text().replace("> 0.05", "> 0.5"))
    result = check_stack()
    assert result.returncode != 0, "a loosened threshold passed the rules' unit tests"
    assert "FAILED" in result.stdout + result.stderr


# --------------------------------------------------------------------------- query checks


def _check_promql(
    expr: str,
    where: str,
    extra_metrics: frozenset[str] | set[str] = frozenset(),
    extra_labels: frozenset[str] | set[str] = frozenset(),
) -> set[str]:
    """Return the metric names of a PromQL expression; fail on unknown metrics or labels.

    `extra_metrics` / `extra_labels`: what an optional exporter (cAdvisor) adds, for its own rules and panels."""
    text = re.sub(r"\$\{?__\w+\}?", "5m", expr)  # Grafana's $__rate_interval and friends
    text = re.sub(r"\$\{?\w+\}?", "x", text)  # dashboard variables
    labels: set[str] = set()
    # Label matchers inside {...}
    for body in re.findall(r"\{([^{}]*)\}", text):
        labels |= set(re.findall(r"([a-zA-Z_]\w*)\s*(?:=~|!~|!=|=)", body))
    # Label lists of by (...), without (...), on (...), ignoring (...)
    for body in re.findall(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\(([^()]*)\)", text):
        labels |= {label.strip() for label in body.split(",") if label.strip()}
    stripped = re.sub(r'"(?:[^"\\]|\\.)*"', '""', text)
    stripped = re.sub(r"\{[^{}]*\}", "", stripped)
    stripped = re.sub(r"\[[^\]]*\]", "", stripped)
    stripped = re.sub(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^()]*\)", "", stripped)
    metrics = set()
    for match in re.finditer(r"[a-zA-Z_:][\w:]*", stripped):
        name = match.group(0)
        following = stripped[match.end() :].lstrip()
        if following.startswith("(") or name.lower() in PROMQL_KEYWORDS:
            continue  # a function or an operator
        if re.fullmatch(r"\d.*|e\d+", name):
            continue
        metrics.add(name)
    unknown = metrics - APP_METRICS - PROMETHEUS_SYNTHETIC - RECORDED - set(extra_metrics)
    assert not unknown, f"{where}: metrics the service does not export: {unknown} in {expr!r}"
    bad_labels = labels - ALLOWED_LABELS - set(extra_labels)
    assert not bad_labels, f"{where}: labels the service does not have: {bad_labels} in {expr!r}"
    return metrics


def _check_logql(expr: str) -> None:
    text = re.sub(r"\$\{?\w+\}?", "x", expr)
    selector = re.match(r"\s*(?:\w+\s*(?:by\s*\([^)]*\)\s*)?\(\s*)*(?:count_over_time\()?\s*\{([^}]*)\}", text)
    assert selector, f"no stream selector in {expr!r}"
    names = set(re.findall(r"(\w+)\s*(?:=~|!~|!=|=)", selector.group(1)))
    assert names <= LOKI_LABELS, f"selector uses labels Alloy does not set: {names - LOKI_LABELS} in {expr!r}"
    rest = text[selector.end() :]
    rest = re.sub(r'"(?:[^"\\]|\\.)*"', '""', rest)
    filters = set(re.findall(r"\b(\w+)\s*(?:=~|!~|!=|>=|<=|==|=|>|<)", rest))
    assert filters <= LOKI_FIELDS, f"filters on fields the logs do not have: {filters - LOKI_FIELDS} in {expr!r}"
    by = re.findall(r"\bby\s*\(([^)]*)\)", text)
    assert {b.strip() for group in by for b in group.split(",")} <= LOKI_LABELS


# --------------------------------------------------------------------------- log-based alerts (Loki ruler)

LOGQL_FUNCTIONS = {"sum", "count_over_time", "rate", "bytes_over_time", "max", "min", "avg"}


def _check_logql_rule(expr: str, where: str) -> set[str]:
    """Check a LogQL alert expression; return the names it extracts with `| json`."""
    text = " ".join(expr.split())
    assert text.count("(") == text.count(")"), f"{where}: unbalanced parentheses in {expr!r}"
    no_strings = re.sub(r'"(?:[^"\\]|\\.)*"', '""', text)
    selectors = re.findall(r"\{([^{}]*)\}", text)
    assert selectors, f"{where}: no stream selector in {expr!r}"
    for body in selectors:
        matchers = re.findall(r'(\w+)\s*(=~|!~|!=|=)\s*"((?:[^"\\]|\\.)*)"', body)
        assert matchers and len(matchers) == body.count(",") + 1, f"{where}: unreadable selector {body!r}"
        names = {name for name, _, _ in matchers}
        assert names <= LOKI_LABELS, f"{where}: selector uses labels Alloy does not set: {names - LOKI_LABELS}"
        for name, op, value in matchers:
            if name == "service_name":
                assert (op, value) == ("=", "app"), f"{where}: the compose service is app"
            if name == "level":
                assert set(value.split("|")) <= LOG_LEVELS, f"{where}: levels the service never writes: {value}"
    ranges = re.findall(r"\[([^\]]*)\]", text)
    assert ranges and all(re.fullmatch(r"\d+[smh]", r) for r in ranges), f"{where}: range {ranges}"
    extracted = {}
    for params in re.findall(r"\|\s*json\b((?:\s*\w+\s*=\s*\"[^\"]*\"\s*,?)*)", text):
        for label, path in re.findall(r'(\w+)\s*=\s*"([^"]*)"', params):
            assert path in LOG_KEYS, f"{where}: the log lines have no field {path!r}"
            extracted[label] = path
    after_selector = no_strings.split("}", 1)[1]
    filters = set(re.findall(r"\|\s*(\w+)\s*(?:=~|!~|!=|>=|<=|==|=|>|<)", after_selector))
    assert filters <= LOKI_LABELS | set(extracted), f"{where}: filters on unknown fields {filters}"
    functions = set(re.findall(r"(\w+)\s*(?:by\s*\([^)]*\)\s*)?\(", no_strings))
    assert functions <= LOGQL_FUNCTIONS, f"{where}: unknown functions {functions - LOGQL_FUNCTIONS}"
    by = {b.strip() for group in re.findall(r"\bby\s*\(([^)]*)\)", text) for b in group.split(",")}
    assert by <= LOKI_LABELS | set(extracted), f"{where}: groups by unknown labels {by}"
    assert re.search(r"\)\s*(?:>|>=)\s*\d+$", text), f"{where}: no threshold at the end of {expr!r}"
    return set(extracted)


def _loki_rules(project: Path) -> list[dict[str, Any]]:
    return _rules(project, "observability/loki/rules")


@pytest.mark.fast
def test_logql_checker_catches_bad_expressions() -> None:
    """The checker below is real: each broken expression fails it."""
    good = 'sum by (service_name) (count_over_time({service_name="app", level=~"ERROR|CRITICAL"}[1m])) > 10'
    _check_logql_rule(good, "good")
    for bad in (
        good.replace("service_name=", "compose_service="),  # a label Alloy does not set
        good.replace("ERROR|CRITICAL", "ERROR|FATAL"),  # a level the service never writes
        good.replace("[1m]", "[1 minute]"),
        good.replace(") > 10", ")"),
        good.replace("sum by", "summ by"),
        good.replace('"app"', f'"{DEFAULT_SLUG}"'),
        'sum (count_over_time({service_name="app"} | json t="trace" | t != "" [5m])) > 1',  # no such field
        'sum by (exception_type) (count_over_time({service_name="app"}[5m])) > 1',  # not extracted
    ):
        with pytest.raises(AssertionError):
            _check_logql_rule(bad, "bad")


@pytest.mark.fast
@pytest.mark.parametrize("combo", LOKI_COMBOS)
def test_loki_ruler_loads_the_log_rules(baked: Any, combo: str) -> None:
    project = baked(combo)
    answers = _answers(combo)
    loki = _yaml(project / "observability/loki/config.yaml")
    ruler = loki["ruler"]
    assert ruler["storage"] == {"type": "local", "local": {"directory": "/etc/loki/rules"}}
    assert ruler["rule_path"].startswith("/loki/"), "scratch space must be in the writable volume"
    assert ruler["enable_api"] is True
    assert "rules_directory" not in loki["common"]["storage"]["filesystem"], "two rule stores"
    if _on(answers, "use_alertmanager"):
        assert ruler["alertmanager_url"] == "http://alertmanager:9093"
    else:
        assert "alertmanager_url" not in ruler

    # Without auth Loki's tenant is "fake": rules are read from <directory>/fake/.
    assert loki["auth_enabled"] is False
    compose = compose_config(project)
    mounts = {v["target"]: Path(v["source"]) for v in compose["services"]["loki"]["volumes"] if v["type"] == "bind"}
    assert mounts["/etc/loki/rules/fake"] == project / "observability/loki/rules"
    if _on(answers, "use_alertmanager"):
        assert "alertmanager" in compose["services"]
        ports = {p["target"] for p in compose["services"]["alertmanager"].get("ports", [])}
        assert 9093 in ports


@pytest.mark.fast
@pytest.mark.parametrize("combo", LOKI_COMBOS)
def test_log_alerts_parse_use_shipper_labels_and_have_runbooks(baked: Any, combo: str) -> None:
    project = baked(combo)
    files = sorted((project / "observability/loki/rules").iterdir())
    assert [f.name for f in files] == ["logs.yml"]
    rules = _loki_rules(project)
    alerts = {rule["alert"]: rule for rule in rules}
    assert set(alerts) == {"HighErrorLogRate", "UnhandledExceptionBurst"}
    anchors = _github_anchors((project / "docs/monitoring.md").read_text(encoding="utf-8"))
    am = (
        _yaml(project / "observability/alertmanager/alertmanager.yml")
        if _on(_answers(combo), "use_alertmanager")
        else None
    )
    for name, rule in alerts.items():
        assert set(rule) <= {"alert", "expr", "for", "labels", "annotations", "_file"}, name
        assert re.fullmatch(r"\d+[smh]", rule.get("for", "0s")), name
        extracted = _check_logql_rule(rule["expr"], name)
        labels, annotations = rule["labels"], rule["annotations"]
        assert labels["severity"] in SEVERITIES and labels["service"] == DEFAULT_SLUG, name
        assert annotations.get("summary") and annotations.get("description"), name
        path, _, anchor = annotations["runbook_url"].partition("#")
        assert (project / path).is_file() and anchor == name.lower() and anchor in anchors, name
        # Template variables name labels the alert really has.
        result_labels = {b.strip() for g in re.findall(r"\bby\s*\(([^)]*)\)", rule["expr"]) for b in g.split(",")}
        for used in re.findall(r"\$labels\.(\w+)", json.dumps(annotations)):
            assert used in result_labels | set(labels), f"{name}: annotation uses $labels.{used}"
        if am is not None:
            # Alertmanager groups by these labels: the alert carries all of them.
            assert set(am["route"]["group_by"]) <= {"alertname"} | set(labels) | result_labels, name
        if name == "UnhandledExceptionBurst":
            assert extracted == {"exception_type"} and '|= "exception_type"' in rule["expr"]
        if name == "HighErrorLogRate":
            assert 'level=~"ERROR|CRITICAL"' in rule["expr"]


# --------------------------------------------------------------------------- Grafana-managed alerting


def _grafana_alerting(project: Path) -> dict[str, Any]:
    folder = project / "observability/grafana/provisioning/alerting"
    merged: dict[str, Any] = {}
    for file in sorted(folder.glob("*.yaml")):
        document = _yaml(file)
        assert document["apiVersion"] == 1, file.name
        for key, value in document.items():
            if key != "apiVersion":
                merged.setdefault(key, []).extend(value)
    return merged


@pytest.mark.fast
@pytest.mark.parametrize("combo", GRAFANA_COMBOS)
def test_grafana_alerting_is_provisioned_and_wired_to_the_webhook(baked: Any, combo: str) -> None:
    project = baked(combo)
    answers = _answers(combo)
    alerting = _grafana_alerting(project)
    expected_keys = {"contactPoints", "policies"} | ({"groups"} if _on(answers, "use_prometheus") else set())
    assert set(alerting) == expected_keys

    (contact,) = alerting["contactPoints"]
    (receiver,) = contact["receivers"]
    assert receiver["type"] == "webhook"
    assert receiver["settings"]["url"] == "$ALERT_WEBHOOK_URL"
    (policy,) = alerting["policies"]
    assert policy["receiver"] == contact["name"]
    assert {"alertname", "service"} <= set(policy["group_by"])

    # Grafana's ALERT_WEBHOOK_URL is the webhook Alertmanager posts to (or its default).
    compose = compose_config(project)
    grafana = compose["services"]["grafana"]
    url = grafana["environment"]["ALERT_WEBHOOK_URL"]
    assert url == "http://host.docker.internal:9095/alerts"
    assert "host.docker.internal=host-gateway" in grafana["extra_hosts"] or grafana["extra_hosts"] == {
        "host.docker.internal": ["host-gateway"]
    }
    text = (project / "compose.yaml").read_text(encoding="utf-8")
    if _on(answers, "use_alertmanager"):
        assert "ALERT_WEBHOOK_URL: ${ALERTMANAGER_WEBHOOK_URL:-" in text
        am = compose["services"]["alertmanager"]["configs"][0]["source"]
        assert compose["configs"][am]["content"] == url
    else:
        assert "ALERT_WEBHOOK_URL: ${ALERT_WEBHOOK_URL:-" in text


@pytest.mark.fast
@pytest.mark.parametrize("combo", ["everything", "grafana-prometheus", "cadvisor"])
def test_grafana_alert_rule_queries_provisioned_sources(baked: Any, combo: str) -> None:
    project = baked(combo)
    uids = {source["uid"] for source in _datasources(project)}
    provider = _yaml(project / "observability/grafana/provisioning/dashboards/dashboards.yaml")["providers"][0]
    anchors = _github_anchors((project / "docs/monitoring.md").read_text(encoding="utf-8"))
    (group,) = _grafana_alerting(project)["groups"]
    assert group["folder"] == provider["folder"]
    assert re.fullmatch(r"\d+[sm]", group["interval"])
    (rule,) = group["rules"]
    assert re.fullmatch(r"[A-Za-z0-9_-]{1,40}", rule["uid"])
    assert rule["title"] == "FileDescriptorsNearLimit"
    refs = [query["refId"] for query in rule["data"]]
    assert len(refs) == len(set(refs)) and rule["condition"] in refs
    for query in rule["data"]:
        source = query["datasourceUid"]
        assert source == "__expr__" or source in uids, f"data source {source} is not provisioned"
        model = query["model"]
        assert model["refId"] == query["refId"]
        if source == "__expr__":
            assert model["type"] in {"reduce", "threshold", "math", "classic_conditions", "resample"}
            assert model["expression"] in refs and model["expression"] != query["refId"]
        else:
            assert source == "prometheus"
            metrics = _check_promql(model["expr"], "grafana rule")
            assert metrics == {"process_open_fds", "process_max_fds"}
    assert rule["noDataState"] in {"OK", "NoData", "Alerting", "KeepLast"}
    assert rule["execErrState"] in {"OK", "Error", "Alerting", "KeepLast"}
    assert rule["labels"]["severity"] in SEVERITIES and rule["labels"]["service"] == DEFAULT_SLUG
    # Labels are expanded as environment variables by the provisioning; annotations are not.
    assert "$" not in json.dumps(rule["labels"])
    anchor = rule["annotations"]["runbook_url"].partition("#")[2]
    assert anchor == rule["title"].lower() and anchor in anchors


# --------------------------------------------------------------------------- more promtool / amtool


@pytest.mark.docker
@pytest.mark.xdist_group("docker")
@pytest.mark.parametrize(
    ("rules_file", "test_file", "mutations"),
    [
        (
            "resources.yml",
            "resources_test.yml",
            [("> 0.9\n        for: 5m", "> 0.99\n        for: 5m"), ("[5m]) > 0.9", "[5m]) > 2"), ("> 0.1", "> 1")],
        ),
        ("resources.yml", "resources_test.yml", [("vector(536870912)", "vector(1073741824)"), ("for: 15m", "for: 1m")]),
        ("containers.yml", "containers_test.yml", [(") > 0.9", ") > 0.95"), ("> 0)", ">= 0)")]),
    ],
    ids=["resources-thresholds", "resources-limit-and-for", "containers"],
)
def test_promtool_unit_tests_catch_broken_resource_rules(
    baked: Any, tmp_path: Path, rules_file: str, test_file: str, mutations: list[tuple[str, str]]
) -> None:
    folder = tmp_path / "prometheus"
    shutil.copytree(baked("cadvisor") / "observability/prometheus", folder)
    rules = folder / "rules" / rules_file
    original = rules.read_text(encoding="utf-8")
    result = _docker_tool(PROMETHEUS_IMAGE, "/bin/promtool", folder, "test", "rules", f"tests/{test_file}")
    assert result.returncode == 0, result.stdout + result.stderr
    for old, new in mutations:
        assert original.count(old) == 1, old
        rules.write_text(original.replace(old, new), encoding="utf-8")
        result = _docker_tool(PROMETHEUS_IMAGE, "/bin/promtool", folder, "test", "rules", f"tests/{test_file}")
        assert result.returncode != 0, f"the unit tests still pass with {new!r} instead of {old!r}"


def _uncomment_examples(text: str) -> str:
    lines = []
    for line in text.splitlines():
        match = re.match(r"^(\s*)# ( *)(- name:|  \w+_configs:|    .*|routes:|  - matchers:|    receiver:)(.*)$", line)
        lines.append(match.group(1) + match.group(2) + match.group(3) + match.group(4) if match else line)
    return "\n".join(lines) + "\n"


def _routes_test(folder: Path, receiver: str, labels: dict[str, str]) -> subprocess.CompletedProcess[str]:
    pairs = [f"{key}={value}" for key, value in sorted(labels.items())]
    return _docker_tool(
        ALERTMANAGER_IMAGE,
        "/bin/amtool",
        folder,
        "config",
        "routes",
        "test",
        "--config.file=alertmanager.yml",
        f"--verify.receivers={receiver}",
        *pairs,
    )


@pytest.mark.docker
@pytest.mark.xdist_group("docker")
def test_alertmanager_routes_every_alert(baked: Any, tmp_path: Path) -> None:
    """amtool `config routes test`: the Loki and Prometheus alerts reach the local webhook, and the
    commented routing example sends them by severity."""
    project = baked("cadvisor")
    alerts = []
    for rule in _rules(project) + _loki_rules(project):
        if "alert" in rule:
            labels = {"alertname": rule["alert"], **rule["labels"]}
            labels.setdefault("service", DEFAULT_SLUG)  # from the scrape job, for rules that keep it
            alerts.append(labels)
    assert {"HighErrorLogRate", "UnhandledExceptionBurst", "HighMemoryUsage", "ContainerMemoryNearLimit"} <= {
        a["alertname"] for a in alerts
    }
    folder = project / "observability/alertmanager"
    for labels in alerts:
        result = _routes_test(folder, "local-webhook", labels)
        assert result.returncode == 0 and result.stdout.strip() == "local-webhook", f"{labels}: {result.stdout}"
    # The check can fail: a wrong receiver is reported.
    result = _routes_test(folder, "slack", alerts[0])
    assert result.returncode != 0

    example = tmp_path / "alertmanager"
    example.mkdir()
    (example / "alertmanager.yml").write_text(
        _uncomment_examples((folder / "alertmanager.yml").read_text(encoding="utf-8")), encoding="utf-8"
    )
    for labels in alerts:
        expected = {"critical": "pagerduty", "warning": "slack"}[labels["severity"]]
        result = _routes_test(example, expected, labels)
        assert result.returncode == 0, f"{labels} -> {result.stdout}{result.stderr}"


@pytest.mark.fast
def test_make_builds_and_starts_with_the_commit(bake_once: Any, tmp_path: Path) -> None:
    """`make image` and `make up` hand compose the checked-out commit, for the image's label and
    app_build_info; a stand-in `docker` on PATH reports what it was given."""
    make = require_executable("make")
    git = require_executable("git")
    project = tmp_path / "project"
    shutil.copytree(bake_once(), project)
    for command in (["init", "-q"], ["add", "-A"], ["-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "x"]):
        run([git, *command], project)
    commit = run([git, "rev-parse", "HEAD"], project)
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "docker").write_text('#!/bin/sh\necho "docker $* GIT_COMMIT=$GIT_COMMIT"\n')
    (bin_dir / "docker").chmod(0o755)
    env = {"PATH": f"{bin_dir}:/usr/bin:/bin", "HOME": str(tmp_path)}
    for target in ("image", "up"):
        # -o: the lock and .env count as up to date, so that nothing but the target runs.
        result = subprocess.run(
            [make, "--no-print-directory", "-s", "-o", "uv.lock", "-o", ".env", target],
            cwd=project,
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert result.returncode == 0, result.stderr
        assert f"GIT_COMMIT={commit.strip()}" in result.stdout, result.stdout


@pytest.mark.fast
@pytest.mark.parametrize("combo", list(COMBOS))
def test_docs_promise_only_what_is_baked(baked: Any, combo: str) -> None:
    """README, Makefile, .env.example, the runbook and the dashboards offer nothing that was switched off."""
    project = baked(combo)
    answers = _answers(combo)
    on = {toggle: _on(answers, toggle) for toggle in (*BACKENDS, "use_tracing")}
    volumes = on["use_prometheus"] or on["use_alertmanager"] or on["use_grafana"] or on["use_loki"]
    stack = volumes or on["use_jaeger"]
    alert_rules = on["use_prometheus"] or on["use_loki"]
    dashboards = on["use_grafana"] and (on["use_prometheus"] or on["use_loki"])
    notifier = on["use_alertmanager"] or (on["use_grafana"] and on["use_prometheus"])

    def text(name: str) -> str:
        path = project / name
        return path.read_text(encoding="utf-8").lower() if path.exists() else ""

    readme, makefile, env_example = text("README.md"), text("Makefile"), text(".env.example")
    runbook, compose = text("docs/monitoring.md"), text("compose.yaml")
    overview = text("observability/grafana/dashboards/service-overview.json")
    promises = {
        "a trace to open": (on["use_jaeger"], [runbook, overview], ["to the trace", "open its trace"]),
        "volumes to delete": (volumes, [readme, makefile, runbook], ["volumes", "delete the stored data"]),
        "an observability stack": (stack, [readme, makefile], ["observability stack", "the stack\n", "the stack)"]),
        "random secrets": (on["use_grafana"], [runbook, makefile, env_example], ["random secrets", "fresh secrets"]),
        "an alert's runbook": (alert_rules, [runbook], ["runbook section of the alert"]),
        "dashboards": (dashboards, [readme, runbook], ["the dashboards", "## dashboards"]),
        "alerts sent to a webhook": (notifier, [runbook], ["receiving alerts locally"]),
        "a span export thread": (on["use_jaeger"], [runbook, compose], ["queue full", "app_span_export_nice"]),
    }
    for promise, (baked_in, texts, phrases) in promises.items():
        if baked_in:
            continue
        for phrase in phrases:
            assert not any(phrase in t for t in texts), f"{combo}: the docs still offer {promise} ({phrase!r})"
    if on["use_tracing"] and not on["use_jaeger"]:
        # No trace backend: .env exports nothing, and the README says so and how to change it.
        assert "otel_traces_exporter=none" in text(".env")
        assert "`otel_traces_exporter`" in readme
