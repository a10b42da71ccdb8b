"""Validate the Kubernetes manifests offline (`make k8s-validate`, and CI).

Each overlay is built with kustomize (`kubectl kustomize`), and every object it
makes is checked in strict mode (an unknown field is an error, as a typo would
be silently dropped by a cluster):

- Kubernetes' own kinds against the API schemas of KUBERNETES_VERSION
  (the kubernetes-validate package);{% if cookiecutter.use_metrics %}
- the Prometheus Operator's kinds against the CRD schemas in schemas/
  (prometheus-operator OPERATOR_VERSION);{% endif %}{% if cookiecutter.use_prometheus %}
- each PrometheusRule against the rule file of observability/prometheus/rules
  it copies (promtool checks and tests those: `make check-stack`);{% endif %}
- a kind with no schema here is an error, not a skip.

No cluster is contacted: this proves the objects are well-formed for these
versions, not that a given cluster admits them (its policies, quotas, CRDs).
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import yaml

KUBERNETES_VERSION = "1.37.0"
{%- if cookiecutter.use_metrics %}
OPERATOR_VERSION = "0.93.0"
{%- endif %}
HERE = Path(__file__).resolve().parent
PROJECT = HERE.parent.parent
{%- if cookiecutter.use_metrics %}
# (apiVersion, kind) -> its CRD's schema in schemas/
CRD_SCHEMAS = {
    ("monitoring.coreos.com/v1", "ServiceMonitor"): "servicemonitor_v1.json",
{%- if cookiecutter.use_prometheus %}
    ("monitoring.coreos.com/v1", "PrometheusRule"): "prometheusrule_v1.json",
{%- endif %}
}
{%- else %}
# (apiVersion, kind) -> its CRD's schema in schemas/ (none without metrics)
CRD_SCHEMAS: dict[tuple[str, str], str] = {}
{%- endif %}


def strict(schema: Any) -> Any:
    """The schema with unknown fields refused, as kubectl's strict field validation does.

    A CRD's schema leaves additionalProperties open (the API server prunes
    what it does not know); objects that keep unknown fields on purpose say so
    with x-kubernetes-preserve-unknown-fields.
    """
    if isinstance(schema, list):
        return [strict(item) for item in schema]
    if not isinstance(schema, dict):
        return schema
    closed = {key: strict(value) for key, value in schema.items()}
    if (
        "properties" in schema
        and "additionalProperties" not in schema
        and not schema.get("x-kubernetes-preserve-unknown-fields")
    ):
        closed["additionalProperties"] = False
    return closed


def build(overlay: Path) -> list[dict[str, Any]]:
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        sys.exit("kubectl not found: run this through `make k8s-validate`")
    result = subprocess.run(  # noqa: S603 - a fixed command on the project's own folder
        [kubectl, "kustomize", str(overlay)], capture_output=True, text=True, check=False
    )
    if result.returncode != 0:
        raise ValueError(f"kubectl kustomize failed:\n{result.stderr.strip()}")
    return [doc for doc in yaml.safe_load_all(result.stdout) if doc]


def schema_errors(obj: dict[str, Any]) -> list[str]:
    key = (obj.get("apiVersion"), obj.get("kind"))
    if key in CRD_SCHEMAS:
        schema = strict(json.loads((HERE / "schemas" / CRD_SCHEMAS[key]).read_text()))
        validator = jsonschema.Draft7Validator(schema)
        return [
            f"{'.'.join(map(str, error.absolute_path)) or '(root)'}: {error.message}"
            for error in validator.iter_errors(obj)
        ]
    try:
        kubernetes_validate.validate(obj, KUBERNETES_VERSION, strict=True)
    except kubernetes_validate.ValidationError as error:
        return [f"{'.'.join(map(str, error.absolute_path)) or '(root)'}: {error.message}"]
    except kubernetes_validate.SchemaNotFoundError as error:
        return [error.message]
    return []
{%- if cookiecutter.use_prometheus %}


def rule_drift(obj: dict[str, Any]) -> list[str]:
    """A PrometheusRule `<project>-<name>` must hold the groups of rules/<name>.yml."""
    if obj["kind"] != "PrometheusRule":
        return []
    name = obj["metadata"]["name"].removeprefix("{{ cookiecutter.project_slug }}-")
    source = PROJECT / "observability" / "prometheus" / "rules" / f"{name}.yml"
    if not source.is_file():
        return [f"no rule file {source.relative_to(PROJECT)} to hold it to"]
    if obj["spec"] != yaml.safe_load(source.read_text()):
        return [f"its groups differ from {source.relative_to(PROJECT)}: copy them over"]
    return []
{%- endif %}


def main() -> int:
    failures = 0
    for overlay in sorted(path for path in (HERE / "overlays").iterdir() if path.is_dir()):
        where = overlay.relative_to(PROJECT)
        try:
            objects = build(overlay)
        except ValueError as error:
            print(f"{where}: {error}")
            failures += 1
            continue
        for obj in objects:
            errors = schema_errors(obj){% if cookiecutter.use_prometheus %} + rule_drift(obj){% endif %}
            for error in errors:
                print(f"{where}: {obj.get('kind')}/{obj.get('metadata', {}).get('name')}: {error}")
            failures += len(errors)
        print(f"{where}: {len(objects)} objects built and checked")
    versions = f"Kubernetes {KUBERNETES_VERSION}{% if cookiecutter.use_metrics %}, prometheus-operator {OPERATOR_VERSION}{% endif %}"
    if failures:
        print(f"{failures} problem(s); schemas of {versions}, strict")
        return 1
    print(f"valid for {versions}, strict")
    return 0


if __name__ == "__main__":
    sys.exit(main())
