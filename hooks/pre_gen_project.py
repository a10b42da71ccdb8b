"""Validate the answers before cookiecutter writes any file.

The answers reach this script as JSON data (the template renders them through
``tojson`` into a raw string literal), so no answer is ever pasted into Python
source. Every rule names the field, the value and what was expected; the first
broken rule stops generation, and cookiecutter removes the half-made folder.
"""

from __future__ import annotations

import json
import keyword
import re
import sys
import tempfile
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

SLUG_RE = re.compile(r"^[a-z][a-z0-9]*(-[a-z0-9]+)*$")
PACKAGE_RE = re.compile(r"^[a-z][a-z0-9]*(_[a-z0-9]+)*$")
VERSION_RE = re.compile(r"^\d+\.\d+\.\d+((a|b|rc)\d+)?$")
# One "@", no whitespace or quotes, a dot in the domain: enough to catch typos
# without pretending to implement RFC 5322.
EMAIL_RE = re.compile(r"^[A-Za-z0-9._%+\-]+@[A-Za-z0-9\-]+(\.[A-Za-z0-9\-]+)+$")
MAX_NAME_LENGTH = 40
MAX_TEXT_LENGTH = 200
PYTHON_VERSIONS = ("3.12", "3.13")
LICENSES = ("MIT", "Apache-2.0", "BSD-3-Clause", "Proprietary")
TOGGLES = (
    "use_json_logging",
    "use_metrics",
    "use_tracing",
    "use_dockerfile",
    "use_prometheus",
    "use_alertmanager",
    "use_grafana",
    "use_jaeger",
    "use_loki",
    "use_cadvisor",
    "use_kubernetes",
    "use_github_actions",
)
STACK_SERVICES = ("use_prometheus", "use_alertmanager", "use_grafana", "use_jaeger", "use_loki", "use_cadvisor")
# A project named like one of its dependencies cannot be installed (it would depend on
# itself), and a package named like a module it imports shadows that module. The
# project's dependencies, runtime, dev and build, with "-" as "_" (a test reads them
# from the baked pyproject.toml):
DEPENDENCIES = frozenset(
    {
        "fastapi",
        "httptools",
        "httpx",
        "pydantic_settings",
        "sniffio",
        "uvicorn",
        "uvloop",
        "loguru",
        "orjson",
        "prometheus_client",
        "opentelemetry_distro",
        "opentelemetry_exporter_otlp_proto_http",
        "opentelemetry_exporter_prometheus",
        "opentelemetry_instrumentation_httpx",
        "opentelemetry_sdk",
        "opentelemetry_util_http",
        "mypy",
        "pre_commit",
        "httpx2",
        "pytest",
        "ruff",
        "opentelemetry_proto",
        "opentelemetry_instrumentation_sqlalchemy",
        "sqlalchemy",
        "uv_build",
    }
)
# Modules they bring that the service or its tests import, beyond the standard library.
IMPORTED = frozenset(
    {"starlette", "pydantic", "pydantic_core", "anyio", "h11", "httpcore", "opentelemetry", "google", "yaml"}
)
RESERVED_PACKAGES = DEPENDENCIES | IMPORTED | {"tests", "test", "src"}
# Host ports the compose stack publishes, by the toggle of their service (cAdvisor
# publishes none); the app's own range must not overlap them (a test reads compose.yaml).
STACK_PORTS: dict[str, tuple[int, ...]] = {
    "use_prometheus": (9090,),
    "use_alertmanager": (9093,),
    "use_grafana": (3000,),
    "use_jaeger": (16686, 4317, 4318),
    "use_loki": (3100, 12345),
}
# The app publishes a range of host ports from its own, one per replica of `--scale app=N`.
APP_REPLICA_PORTS = 10

# (toggle, toggles it needs, why) - an enabled toggle whose needs are not all
# enabled is refused with the reason.
REQUIRES: tuple[tuple[str, tuple[str, ...], str], ...] = (
    *(
        (service, ("use_dockerfile",), "the compose stack runs the service from its Dockerfile")
        for service in STACK_SERVICES
    ),
    ("use_prometheus", ("use_metrics",), "Prometheus scrapes the service's /metrics endpoint"),
    ("use_alertmanager", ("use_prometheus",), "Alertmanager only receives the alerts Prometheus evaluates"),
    ("use_jaeger", ("use_tracing",), "Jaeger only receives the spans the service exports"),
    ("use_loki", ("use_json_logging",), "the log shipper parses the service's JSON log lines"),
    ("use_cadvisor", ("use_prometheus",), "cAdvisor's container metrics are only scraped by Prometheus"),
    ("use_kubernetes", ("use_dockerfile",), "the Kubernetes manifests run the image the Dockerfile builds"),
)
# (toggle, at least one of these, why)
REQUIRES_ANY: tuple[tuple[str, tuple[str, ...], str], ...] = (
    (
        "use_grafana",
        ("use_prometheus", "use_jaeger", "use_loki"),
        "Grafana needs at least one data source (Prometheus, Jaeger or Loki)",
    ),
)


class InvalidAnswer(ValueError):
    """An answer broke a rule; the message names field, value and rule."""


def _fail(field: str, value: object, rule: str) -> InvalidAnswer:
    return InvalidAnswer(f"invalid answer for '{field}': {value!r}: {rule}")


def _check_identifier(field: str, value: str, pattern: re.Pattern[str], shape: str) -> None:
    if not value:
        raise _fail(field, value, "must not be empty")
    if len(value) > MAX_NAME_LENGTH:
        raise _fail(field, value, f"must be at most {MAX_NAME_LENGTH} characters")
    if not value.isascii():
        raise _fail(field, value, "must be ASCII")
    if "/" in value or "\\" in value or ".." in value:
        raise _fail(field, value, "must not contain path separators or '..'")
    if re.search(r"[\s$`;&|<>(){}\[\]*?!~#'\"]", value):
        raise _fail(field, value, "must not contain whitespace or shell metacharacters")
    if value[0].isdigit():
        raise _fail(field, value, "must start with a letter, not a digit")
    if value != value.lower():
        raise _fail(field, value, "must be lowercase")
    if not pattern.fullmatch(value):
        raise _fail(field, value, shape)
    as_module = value.replace("-", "_")
    if keyword.iskeyword(as_module) or keyword.issoftkeyword(as_module):
        raise _fail(field, value, "must not be a Python keyword")
    if as_module in sys.stdlib_module_names:
        raise _fail(field, value, "must not shadow a standard-library module")
    if as_module in RESERVED_PACKAGES:
        raise _fail(field, value, "must not shadow a dependency of the service")


def _check_text(field: str, value: str, *, required: bool = True) -> None:
    if required and not value.strip():
        raise _fail(field, value, "must not be empty")
    if len(value) > MAX_TEXT_LENGTH:
        raise _fail(field, value, f"must be at most {MAX_TEXT_LENGTH} characters")
    if any(ch in value for ch in "\r\n\x00"):
        raise _fail(field, value, "must be a single line")
    if any(ord(ch) > 0xFFFF for ch in value):
        # TOML and Python receive the text as JSON strings, whose escapes for
        # such characters (surrogate pairs) neither format accepts.
        raise _fail(field, value, "must not contain characters beyond U+FFFF, such as emoji")


def _check_name(value: str) -> None:
    _check_text("project_name", value)
    if not value.isascii():
        # The name seeds the slug and the package; ASCII keeps both derivable.
        raise _fail("project_name", value, "must be ASCII")
    if not value[0].isalpha():
        raise _fail("project_name", value, "must start with a letter")


def _check_port(value: Any) -> None:
    text = str(value)
    # No leading zero: the port is written into Python source, where 08000 is a syntax error.
    if not re.fullmatch(r"[1-9][0-9]{3,4}", text) or not 1024 <= int(text) <= 65535:
        raise _fail("port", value, "must be a whole number from 1024 to 65535")


def _check_port_against_stack(answers: Mapping[str, Any]) -> None:
    if not answers["use_dockerfile"]:
        return  # no compose stack
    first = int(answers["port"])
    last = min(first + APP_REPLICA_PORTS - 1, 65535)
    for toggle, ports in STACK_PORTS.items():
        taken = [port for port in ports if answers[toggle] and first <= port <= last]
        if taken:
            raise _fail(
                "port",
                answers["port"],
                f"the app's host ports {first}-{last} (one per replica) would take port {taken[0]} "
                f"of the stack's {toggle.removeprefix('use_')}: pick another port or turn {toggle} off",
            )


def _check_pattern(field: str, value: str, pattern: re.Pattern[str], rule: str) -> None:
    if len(value) > MAX_TEXT_LENGTH or not pattern.fullmatch(value):
        raise _fail(field, value, rule)


def _check_choice(field: str, value: Any, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise _fail(field, value, f"must be one of {', '.join(choices)}")


def _check_toggles(answers: Mapping[str, Any]) -> None:
    for toggle in TOGGLES:
        if not isinstance(answers[toggle], bool):
            raise _fail(toggle, answers[toggle], "must be a JSON boolean (true or false)")
    for toggle, needs, why in REQUIRES:
        missing = [need for need in needs if not answers[need]]
        if answers[toggle] and missing:
            raise _fail(toggle, True, f"needs {' and '.join(missing)}: {why}")
    for toggle, any_of, why in REQUIRES_ANY:
        if answers[toggle] and not any(answers[other] for other in any_of):
            raise _fail(toggle, True, f"needs one of {', '.join(any_of)}: {why}")


CHECKS: tuple[Callable[[Mapping[str, Any]], None], ...] = (
    lambda a: _check_name(a["project_name"]),
    lambda a: _check_identifier(
        "project_slug",
        a["project_slug"],
        SLUG_RE,
        "must be lowercase letters and digits in words joined by single hyphens",
    ),
    lambda a: _check_identifier(
        "package_name",
        a["package_name"],
        PACKAGE_RE,
        "must be lowercase letters and digits in words joined by single underscores",
    ),
    lambda a: _check_text("description", a["description"]),
    lambda a: _check_text("author_name", a["author_name"]),
    lambda a: _check_pattern("author_email", a["author_email"], EMAIL_RE, "must look like name@example.com"),
    lambda a: _check_pattern(
        "version", a["version"], VERSION_RE, "must be a release version such as 0.1.0 or 1.0.0rc1"
    ),
    lambda a: _check_choice("python_version", a["python_version"], PYTHON_VERSIONS),
    lambda a: _check_choice("license", a["license"], LICENSES),
    lambda a: _check_port(a["port"]),
    _check_toggles,
    _check_port_against_stack,
)


def validate(answers: Mapping[str, Any]) -> None:
    """Raise InvalidAnswer for the first answer that breaks a rule."""
    for check in CHECKS:
        check(answers)


def main(raw: str) -> int:
    try:
        validate(json.loads(raw))
    except InvalidAnswer as error:
        print(f"ERROR: {error}", file=sys.stderr)
        return 1
    return 0


def remove_rendered_copy() -> None:
    """Delete the rendered copy of this hook that cookiecutter runs and leaves in the temp folder."""
    script = Path(sys.argv[0]).resolve()
    if script.parent == Path(tempfile.gettempdir()).resolve():
        script.unlink(missing_ok=True)


if __name__ == "__main__":
    remove_rendered_copy()  # cookiecutter never deletes it (one file per hook per bake)
    # The answers as JSON in a single-quoted raw literal: `tojson` escapes every ',
    # so no answer can end the literal (keep the quotes: formatting is skipped).
    sys.exit(main(r'{{ cookiecutter | tojson }}'))  # fmt: skip
